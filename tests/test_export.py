"""`senolab export` and fast inference: BatchNorm folding keeps the outputs, the ONNX export
has a dynamic batch and passes its parity check on the run's held-out cases, int8 is
calibrated on training cases only, and `senolab predict --backend onnxruntime` gives the
torch backend's outputs. The real CLI in a subprocess, from a working folder with
relative paths."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from senolab.cli import main as senolab

REPO = Path(__file__).resolve().parents[1]
TINY = {"kind": "experiment", "name": "tiny",
        "data": {"cohorts": ["synthetic"], "synthetic": {"n_sites": 2, "images_per_site": 16, "image_size": 64},
                 "image_size": 32, "split": {"kind": "holdout", "test_fraction": 0.25, "seed": 0}},
        "model": {"encoder_options": {"widths": [8, 16, 32, 64]},
                  "heads": {"classification": True, "segmentation": True, "bbox": True}},
        "train": {"epochs": 1, "batch_size": 8}, "evaluation": {"bootstrap": 10}}


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "senolab.cli", *args], capture_output=True, text=True, timeout=300,
                          env=env)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, one_torch_thread):
    """A working folder with a trained run (runs/tiny), its ONNX export with int8
    (runs/tiny/onnx, by the CLI) and other synthetic images (other/)."""
    from senolab.cohorts.synthetic import SyntheticConfig, write

    folder = tmp_path_factory.mktemp("export")
    before = Path.cwd()
    os.chdir(folder)
    Path("tiny.yaml").write_text(yaml.safe_dump(TINY))
    assert senolab(["train", "tiny.yaml", "--out", "runs/tiny", "--quiet"]) == 0
    write(SyntheticConfig(images_per_site=5, image_size=80, seed=5), Path("other"), progress=False)
    result = cli("export", "runs/tiny", "--format", "onnx", "--int8", "--quiet")
    yield folder, result
    os.chdir(before)


def test_folded_batchnorm_gives_the_same_outputs(one_torch_thread):
    from senolab.models import build_model
    from senolab.models.inference import count_batchnorms, fold_batchnorm

    torch.manual_seed(0)
    model = build_model("unet", {"cls": {"num_classes": 2}, "seg": {}, "box": {}},
                        encoder_options={"widths": [8, 16, 32]})
    with torch.no_grad():  # running statistics far from their initial 0 / 1
        for _ in range(3):
            model({"image": torch.rand(4, 1, 32, 32) * 3 + 1})
    model.eval()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batchnorm(model)
    assert count_batchnorms(model) > 10 and count_batchnorms(folded) == 0
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())  # the original is left as it was
    batch = {"image": torch.rand(3, 1, 32, 32)}
    with torch.inference_mode():
        plain, fast = model(batch), folded(batch)
    for name in ("logits", "seg_logits", "bbox", "embedding"):
        assert torch.allclose(plain[name], fast[name], atol=1e-5), name


def test_the_export_passes_its_parity_check_with_a_dynamic_batch(exported):
    import onnxruntime

    _, result = exported
    assert result.returncode in (0, 1), result.stderr[-3000:]
    parity = json.loads(Path("runs/tiny/onnx/parity.json").read_text())
    assert parity["held_out"]["source"] == "the run's test part (split.csv)"
    split = pd.read_csv("runs/tiny/split.csv").set_index("case_id")["part"]
    assert set(parity["held_out"]["case_ids"]) == set(split.index[split == "test"])
    fp32 = parity["fp32"]
    assert fp32["passed"] and fp32["failures"] == []
    assert set(fp32["max_abs_diff"]) == {"logits", "seg_logits", "bbox"} and max(fp32["max_abs_diff"].values()) < 1e-4
    assert abs(fp32["auc"]["change"]) < 5e-4 and abs(fp32["dice"]["change"]) < 5e-4
    assert "fp32 model.onnx" in result.stdout and "AUC" in result.stdout
    assert Path("runs/tiny/onnx/preprocessing.json").read_text() == Path(
        "runs/tiny/model/artifacts/preprocessing.json").read_text()
    session = onnxruntime.InferenceSession("runs/tiny/onnx/model.onnx", providers=["CPUExecutionProvider"])
    (image,) = session.get_inputs()
    assert image.name == "image" and isinstance(image.shape[0], str) and image.shape[1:] == [1, 32, 32]
    for batch in (1, 5):
        logits, seg, box = session.run(None, {"image": np.random.default_rng(0).random((batch, 1, 32, 32), np.float32)})
        assert logits.shape == (batch, 2) and seg.shape == (batch, 1, 32, 32) and box.shape == (batch, 4)


def test_int8_is_calibrated_on_training_cases_only_and_its_changes_are_reported(exported):
    _, result = exported
    parity = json.loads(Path("runs/tiny/onnx/parity.json").read_text())
    int8 = parity["int8"]
    split = pd.read_csv("runs/tiny/split.csv").set_index("case_id")["part"]
    calibration = int8["calibration"]
    assert calibration["part"] == "train" and calibration["n_cases"] == len(calibration["case_ids"]) > 0
    assert set(calibration["case_ids"]) <= set(split.index[split == "train"])
    assert not set(calibration["case_ids"]) & set(parity["held_out"]["case_ids"])
    assert {"torch", "onnx", "change"} <= set(int8["auc"]) and {"torch", "onnx", "change"} <= set(int8["dice"])
    assert int8["bytes"] < parity["fp32"]["bytes"]
    # int8 may differ; it fails only beyond its stated tolerance, and then the command says so
    within = all(abs(int8[m]["change"]) <= parity["tolerance"]["int8"][m] for m in ("auc", "dice"))
    assert int8["passed"] == within and parity["passed"] == within
    assert result.returncode == (0 if within else 1)
    if not within:
        assert result.stderr.strip().splitlines() == [
            "error: the exported model does not match the PyTorch model (see parity.json)"]


def test_predict_with_onnxruntime_gives_the_torch_outputs(exported):
    assert senolab(["predict", "runs/tiny", "other", "--out", "pred_torch", "--quiet"]) == 0
    onnx_run = cli("predict", "runs/tiny", "other", "--out", "pred_onnx", "--backend", "onnxruntime", "--quiet")
    assert onnx_run.returncode == 0, onnx_run.stderr[-3000:]
    ours, theirs = (pd.read_csv(f"{name}/predictions.csv") for name in ("pred_torch", "pred_onnx"))
    assert list(ours["image"]) == list(theirs["image"]) and len(ours) == 15
    for column in ("prob_malignant", "score", "box_x0", "box_y1"):
        assert np.allclose(ours[column], theirs[column], atol=1e-4), column
    assert (ours["lesion_area_px"] - theirs["lesion_area_px"]).abs().max() <= 0.01 * ours["lesion_area_px"].max()
    assert json.loads(Path("pred_onnx/summary.json").read_text())["backend"] == "onnxruntime"
    assert senolab(["predict", "runs/tiny/onnx/model.int8.onnx", "other", "--out", "pred_int8", "--backend",
                    "onnxruntime", "--quiet", "--threshold", "youden"]) == 0
    assert np.allclose(pd.read_csv("pred_int8/predictions.csv")["score"], ours["score"], atol=0.05)


def test_a_model_folder_without_its_run_is_checked_on_synthetic_cases_and_bad_uses_are_one_line(exported, capsys):
    from senolab.runners.export import export_run

    report = export_run("runs/tiny/model", "onnx_alone", progress=False)
    assert report["held_out"]["source"] == "synthetic US cohort, seed 101" and report["fp32"]["passed"]
    assert "no split.csv" in report["held_out"]["why"]
    capsys.readouterr()
    for args, message in ((["export", "other"], "not a trained model"),
                          (["predict", "runs/tiny/model", "other", "--out", "p", "--backend", "onnxruntime"],
                           "no exported ONNX model"),
                          (["predict", "runs/tiny", "other", "--out", "p", "--backend", "onnxruntime", "--explain"],
                           "--explain needs the torch backend")):
        assert senolab(args) == 2
        stderr = capsys.readouterr().err.strip()
        assert len(stderr.splitlines()) == 1 and message in stderr, stderr
