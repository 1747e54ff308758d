"""`senolab predict MODEL INPUT --out OUT`: a trained model applied to new, unlabelled images.

MODEL is a training run folder (``senolab train``), a study unit's folder
(``.../runs/<target>/<method>/seed<k>``), a packaged model folder (``model/``, holding
``MLmodel``) or an MLflow model URI (``runs:/<run id>/model``); with ``--backend
onnxruntime``, a folder written by ``senolab export`` (or its ``.onnx`` file, or a run
folder holding ``onnx/``). The preprocessing is the training's, saved with the model
(:mod:`senolab.runners.packaged`; the ONNX export carries the same preprocessing.json).

INPUT is an image file, a folder searched recursively for images (PNG, JPEG, PGM, TIFF,
BMP, and DICOM ``.dcm`` / ``.dicom``, windowed for display as :mod:`senolab.cohorts.dicom`
does; files named like masks, ``*_mask*``, are skipped and said so), or a case manifest
folder (``manifest.csv``/``manifest.json`` + ``manifest.yaml``, read by
:func:`senolab.cohorts.readers.read_cohort`): its rows give each image's modality,
laterality, view, pixel spacing and metadata. Metadata columns the model fuses are fed to
it (those it lacks are masked as missing, as in training); columns it does not know are
named once in summary.json and ignored. A DICOM header fills the spacing, laterality,
view and modality a row leaves unknown.

Mammograms (modality MG: the row's, or the model's when the row does not say) reach the
model cropped to the breast and turned chest wall left (:func:`senolab.cohorts.prepare.breast_frame`);
masks, boxes and attribution maps come back through the letterbox and that crop and turn
into the input image's own pixels.

Written to OUT: ``predictions.csv`` (one row per image: ``image``, ``width``, ``height``,
``modality``, ``prob_<class>``, ``score`` (malignancy probability), ``predicted_class`` at
the threshold, the lesion box ``box_x0 .. box_y1`` and ``lesion_area_px`` in the image's own
pixels, ``pixel_spacing_mm`` and ``lesion_area_mm2`` (NaN where the spacing is unknown)),
``masks/<name>.png`` (the predicted lesion mask at the image's size), ``overlays/<name>.png``
(the image with the mask outlined), with ``--explain`` ``explanations/<method>/<name>.png``
(the attribution map's magnitude at the image's size), and ``summary.json`` (the model,
backend, threshold and its rule, what was read, predicted and skipped with reasons, the
metadata columns used, ignored and missing).
"""
from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from senolab.errors import InputError
from senolab.paths import describe_path, writable_folder
from senolab.registry import Registry

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pgm", ".tif", ".tiff", ".bmp", ".dcm", ".dicom")
CHUNK = 16  # images per call of the model
# An image whose longer side is under this fraction of the model's input side would be
# enlarged more than 4x by the letterbox: nothing the model saw in training. Skipped.
SMALLEST_FRACTION = 0.25
FIXED = "fixed"  # the threshold rule of a number given on the command line


@dataclass(frozen=True)
class Threshold:
    """The malignancy probability from which a case is called malignant, and where it came from."""

    rule: str  # "fixed" (a number given) or a stored operating point (youden, sens90, spec90)
    value: float


@dataclass
class InputCase:
    """One image to predict: its file, the name its outputs get, and what is known of it."""

    path: Path
    name: str
    facts: dict = field(default_factory=dict)  # modality, laterality, view, pixel_spacing_mm, metadata by name


@dataclass
class Inputs:
    kind: str  # "image", "folder" or "manifest"
    cases: list[InputCase]
    skipped: list[dict]
    columns: list[str]  # the metadata columns the input gives (a manifest's declared ones)


# ----------------------------------------------------------------------------- backends
@dataclass
class Predictor:
    """What a backend gives: the package's preprocessing state, a function from decoded
    images and a facts table to output rows (``prob_<class>``, ``score``, ``mask`` at the
    model's input, ``bbox`` normalised), and, for the torch backend, attributions."""

    state: dict
    predict_images: Callable[[list[np.ndarray], pd.DataFrame], pd.DataFrame]
    attributions: Callable[[list[np.ndarray], pd.DataFrame, str], np.ndarray] | None = None


BACKENDS: Registry[Callable[[str, Path], Predictor]] = Registry("inference backend")


@BACKENDS.register("torch")
def torch_backend(model: str, scratch: Path) -> Predictor:
    """The packaged PyTorch model (BatchNorm folded, inference mode), through MLflow's loader."""
    import mlflow

    from senolab.runners.packaged import PREPROCESSING, read_state

    folder = package_folder(model, scratch)
    read_state(folder / "artifacts" / PREPROCESSING)  # an incompatible package is one line, before MLflow loads it
    packaged = mlflow.pyfunc.load_model(str(folder)).unwrap_python_model()
    return Predictor(packaged.state, packaged.predict_images, packaged.attributions)


@BACKENDS.register("onnxruntime")
def onnxruntime_backend(model: str, scratch: Path) -> Predictor:
    """The model exported by `senolab export` run by ONNX Runtime (fp32 or int8)."""
    from senolab.runners.export import OnnxModel, onnx_file

    onnx = OnnxModel(onnx_file(model))
    return Predictor(onnx.state, onnx.predict_images)


# ----------------------------------------------------------------------------- the command
def predict_images(model: str, source: str | Path, out: str | Path, threshold: float | str = 0.5,
                   progress: bool = True, backend: str = "torch", explain: list[str] | tuple = ()) -> dict:
    """Predict every image of ``source`` with ``model``; write OUT (module docstring); the summary."""
    out = writable_folder(Path(out).absolute(), "output folder")
    if backend not in BACKENDS:
        raise InputError(f"--backend {backend}: {BACKENDS._unknown(backend)}")
    _check_explainers(explain, backend)
    source = Path(source)
    inputs = read_inputs(source, progress)
    with tempfile.TemporaryDirectory(prefix="senolab-predict-") as tmp:
        predictor = BACKENDS.get(backend)(model, Path(tmp))
        state = predictor.state
        chosen = resolve_threshold(state, threshold)
        known = model_inputs(state)
        rows, skipped = [], list(inputs.skipped)
        for start in tqdm(range(0, len(inputs.cases), CHUNK), desc="predict", unit="batch", disable=not progress):
            decoded, unusable = _decoded(inputs.cases[start:start + CHUNK], state["image_size"])
            skipped += unusable
            if not decoded:
                continue
            images = [image for _, image, _ in decoded]
            facts = pd.DataFrame([row for _, _, row in decoded])
            outputs = predictor.predict_images(images, facts).to_dict("records")
            maps = {method: predictor.attributions(images, facts, method) for method in explain}
            for i, ((case, image, row), output) in enumerate(zip(decoded, outputs)):
                maps_i = {m: a[i] for m, a in maps.items()}
                rows.append(_write_case(case, image, row, output, maps_i, out, chosen, state["modality"]))
    pd.DataFrame(rows).to_csv(out / "predictions.csv", index=False)
    summary = {"model": str(model), "backend": backend, "input": str(source), "input_kind": inputs.kind,
               "model_modality": state["modality"], "threshold": chosen.value, "threshold_rule": chosen.rule,
               "found": len(inputs.cases), "predicted": len(rows), "skipped": skipped,
               # predicted, but outside what the model learnt: another modality than its training images'
               "other_modality": [r["image"] for r in rows if r["modality"] != state["modality"]],
               "metadata": {"used": [c for c in known if c in inputs.columns],
                            "ignored": [c for c in inputs.columns if c not in known],
                            "missing": [c for c in known if c not in inputs.columns]},
               "explanations": list(explain)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def resolve_threshold(state: dict, value: float | str) -> Threshold:
    """``--threshold``: a probability, or the name of an operating point stored with the model."""
    from senolab.runners.packaged import threshold_in

    try:
        number = float(value)
    except ValueError:
        return Threshold(str(value), threshold_in(state, str(value)))
    if not 0.0 <= number <= 1.0:
        raise InputError(f"--threshold {value}: a probability must lie in [0, 1]")
    return Threshold(FIXED, number)


def model_inputs(state: dict) -> list[str]:
    """The metadata columns the model reads: its declared ones less outcomes not opted in."""
    metadata = state.get("metadata") or {"columns": [], "opted_in": []}
    return [c["name"] for c in metadata["columns"] if not c["outcome"] or c["name"] in metadata.get("opted_in", [])]


def _check_explainers(methods, backend: str) -> None:
    if not methods:
        return
    if backend != "torch":
        raise InputError(f"--explain needs the torch backend (attributions take gradients); got --backend {backend}")
    from senolab.explain import EXPLAINERS

    unknown = [m for m in methods if m not in EXPLAINERS]
    if unknown:
        raise InputError(f"--explain {','.join(unknown)}: unknown; choose among {', '.join(EXPLAINERS.names())}")


def package_folder(model: str, scratch: Path) -> Path:
    """The packaged model folder that ``model`` names (downloaded into ``scratch`` for a URI)."""
    if "://" in model or model.startswith(("runs:", "models:")):
        import mlflow

        return Path(mlflow.artifacts.download_artifacts(model, dst_path=str(scratch)))
    path = Path(model)
    for candidate in (path, path / "model"):
        if (candidate / "MLmodel").is_file():
            return candidate
    raise InputError(f"{model}: not a trained model (expected a run folder with model/MLmodel, a model folder or "
                     f"an MLflow URI such as runs:/<run id>/model); found {describe_path(path)}")


# ----------------------------------------------------------------------------- inputs
def read_inputs(source: Path, progress: bool = True) -> Inputs:
    """The images of ``source`` (a file, a folder, or a case manifest folder)."""
    from senolab.cohorts.readers.manifest import manifest_file

    if describe_path(source) == "a folder" and manifest_file(source) is not None:
        return _manifest_inputs(source, progress)
    images, skipped = find_images(source)
    return Inputs("folder" if source.is_dir() else "image",
                  [InputCase(path, _output_name(path, source), {}) for path in images], skipped, [])


def find_images(source: Path) -> tuple[list[Path], list[dict]]:
    """The images to predict, and the files passed over with a reason (mask files, and
    files of a format senolab does not read: listed, never silently left out)."""
    from senolab.cohorts.dicom import is_dicom

    found = describe_path(source)
    if found == "a file":
        if not _readable_format(source, is_dicom):
            raise InputError(f"{source}: unsupported image format (reads {', '.join(IMAGE_SUFFIXES)})")
        return [source], []
    if found != "a folder":
        raise InputError(f"{source}: expected an image, a folder of images or a case manifest folder, found {found}")
    images, skipped = [], []
    for path in sorted(p for p in source.rglob("*") if not p.is_dir() and not p.name.startswith(".")):
        if not _readable_format(path, is_dicom):
            skipped.append({"file": str(path), "reason": f"unsupported format ({path.suffix or 'no suffix'}; "
                                                         f"reads {', '.join(IMAGE_SUFFIXES)})"})
        elif "_mask" in path.stem:
            skipped.append({"file": str(path), "reason": "a mask file (its name contains '_mask')"})
        elif not path.is_file():
            skipped.append({"file": str(path), "reason": f"{describe_path(path)}, not an image file"})
        else:
            images.append(path)
    if not images:
        raise InputError(f"{source}: no image found (looked for {', '.join(IMAGE_SUFFIXES)})")
    return images, skipped


def _readable_format(path: Path, is_dicom) -> bool:
    """Named like an image senolab reads, or a DICOM file without the suffix (its DICM marker)."""
    return path.suffix.lower() in IMAGE_SUFFIXES or (path.is_file() and is_dicom(path))


def _manifest_inputs(folder: Path, progress: bool) -> Inputs:
    """A case manifest's rows: their images and facts; its problems are skipped cases."""
    from senolab.cohorts.readers import read_cohort
    from senolab.runners.packaged import IMAGE_FACTS

    cohort = read_cohort(folder, reader="manifest", progress=progress)
    columns = cohort.metadata_columns(include_outcomes=True)
    cases = []
    for row in cohort.table.to_dict("records"):
        path = Path(row["image_path"])
        facts = {name: row.get(name) for name in (*IMAGE_FACTS, *columns)}
        cases.append(InputCase(path, _output_name(path, folder), facts))
    skipped = [{"file": p.file, "reason": p.reason} for p in cohort.problems]
    return Inputs("manifest", cases, skipped, columns)


def _output_name(path: Path, source: Path) -> str:
    """The file stem of a case's outputs: its path under the input folder, '/' as '__'."""
    try:
        return path.resolve().relative_to(source.resolve()).with_suffix("").as_posix().replace("/", "__")
    except ValueError:  # a single file, or a manifest image outside the folder's tree
        return path.stem


def _decoded(cases: list[InputCase], size: int) -> tuple[list[tuple[InputCase, np.ndarray, dict]], list[dict]]:
    """Each readable, large enough image with its facts (a DICOM header fills unknown ones);
    the others as skipped files with their reason."""
    from senolab.cohorts.dicom import is_dicom, read_dicom
    from senolab.cohorts.imaging import load_gray

    decoded, skipped = [], []
    for case in cases:
        facts = dict(case.facts)
        try:
            if is_dicom(case.path):
                dicom = read_dicom(case.path)
                image = dicom.pixels
                for key in ("modality", "laterality", "view", "pixel_spacing_mm"):
                    if not _known(facts.get(key)):
                        facts[key] = dicom.header.get(key)
            else:
                image = load_gray(case.path)
        except Exception as err:  # noqa: BLE001 - any decoding failure is the same skip, with its reason
            skipped.append({"file": str(case.path), "reason": f"unreadable image ({type(err).__name__}: {err})"})
            continue
        if max(image.shape) < SMALLEST_FRACTION * size:
            skipped.append({"file": str(case.path), "reason": f"image too small ({image.shape[1]}x{image.shape[0]} px, "
                                                              f"under a quarter of the model's {size} px input)"})
            continue
        decoded.append((case, image, facts))
    return decoded, skipped


def _known(value) -> bool:
    if value is None:
        return False
    return not (isinstance(value, float) and math.isnan(value))


# ----------------------------------------------------------------------------- outputs
def _write_case(case: InputCase, image: np.ndarray, facts: dict, output: dict, maps: dict[str, np.ndarray],
                out: Path, threshold: Threshold, model_modality: str) -> dict:
    """The case's row; its mask, overlay and attribution PNGs at the image's own size."""
    from PIL import Image

    frame = input_frame(image, facts, model_modality)
    spacing = float(facts["pixel_spacing_mm"]) if _known(facts.get("pixel_spacing_mm")) else float("nan")
    row = {"image": str(case.path), "width": image.shape[1], "height": image.shape[0], "modality": frame.modality}
    row.update({k: v for k, v in output.items() if k.startswith("prob_") or k == "score"})
    if "score" in output:
        row["predicted_class"] = "malignant" if output["score"] >= threshold.value else "benign"
    if "bbox" in output:
        row.update(dict(zip(("box_x0", "box_y0", "box_x1", "box_y1"), frame.box_to_input(output["bbox"]))))
    if "mask" in output:
        mask = frame.to_input(np.asarray(output["mask"], np.uint8), mask=True)
        row["lesion_area_px"] = int(mask.sum())
        row["pixel_spacing_mm"] = spacing
        # a prepared pixel is a stored one (preparers crop, never resample): mm per stored pixel
        row["lesion_area_mm2"] = row["lesion_area_px"] * spacing ** 2
        for folder, picture in (("masks", mask * 255), ("overlays", overlay(image, mask))):
            (out / folder).mkdir(exist_ok=True)
            Image.fromarray(picture.astype(np.uint8)).save(out / folder / f"{case.name}.png")
    for method, attribution in maps.items():
        magnitude = frame.to_input(np.abs(attribution).astype(np.float32), mask=False)
        top = float(np.percentile(magnitude, 99.5)) or 1.0  # a few extreme pixels must not darken the rest
        (out / "explanations" / method).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(magnitude / top * 255, 0, 255).astype(np.uint8)).save(
            out / "explanations" / method / f"{case.name}.png")
    return row


@dataclass(frozen=True)
class InputFrame:
    """Where the model's input came from in the input image: the prepared region (the
    preparer's crop box, (top, bottom, left, right), and left-right turn) inside the image,
    letterboxed to the model's square. Maps model-space outputs back to image pixels."""

    modality: str
    shape: tuple[int, int]  # the input image's (height, width)
    box: tuple[int, int, int, int]
    flip: bool

    @property
    def prepared(self) -> tuple[int, int]:
        top, bottom, left, right = self.box
        return bottom - top, right - left

    def to_input(self, array: np.ndarray, mask: bool) -> np.ndarray:
        """A (size x size) model-space array (a 0/1 mask, or a float map) on the image's grid;
        zero outside the prepared region."""
        from PIL import Image

        ph, pw = self.prepared
        _, nh, nw, top, left = _letterbox_geometry((ph, pw), array.shape[0])
        inner = array[top:top + nh, left:left + nw]
        if mask:
            resized = np.asarray(Image.fromarray(inner.astype(np.uint8) * 255).resize(
                (pw, ph), Image.Resampling.NEAREST)) > 127
        else:
            resized = np.asarray(Image.fromarray(inner.astype(np.float32), mode="F").resize(
                (pw, ph), Image.Resampling.BILINEAR))
        if self.flip:
            resized = resized[:, ::-1]
        placed = np.zeros(self.shape, np.uint8 if mask else np.float32)
        t, b, l, r = self.box
        placed[t:b, l:r] = resized
        return placed

    def box_to_input(self, box) -> list[float]:
        """A normalised xyxy box of the letterboxed square in the image's own pixels."""
        ph, pw = self.prepared
        x0, y0, x1, y1 = unletterbox_box(box, (ph, pw))
        if self.flip:
            x0, x1 = pw - x1, pw - x0
        t, _, l, _ = self.box
        return [x0 + l, y0 + t, x1 + l, y1 + t]


def input_frame(image: np.ndarray, facts: dict, modality: str | None = None) -> InputFrame:
    """How the preparer of the image's modality framed it (the whole image for US and MR)."""
    from senolab.cohorts.prepare import GEOMETRY_KEPT, PREPARERS, breast_frame

    modality = facts.get("modality") if facts.get("modality") in PREPARERS else modality
    h, w = image.shape
    if modality is None or modality in GEOMETRY_KEPT:
        return InputFrame(modality or "US", (h, w), (0, h, 0, w), False)
    frame = breast_frame(image, {"laterality": facts.get("laterality")})  # what prepare_mammogram cropped
    return InputFrame(modality, (h, w), frame.box, frame.flip)


def _letterbox_geometry(shape: tuple[int, int], size: int) -> tuple[float, int, int, int, int]:
    """As :func:`senolab.cohorts.dataset.letterbox` placed the image: scale, its size and offset."""
    h, w = shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    return scale, nh, nw, (size - nh) // 2, (size - nw) // 2


def unletterbox(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A model-space (size x size) mask back on the image's own pixel grid (0/1)."""
    h, w = shape
    return InputFrame("US", (h, w), (0, h, 0, w), False).to_input(mask, mask=True)


def unletterbox_box(box, shape: tuple[int, int]) -> list[float]:
    """A normalised xyxy box of the letterboxed square in the image's own pixels."""
    h, w = shape
    side = max(h, w)  # the square's side in image pixels; the image sits centred in it
    x0, y0, x1, y1 = (float(v) * side for v in box)
    dx, dy = (side - w) / 2, (side - h) / 2
    return [float(np.clip(x0 - dx, 0, w)), float(np.clip(y0 - dy, 0, h)),
            float(np.clip(x1 - dx, 0, w)), float(np.clip(y1 - dy, 0, h))]


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The grayscale image in RGB with the mask's outline in red."""
    rgb = np.repeat(image[..., None], 3, axis=2).astype(np.uint8)
    inside = mask.astype(bool)
    edge = inside & ~(np.roll(inside, 1, 0) & np.roll(inside, -1, 0) & np.roll(inside, 1, 1) & np.roll(inside, -1, 1))
    rgb[edge] = (255, 0, 0)
    return rgb
