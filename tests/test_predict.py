"""`senolab predict` as a user runs it: a trained run applied to a folder of new images,
from a working folder with relative paths. Its probabilities are the evaluation's (the
preprocessing travels with the model), unreadable images are skipped with a reason, and
masks come back at each image's own size."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from senolab.cli import main as senolab

TINY = {"kind": "experiment", "name": "tiny",
        "data": {"cohorts": ["synthetic"], "synthetic": {"n_sites": 2, "images_per_site": 16, "image_size": 64},
                 "image_size": 32, "split": {"kind": "holdout", "test_fraction": 0.25, "seed": 0}},
        "model": {"heads": {"classification": True, "segmentation": True, "bbox": True}},
        "train": {"epochs": 1, "batch_size": 8}, "evaluation": {"bootstrap": 10}}


@pytest.fixture
def trained(tmp_path, monkeypatch, one_torch_thread):
    """A working folder with a trained run (runs/tiny) and a folder of other images (other/)."""
    from senolab.cohorts.synthetic import SyntheticConfig, write

    monkeypatch.chdir(tmp_path)
    Path("tiny.yaml").write_text(yaml.safe_dump(TINY))
    assert senolab(["train", "tiny.yaml", "--out", "runs/tiny", "--quiet"]) == 0
    write(SyntheticConfig(images_per_site=6, image_size=80, seed=5), Path("other"), progress=False)
    return tmp_path


def test_predict_gives_the_evaluations_probabilities(trained, capsys):
    from senolab.cohorts.readers import read_cohort

    assert senolab(["evaluate", "runs/tiny", "--on", "other", "--out", "runs/eval", "--quiet"]) == 0
    assert senolab(["predict", "runs/tiny", "other", "--out", "pred", "--quiet"]) == 0
    evaluated = pd.read_parquet("runs/eval/predictions.parquet")
    paths = read_cohort("other").table.set_index("case_id")["image_path"].map(lambda p: str(Path(p).resolve()))
    evaluated["image"] = evaluated["case_id"].map(paths)
    predicted = pd.read_csv("pred/predictions.csv")
    predicted["image"] = predicted["image"].map(lambda p: str(Path(p).resolve()))
    both = evaluated.merge(predicted, on="image", suffixes=("_eval", "_pred"))
    assert len(both) == len(evaluated) > 0
    assert np.allclose(both["prob_malignant_eval"], both["prob_malignant_pred"], atol=1e-5)
    first = predicted.iloc[0]
    mask = np.asarray(Image.open(Path("pred/masks") / (Path(first["image"]).relative_to(
        Path("other").resolve()).with_suffix("").as_posix().replace("/", "__") + ".png")))
    assert mask.shape == (first["height"], first["width"])  # the image's own size, not the model's
    assert 0 <= first["box_x0"] <= first["box_x1"] <= first["width"]


def test_predict_skips_unreadable_images_and_names_a_bad_model(trained):
    victim = sorted(p for p in Path("other").rglob("*.png") if "_mask" not in p.name)[0]
    victim.write_bytes(b"\x89PNG\r\n\x1a\n" + b"truncated" * 10)
    result = subprocess.run([sys.executable, "-m", "senolab.cli", "predict", "runs/tiny", "other", "--out", "pred",
                             "--quiet"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(Path("pred/summary.json").read_text())
    reasons = {Path(s["file"]).name: s["reason"] for s in summary["skipped"]}
    assert reasons[victim.name].startswith("unreadable image")
    assert summary["predicted"] == summary["found"] - 1 == len(pd.read_csv("pred/predictions.csv"))
    assert "unreadable image" in result.stdout
    bad = subprocess.run([sys.executable, "-m", "senolab.cli", "predict", "other", "other", "--out", "pred2"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [bad.stderr.strip()]
    assert "not a trained model" in bad.stderr
