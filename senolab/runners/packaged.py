"""A trained model packaged with its preprocessing, loadable by anyone with MLflow.

:func:`save_package` writes an MLflow pyfunc model folder (``MLmodel``, environment files,
``artifacts/model.pt`` — the weights and the config that builds the model — and
``artifacts/preprocessing.json`` — classes, letterbox size, site names, the metadata
encoder fitted on the training part, the radiomics columns and, under ``clinical``, the
operating thresholds and temperature chosen on source validation,
:func:`senolab.evaluation.clinical.deployment_state`). The run folder keeps it
and MLflow receives the same folder, so::

    model = mlflow.pyfunc.load_model("runs:/<run id>/model")   # or the folder's path
    model.predict(pandas.DataFrame({"image": ["case1.png", "case2.png"]}))

returns, per image, the class probabilities (``prob_<class>``), the malignancy ``score``,
the predicted ``mask`` (0/1, at the model's letterboxed input size) and ``bbox``
(normalised x0, y0, x1, y1) where the model has those heads. ``image`` is a file path or a
base64-encoded PNG/JPEG (as a JSON request to a served model carries it). Metadata columns
the model fuses may be given by name; absent ones are masked as missing, as in training,
and so are radiomics (they are not computed from a raw image here).
"""
from __future__ import annotations

import base64
import io
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from senolab.checkpoint import load_checkpoint, save_checkpoint
from senolab.engine.config import ExperimentConfig
from senolab.engine.data import PreparedData

WEIGHTS, PREPROCESSING = "model.pt", "preprocessing.json"
# What this version reads from preprocessing.json: a package without one of them was
# written by an older senolab (before the modality was stored, say) and is refused.
REQUIRED_STATE = ("classes", "sites", "image_size", "modality", "radiomics_columns")
PROGRESS_BARS = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
INPUT_SITE = "input"  # the site of images given to a packaged model (not one it trained on)


# ----------------------------------------------------------------------------- preprocessing
def preprocessing_state(data: PreparedData) -> dict:
    """What was fitted or fixed on the training part, as plain JSON."""
    # the modality decides the preprocessing (cohorts.dataset.PREPARE); a model meets images of its own
    modality = str(data.cohort.table["modality"].mode().iloc[0])
    state = {"classes": list(data.classes), "sites": data.sites, "image_size": data.image_size, "modality": modality,
             "radiomics_columns": list(data.radiomics.columns) if data.radiomics is not None else None}
    if data.metadata is not None:
        state["metadata"] = {
            "columns": [{"name": c.name, "kind": c.kind.value, "levels": list(c.levels), "outcome": c.outcome}
                        for c in data.metadata.columns.values()],
            "opted_in": data.metadata.opted_in,
            "mean": data.metadata.mean_.tolist(), "scale": data.metadata.scale_.tolist()}
    return state


def read_state(path: str | Path) -> dict:
    """A package's preprocessing.json, checked to hold what this version needs; an
    unreadable or older one is one InputError naming the file and what it lacks."""
    from senolab.errors import InputError

    path = Path(path)
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read the model's preprocessing ({type(err).__name__}: {err})") from None
    missing = [key for key in REQUIRED_STATE if key not in state] if isinstance(state, dict) else list(REQUIRED_STATE)
    if missing:
        raise InputError(f"{path}: written by an incompatible senolab version (lacks {', '.join(missing)}); "
                         "retrain the model, or export it again, with this version")
    return state


def restored_data(state: dict, cohort) -> PreparedData:
    """``cohort`` (every case a test case) prepared exactly as the training data was."""
    parts = pd.Series("test", index=cohort.table["case_id"].values, name="part")
    columns = state.get("radiomics_columns")
    radiomics = pd.DataFrame(columns=columns, dtype=np.float32) if columns else None  # absent: masked as missing
    return PreparedData(cohort, parts, tuple(state["classes"]), restored_metadata(state.get("metadata")), radiomics,
                        state["sites"], state["image_size"], augment=False)


def declared_columns(metadata_state: dict) -> dict:
    """The metadata columns the training declared, as the cohort schema's Column objects."""
    from senolab.cohorts.schema import Column, Kind

    return {c["name"]: Column(c["name"], Kind(c["kind"]), tuple(c["levels"]), c["outcome"])
            for c in metadata_state["columns"]}


def restored_metadata(state: dict | None):
    """The training run's metadata encoder; a cohort lacking a field gets it as missing."""
    from senolab.cohorts.tabular import MetadataEncoder

    if state is None:
        return None
    columns = declared_columns(state)
    encoder = MetadataEncoder(columns, list(columns), opt_in=state["opted_in"])
    encoder.mean_, encoder.scale_ = np.array(state["mean"]), np.array(state["scale"])
    return encoder


# ----------------------------------------------------------------------------- the package
def save_package(folder: str | Path, model: torch.nn.Module, config: ExperimentConfig, data: PreparedData,
                 clinical: dict | None = None) -> Path:
    """Write ``folder`` (must not exist) as an MLflow pyfunc model; returns it. ``clinical``:
    the thresholds and temperature chosen on source validation, stored with the model."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    folder = Path(folder)
    state = preprocessing_state(data)
    if clinical is not None:
        state["clinical"] = clinical
    with tempfile.TemporaryDirectory(prefix="senolab-package-") as tmp:
        weights = save_checkpoint(Path(tmp) / WEIGHTS, model=model.state_dict(), config=config.model_dump())
        (Path(tmp) / PREPROCESSING).write_text(json.dumps(state, indent=1))
        # numeric metadata as numbers, the others as text ('|'-separated for multi-valued fields)
        inputs = [ColSpec("string", "image")] + [
            ColSpec("double" if c["kind"] == "numeric" else "string", c["name"], required=False)
            for c in state.get("metadata", {}).get("columns", [])]
        _save_pyfunc(folder, weights, Path(tmp) / PREPROCESSING, ModelSignature(inputs=Schema(inputs)))
    return folder


def _save_pyfunc(folder: Path, weights: Path, preprocessing: Path, signature) -> None:
    import mlflow

    # MLflow logs a warning that a python_model object is cloudpickled: PackagedModel is an
    # importable class without state, so only a reference to it is stored. Not shown.
    logger = logging.getLogger("mlflow.pyfunc")
    level, bars = logger.level, os.environ.get(PROGRESS_BARS)
    logger.setLevel(logging.ERROR)
    os.environ[PROGRESS_BARS] = "false"  # checking the input example reloads the model: no bars for that
    try:
        mlflow.pyfunc.save_model(folder, python_model=PackagedModel(), signature=signature,
                                 input_example=pd.DataFrame({"image": [_example_png()]}),
                                 artifacts={"weights": str(weights), "preprocessing": str(preprocessing)},
                                 pip_requirements=_requirements())  # given: MLflow does not probe the environment
    finally:
        logger.setLevel(level)
        if bars is None:
            os.environ.pop(PROGRESS_BARS, None)
        else:
            os.environ[PROGRESS_BARS] = bars


def _example_png() -> str:
    """A small gray gradient as a base64 PNG: the input example a served model documents."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.tile(np.arange(0, 256, 4, dtype=np.uint8), (48, 1))).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def stored_clinical(folder: str | Path) -> dict | None:
    """The thresholds and temperature a package was saved with (None: saved without them)."""
    path = Path(folder) / "artifacts" / PREPROCESSING
    return json.loads(path.read_text()).get("clinical") if path.is_file() else None


def stored_threshold(model: str, rule: str) -> float:
    """The threshold of ``rule`` (youden, sens90, spec90) stored with ``model`` (a run
    folder, model folder or MLflow URI, as `senolab predict` takes it)."""
    from senolab.runners.predict import package_folder

    with tempfile.TemporaryDirectory(prefix="senolab-threshold-") as tmp:
        return threshold_in(read_state(package_folder(model, Path(tmp)) / "artifacts" / PREPROCESSING), rule)


def threshold_in(state: dict, rule: str) -> float:
    """The threshold of ``rule`` in a package's preprocessing state (one-line error if absent)."""
    from senolab.errors import InputError

    thresholds = (state.get("clinical") or {}).get("thresholds") or {}
    if rule not in thresholds:
        known = ", ".join(sorted(thresholds)) or "none stored with this model (trained before they were)"
        raise InputError(f"--threshold {rule}: not a number nor a stored operating point; stored: {known}")
    return float(thresholds[rule])


def package_weights(folder: str | Path) -> Path:
    """The weights file inside a package (the one copy a run folder keeps)."""
    return Path(folder) / "artifacts" / WEIGHTS


def load_packaged_model(folder: str | Path, data: PreparedData) -> torch.nn.Module:
    """The package's torch model, sized for ``data``, in eval mode (no MLflow needed)."""
    from senolab.engine.trainer import model_from_config

    state = load_checkpoint(package_weights(folder))
    model = model_from_config(ExperimentConfig.model_validate(state["config"]), data, initial_weights=False)
    model.load_state_dict(state["model"])
    return model.eval()


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("senolab", "torch", "mlflow", "pandas", "pillow")]


try:  # the class MLflow instantiates on load; defined only where MLflow is installed
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover - senolab[tracking] missing
    PythonModel = object


class PackagedModel(PythonModel):
    """The pyfunc face of a packaged senolab model (module docstring)."""

    def load_context(self, context) -> None:
        self.state = read_state(context.artifacts["preprocessing"])
        checkpoint = load_checkpoint(context.artifacts["weights"])
        self.config = ExperimentConfig.model_validate(checkpoint["config"])
        self.weights = checkpoint["model"]
        self._models: dict[bool, torch.nn.Module] = {}

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from senolab.errors import InputError

        if "image" not in model_input.columns:
            raise InputError(f"the input needs an 'image' column (a path or base64 PNG/JPEG); "
                             f"got {list(model_input.columns)}")
        images = [_decoded(value, row) for row, value in enumerate(model_input["image"])]
        return self.predict_images(images, model_input)

    def predict_images(self, images: list[np.ndarray], metadata: pd.DataFrame) -> pd.DataFrame:
        """One output row per decoded grayscale image; ``metadata`` (one row per image) may
        carry the fields the model fuses, by name, and ``modality``, ``laterality``, ``view``
        and ``pixel_spacing_mm`` where known (a mammogram is cropped and turned by them)."""
        from senolab.models.inference import run

        data = restored_data(self.state, input_cohort(images, metadata, self.state))
        model = self.torch_model(data, folded=True)
        rows = []
        for batch in data.loader("test", self.config.train.batch_size):
            rows += _output_rows(run(model, batch), data.classes)
        return pd.DataFrame(rows)

    def torch_model(self, data: PreparedData, folded: bool = True) -> torch.nn.Module:
        """The model in eval mode; ``folded``: BatchNorm folded into its convolutions
        (:mod:`senolab.models.inference`), for predicting; unfolded for attributions. Built
        once: every input cohort is prepared to the same sizes."""
        from senolab.engine.trainer import model_from_config
        from senolab.models.inference import inference_model

        if folded not in self._models:
            model = model_from_config(self.config, data, initial_weights=False)  # trained weights load next
            model.load_state_dict(self.weights)
            self._models[folded] = inference_model(model) if folded else model.eval()
        return self._models[folded]

    def attributions(self, images: list[np.ndarray], metadata: pd.DataFrame, method: str) -> np.ndarray:
        """Captum attributions (``senolab.explain`` method ``method``) of each image's
        predicted class, (N, size, size) at the model's input, as the main job explains units."""
        from senolab.explain import attribute_image

        data = restored_data(self.state, input_cohort(images, metadata, self.state))
        model = self.torch_model(data, folded=False)
        maps = [attribute_image(model, batch, method).sum(1).numpy()
                for batch in data.loader("test", self.config.train.batch_size)]
        return np.concatenate(maps)


def _output_rows(out: dict, classes: tuple[str, ...]) -> list[dict]:
    probs = torch.softmax(out["logits"], 1).numpy() if "logits" in out else None
    masks = (out["seg_logits"] > 0).numpy()[:, 0].astype(np.uint8) if "seg_logits" in out else None
    boxes = out["bbox"].numpy() if "bbox" in out else None
    n = next(len(v) for v in (probs, masks, boxes) if v is not None)
    rows = []
    for i in range(n):
        row = {}
        if probs is not None:
            row.update({f"prob_{c}": float(p) for c, p in zip(classes, probs[i])})
            row["score"] = float(probs[i][classes.index("malignant")])
        if masks is not None:
            row["mask"] = masks[i].tolist()
        if boxes is not None:
            row["bbox"] = [float(v) for v in boxes[i]]
        rows.append(row)
    return rows


# Per-image facts a caller may give beside the metadata: the preparation (a mammogram's crop
# and turn) reads them, and spacing travels with the image.
IMAGE_FACTS = ("modality", "laterality", "view", "pixel_spacing_mm")


def input_cohort(images: list[np.ndarray], frame: pd.DataFrame, state: dict):
    """The images as an in-memory cohort, with the declared metadata of ``frame`` typed.

    A row's ``modality`` (when it is one senolab prepares) decides its preparation, else
    the model's own; ``laterality`` and ``view`` are kept for the mammography preparer
    even where the model does not fuse them."""
    from senolab.cohorts.prepare import PREPARERS
    from senolab.cohorts.schema import Cohort

    declared = declared_columns(state.get("metadata") or {"columns": []})
    frame = frame.reset_index(drop=True)
    facts = {name: (frame[name] if name in frame.columns else pd.Series([None] * len(images)))
             for name in IMAGE_FACTS}
    rows, arrays = [], {}
    for i, image in enumerate(images):
        case_id = f"{INPUT_SITE}/{i}"
        arrays[case_id] = (image, [])
        modality = facts["modality"][i]
        spacing = pd.to_numeric(pd.Series([facts["pixel_spacing_mm"][i]]), errors="coerce").iloc[0]
        rows.append({"case_id": case_id, "patient_id": case_id, "cohort": INPUT_SITE, "site": INPUT_SITE,
                     "scanner": "unknown", "modality": modality if modality in PREPARERS else state["modality"],
                     "image_path": None, "mask_paths": [], "other_mask_paths": [],
                     "label": "normal", "pixel_spacing_mm": float(spacing), "width": image.shape[1],
                     "height": image.shape[0], "mask_kind": "outline", "lesion_bboxes": [],
                     **{name: _text_or_none(facts[name][i]) for name in ("laterality", "view")
                        if name not in declared}})
    table = pd.DataFrame(rows)
    for name, column in declared.items():
        values = frame[name] if name in frame.columns else pd.Series([None] * len(images))
        table[name] = _typed(values, column)
    return Cohort(INPUT_SITE, table, declared, {}, [], None, arrays).validate()


def _text_or_none(value):
    return value if isinstance(value, str) and value else None


def _decoded(value, row: int) -> np.ndarray:
    """A grayscale uint8 image from a path or base64 PNG/JPEG."""
    from PIL import Image

    from senolab.cohorts.imaging import load_gray
    from senolab.errors import InputError

    text = str(value)
    if _is_file(text):
        return load_gray(text)
    try:
        with Image.open(io.BytesIO(base64.b64decode(text, validate=True))) as image:
            return np.asarray(image.convert("L"), dtype=np.uint8)
    except Exception:  # noqa: BLE001 - anything not decodable is the same user error
        raise InputError(f"row {row}, column 'image': neither an image file nor a base64 PNG/JPEG") from None


def _is_file(text: str) -> bool:
    try:
        return Path(text).is_file()
    except OSError:  # a base64 string is no valid path (too long a name)
        return False


def _typed(values: pd.Series, column) -> pd.Series:
    """Metadata as the model's encoder expects it: numbers for numeric columns, else text."""
    from senolab.cohorts.schema import Kind

    if column.kind is Kind.NUMERIC:
        return pd.to_numeric(values, errors="coerce").astype(float)
    if column.kind is Kind.MULTI:  # '|'-separated text (a served request) or a list (a manifest)
        return values.map(lambda v: sorted(str(v).split("|")) if isinstance(v, str) and v
                          else sorted(str(x) for x in v) if isinstance(v, (list, tuple, np.ndarray)) and len(v)
                          else None).map(lambda v: [x for x in v if x in column.levels] or None if v else None)
    return values.map(lambda v: str(v) if _is_level(v, column.levels) else None)


def _is_level(value, levels) -> bool:
    """A categorical or ordinal value the model knows (a manifest may hold 3 for "3")."""
    return value is not None and not (isinstance(value, float) and np.isnan(value)) and str(value) in levels
