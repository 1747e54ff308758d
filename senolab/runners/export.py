"""`senolab export RUN --format onnx [--int8] [--out DIR]`: a trained model for ONNX Runtime.

RUN is what `senolab predict` takes as MODEL (a training run or study unit folder, a
``model/`` folder, an MLflow URI). Written to DIR (default ``RUN/onnx``):

- ``model.onnx``: the model with BatchNorm folded (:mod:`senolab.models.inference`),
  exported by torch's ``torch.export``-based ONNX exporter (opset :data:`OPSET`, which
  needs ``onnxscript``). One input, ``image`` (batch, 1, size, size) float32 in [0, 1],
  letterboxed as in training; outputs ``logits`` (batch, classes), ``seg_logits``
  (batch, 1, size, size) and ``bbox`` (batch, 4), those of the model's heads. The batch
  size is dynamic. Models that fuse metadata or radiomics are refused (one line): their
  tabular inputs are not exported yet.
- ``preprocessing.json``: the package's, unchanged (classes, letterbox size, modality,
  stored thresholds): what `senolab predict --backend onnxruntime` prepares images with.
- ``model.int8.onnx`` with ``--int8``: ONNX Runtime static quantisation (QDQ, int8
  weights per channel, uint8 activations), calibrated on TRAINING images only.
- ``parity.json``: the automatic parity check on held-out cases (the run's test part
  when the folder has its ``split.csv`` and its cohort can be read again, else a
  synthetic cohort of the model's modality): the largest absolute difference of every
  output against the PyTorch model, AUC and Dice of both and their changes, the cases
  used, and for int8 which training cases calibrated it. fp32 passes when the outputs
  agree within :data:`FP32_TOLERANCE` (AUC and Dice unchanged to three decimals); int8
  when AUC and Dice move by at most :data:`INT8_TOLERANCE`. A failed check is reported and
  the command exits non-zero.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from senolab.errors import InputError
from senolab.paths import writable_folder
from senolab.registry import Registry

OPSET = 18
ONNX_NAME, INT8_NAME, PARITY = "model.onnx", "model.int8.onnx", "parity.json"
DEFAULT_FOLDER = "onnx"  # RUN/onnx
OUTPUTS = ("logits", "seg_logits", "bbox")  # the heads' outputs, in this order where present
# fp32: float rounding only. A logit may move by float error; the metrics may not move at
# the third decimal.
FP32_TOLERANCE = {"max_abs_diff": 1e-3, "auc": 5e-4, "dice": 5e-4}
# int8 changes numbers by design; it passes when AUC and Dice lose at most this much.
INT8_TOLERANCE = {"auc": 0.02, "dice": 0.02}
HELD_OUT_CASES = 1000  # at most, drawn from the test part (seeded)
CALIBRATION_CASES = 64  # training images that calibrate the int8 ranges


# ----------------------------------------------------------------------------- the command
def export_run(run: str, out: str | Path | None = None, fmt: str = "onnx", int8: bool = False,
               progress: bool = True) -> dict:
    """Export ``run``'s model (module docstring) and check it; the parity report, with
    ``passed`` False when a check failed (parity.json is written either way)."""
    from senolab.runners.packaged import PREPROCESSING, package_weights, read_state
    from senolab.runners.predict import package_folder

    if fmt not in FORMATS:
        raise InputError(f"--format {fmt}: {FORMATS._unknown(fmt)}")
    with tempfile.TemporaryDirectory(prefix="senolab-export-") as tmp:
        package = package_folder(str(run), Path(tmp))
        state = read_state(package / "artifacts" / PREPROCESSING)
        config, weights = read_checkpoint(package_weights(package))
        if config.model.fusion is not None:
            raise InputError(f"{run}: this model fuses tabular inputs (fusion {config.model.fusion}); ONNX export "
                             "covers image-only models so far: export an image-only run")
        out = writable_folder(_out_folder(run, out).absolute(), "export folder")
        shutil.copy(package / "artifacts" / PREPROCESSING, out / PREPROCESSING)
    cases = held_out_cases(Path(str(run)), state, config, progress)
    reference = _torch_model(config, weights, cases.test)
    report = {"run": str(run), "format": fmt, "opset": OPSET, "inputs": ["image"], "image_size": state["image_size"],
              "held_out": cases.description, "tolerance": {"fp32": FP32_TOLERANCE, "int8": INT8_TOLERANCE}}
    fp32 = FORMATS.get(fmt)(reference, out / ONNX_NAME, state["image_size"])
    report["outputs"] = OnnxModel(fp32).outputs
    report["fp32"] = _checked(parity(reference, OnnxModel(fp32), cases.test), FP32_TOLERANCE, fp32)
    if int8:
        used = quantise_int8(fp32, out / INT8_NAME, cases.calibration)
        report["int8"] = _checked(parity(reference, OnnxModel(out / INT8_NAME), cases.test), INT8_TOLERANCE,
                                  out / INT8_NAME)
        report["int8"]["calibration"] = {"part": cases.calibration_part, "n_cases": len(used), "case_ids": used}
    report["passed"] = all(report[k]["passed"] for k in ("fp32", "int8") if k in report)
    (out / PARITY).write_text(json.dumps(report, indent=1) + "\n")
    report["folder"] = str(out)
    return report


def _out_folder(run: str, out: str | Path | None) -> Path:
    if out is not None:
        return Path(out)
    if Path(str(run)).is_dir():
        return Path(str(run)) / DEFAULT_FOLDER
    raise InputError(f"{run}: an MLflow URI has no folder to export into; give --out DIR")


def read_checkpoint(path: Path):
    from senolab.checkpoint import load_checkpoint
    from senolab.engine.config import ExperimentConfig

    checkpoint = load_checkpoint(path)
    return ExperimentConfig.model_validate(checkpoint["config"]), checkpoint["model"]


def _torch_model(config, weights: dict, data) -> nn.Module:
    """The packaged model with BatchNorm folded, as the torch backend predicts with it."""
    from senolab.engine.trainer import model_from_config
    from senolab.models.inference import inference_model

    model = model_from_config(config, data, initial_weights=False)  # the trained weights load next
    model.load_state_dict(weights)
    return inference_model(model)


# ----------------------------------------------------------------------------- ONNX
class ImageModel(nn.Module):
    """The multi-task model as a function of the image alone, its head outputs as a tuple
    (ONNX graphs take tensors, not the batch dict)."""

    def __init__(self, model: nn.Module, outputs: tuple[str, ...]):
        super().__init__()
        self.model, self.outputs = model, outputs

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model({"image": image})
        return tuple(out[name] for name in self.outputs)


FORMATS: Registry = Registry("export format")


@FORMATS.register("onnx")
def to_onnx(model: nn.Module, path: Path, size: int) -> Path:
    """``model`` (eval mode) as an ONNX file with a dynamic batch size; the path."""
    import logging
    import warnings

    from senolab._optional import require

    require("onnxscript")  # the exporter's translation library: named with its extra when absent
    example = torch.rand(2, 1, size, size)
    with torch.inference_mode():
        names = tuple(name for name in OUTPUTS if name in model({"image": example}))
    wrapped = ImageModel(model, names).eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    # the exporter reports its progress and torchvision's absence on the root logger: not the user's business
    quiet = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapped, (example,), str(path), input_names=["image"], output_names=list(names),
                              dynamic_shapes={"image": {0: batch}}, opset_version=OPSET, dynamo=True,
                              external_data=False, verbose=False)
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)
    return path


class OnnxModel:
    """An exported model run by ONNX Runtime, with the preprocessing.json beside it.

    ``threads``: ONNX Runtime's intra-op threads (None: its default, every core)."""

    def __init__(self, path: str | Path, threads: int | None = None):
        from senolab._optional import require
        from senolab.runners.packaged import PREPROCESSING, read_state

        ort = require("onnxruntime")
        self.path = Path(path)
        self.state = read_state(self.path.parent / PREPROCESSING)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - ONNX Runtime's own error types; one line for the user
            raise InputError(f"{self.path}: ONNX Runtime cannot load it ({str(err).splitlines()[0]})") from None
        self.outputs = [o.name for o in self.session.get_outputs()]

    def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """Outputs by name for a (B, 1, size, size) float32 batch."""
        return dict(zip(self.outputs, self.session.run(None, {"image": np.ascontiguousarray(image, np.float32)})))

    def predict_images(self, images: list[np.ndarray], frame: pd.DataFrame) -> pd.DataFrame:
        """As the packaged model's predict_images: one output row per decoded image."""
        from senolab.runners.packaged import _output_rows, input_cohort, restored_data
        from senolab.runners.predict import CHUNK

        data = restored_data(self.state, input_cohort(images, frame, self.state))
        rows = []
        for batch in data.loader("test", CHUNK):
            out = {k: torch.from_numpy(v) for k, v in self(batch["image"].numpy()).items()}
            rows += _output_rows(out, data.classes)
        return pd.DataFrame(rows)


class OnnxModule(nn.Module):
    """An ONNX model behind the batch-dict interface the engine predicts with."""

    def __init__(self, onnx: OnnxModel):
        super().__init__()
        self.onnx = onnx

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(v) for k, v in self.onnx(batch["image"].cpu().numpy()).items()}


def onnx_file(model: str) -> Path:
    """The ONNX file ``model`` names: the file, an export folder's model.onnx, or a run's onnx/model.onnx."""
    path = Path(model)
    if path.suffix == ".onnx" and path.is_file():
        return path
    for candidate in (path / ONNX_NAME, path / DEFAULT_FOLDER / ONNX_NAME):
        if candidate.is_file():
            return candidate
    raise InputError(f"{model}: no exported ONNX model (expected a .onnx file, a folder written by `senolab export` "
                     f"or a run folder holding {DEFAULT_FOLDER}/{ONNX_NAME}); run `senolab export` first")


# ----------------------------------------------------------------------------- int8
def quantise_int8(fp32: Path, int8: Path, calibration) -> list[str]:
    """Static int8 quantisation of ``fp32`` calibrated on ``calibration``'s images (training
    cases only); the case ids used."""
    from senolab._optional import require

    quantization = require("onnxruntime.quantization")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = [batch for batch in calibration.loader("test", 16)]

    class Images(quantization.CalibrationDataReader):
        def __init__(self):
            self.batches = iter({"image": b["image"].numpy()} for b in batches)

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory(prefix="senolab-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)  # shapes inferred, graph optimised
        quantization.quantize_static(str(prepared), str(int8), Images(), quant_format=quantization.QuantFormat.QDQ,
                                     per_channel=True, activation_type=quantization.QuantType.QUInt8,
                                     weight_type=quantization.QuantType.QInt8,
                                     calibrate_method=quantization.CalibrationMethod.MinMax)
    return [case for batch in batches for case in batch["case_id"]]


# ----------------------------------------------------------------------------- parity
@dataclass
class HeldOut:
    test: object  # PreparedData: every case a held-out case
    calibration: object  # PreparedData of training cases
    calibration_part: str
    description: dict


def held_out_cases(run: Path, state: dict, config, progress: bool) -> HeldOut:
    """The run's test part and training part (split.csv and its cohort read again), else
    synthetic cohorts of the model's modality: one to check, another to calibrate."""
    from senolab.runners.packaged import restored_data

    split = run / "split.csv"
    reason = f"{run} has no split.csv (a study unit, a model folder or an MLflow URI)"
    if split.is_file():
        try:
            cohort = _run_cohort(config, progress)
        except InputError as err:
            reason = f"the run's cohort cannot be read again here ({err})"
        else:
            parts = pd.read_csv(split).set_index("case_id")["part"]
            known = parts[parts.index.isin(cohort.table["case_id"])]
            test, train = _sample(known.index[known == "test"]), _sample(known.index[known == "train"],
                                                                        CALIBRATION_CASES)
            if len(test) and len(train):
                return HeldOut(restored_data(state, _subset(cohort, test)),
                               restored_data(state, _subset(cohort, train)), "train", {"source": "the run's test part (split.csv)", "n_cases": len(test),
                                         "case_ids": list(test)})
            reason = "the run's split.csv names no test or training case of its cohort"
    test, calibration = _synthetic(state, seed=101), _synthetic(state, seed=202)
    return HeldOut(restored_data(state, test), restored_data(state, calibration),
                   f"synthetic {state['modality']} cohort, seed 202 (not the checked cases)",
                   {"source": f"synthetic {state['modality']} cohort, seed 101", "why": reason,
                    "n_cases": len(test.table), "case_ids": test.table["case_id"].tolist()})


def _run_cohort(config, progress: bool):
    from senolab.engine.data import load_cohorts

    try:
        return load_cohorts(config.data, progress=progress)
    except (OSError, ValueError) as err:  # a moved dataset folder, say
        raise InputError(str(err).splitlines()[0]) from None


def _sample(ids: pd.Index, n: int = HELD_OUT_CASES) -> list[str]:
    ids = sorted(ids)
    if len(ids) <= n:
        return ids
    picked = np.random.default_rng(0).choice(len(ids), n, replace=False)
    return [ids[i] for i in sorted(picked)]


def _subset(cohort, ids: list[str]):
    from dataclasses import replace

    table = cohort.table.set_index("case_id").loc[ids].reset_index()
    return replace(cohort, table=table)


def _synthetic(state: dict, seed: int):
    """A small synthetic cohort of the model's modality (images twice the model's input)."""
    size = max(64, 2 * int(state["image_size"]))
    if state["modality"] == "MG":
        from senolab.cohorts.synthetic_mammography import MammographyConfig, generate_mammography

        return generate_mammography(MammographyConfig(images_per_site=16, image_size=size, seed=seed), progress=False)
    from senolab.cohorts.synthetic import SyntheticConfig, generate

    return generate(SyntheticConfig(images_per_site=16, image_size=size, seed=seed, duplicate_fraction=0.0),
                    progress=False)


class _Recorded(nn.Module):
    """A model whose outputs are kept as it predicts (the engine's loop, then compared)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.kept = model, []

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        out = self.model(batch)
        self.kept.append({k: out[k].detach().cpu() for k in OUTPUTS if k in out})
        return out


def parity(reference: nn.Module, candidate: "OnnxModel", data, batch_size: int = 16) -> dict:
    """The candidate against the reference on ``data``'s cases: every output's largest
    absolute difference, AUC and Dice of both and the change, masks' pixel agreement."""
    from senolab.engine.predict import predict

    ours, theirs = _Recorded(reference), _Recorded(OnnxModule(candidate))
    tables = [predict(model, data.loader("test", batch_size), data) for model in (ours, theirs)]
    report = {"n_cases": len(tables[0]), "max_abs_diff": {}}
    for name in ours.kept[0]:
        a, b = (torch.cat([k[name] for k in model.kept]) for model in (ours, theirs))
        report["max_abs_diff"][name] = float((a - b).abs().max())
        if name == "seg_logits":
            report["mask_pixels_agree"] = float(((a > 0) == (b > 0)).float().mean())
    report.update(_metric_changes(tables, data.classes))
    sites = sorted(tables[0]["site"].unique())
    if len(sites) > 1:  # each test cohort apart as well (BUS-BRA fold 1, the BUSI hold-out, ...)
        report["sites"] = {site: {"n_cases": int((tables[0]["site"] == site).sum()),
                                  **_metric_changes([t[t["site"] == site] for t in tables], data.classes)}
                           for site in sites}
    return report


def _metric_changes(tables: list[pd.DataFrame], classes) -> dict:
    out = {}
    for metric, values in (("auc", [_auc(t, classes) for t in tables]), ("dice", [_dice(t) for t in tables])):
        if values[0] is not None:
            out[metric] = {"torch": values[0], "onnx": values[1], "change": values[1] - values[0]}
    return out


def _checked(report: dict, tolerance: dict, path: Path) -> dict:
    """``report`` with ``passed`` and, where it failed, what exceeded its tolerance."""
    failures = []
    if "max_abs_diff" in tolerance:
        failures += [f"{name} differ by up to {diff:.2e} (> {tolerance['max_abs_diff']:g})"
                     for name, diff in report["max_abs_diff"].items() if diff > tolerance["max_abs_diff"]]
    failures += [f"{metric.upper()} changes by {report[metric]['change']:+.4f} (tolerance {tolerance[metric]:g})"
                 for metric in ("auc", "dice")
                 if metric in report and abs(report[metric]["change"]) > tolerance[metric]]
    return {"file": path.name, "bytes": path.stat().st_size, **report, "passed": not failures, "failures": failures}


def _auc(table: pd.DataFrame, classes) -> float | None:
    from sklearn.metrics import roc_auc_score

    if "score" not in table or "malignant" not in classes:
        return None
    known = table[table["label"].notna()]
    truth = known["label"] == classes.index("malignant")
    return float(roc_auc_score(truth, known["score"])) if truth.nunique() == 2 else None


def _dice(table: pd.DataFrame) -> float | None:
    if "dice" not in table or table["dice"].notna().sum() == 0:
        return None
    return float(table["dice"].mean())


def parity_lines(report: dict) -> list[str]:
    """The parity report as the terminal shows it."""
    lines = [f"parity on {report['held_out']['n_cases']} held-out cases ({report['held_out']['source']}):"]
    for kind in ("fp32", "int8"):
        if kind not in report:
            continue
        part = report[kind]
        diffs = ", ".join(f"{k} {v:.2e}" for k, v in part["max_abs_diff"].items())
        metrics = "; ".join(f"{m.upper()} {part[m]['torch']:.4f} -> {part[m]['onnx']:.4f} ({part[m]['change']:+.4f})"
                            for m in ("auc", "dice") if m in part)
        verdict = "ok" if part["passed"] else "FAILED: " + "; ".join(part["failures"])
        size = f"{part['bytes'] / 1e6:.2f} MB"
        lines.append(f"  {kind} {part['file']} ({size}): max |diff| {diffs}; {metrics}  {verdict}")
        if "calibration" in part:
            lines.append(f"    calibrated on {part['calibration']['n_cases']} cases of {part['calibration']['part']}")
    return lines
