"""Graded stress tests: the corruptions (pure, seeded, monotone in severity), and the
commands a user runs, in a subprocess with relative paths and default arguments: a tiny
study (new operating-point columns, the recalibration kept apart), `senolab stress` on one
of its units, `senolab predict --threshold youden`, and a folder that is no run."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO
from senolab.cohorts.synthetic import generate
from senolab.engine.config import SyntheticOptions
from senolab.evaluation.corruptions import CORRUPTIONS, SEVERITIES, corrupt


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    cohort = generate(SyntheticOptions(n_sites=1, images_per_site=4, image_size=96).build(), progress=False)
    return next(iter(cohort.arrays.values()))[0] / 255.0


@pytest.mark.parametrize("name", CORRUPTIONS.names())
def test_a_corruption_is_pure_seeded_and_grows_with_severity(name, image):
    before = image.copy()
    out = [corrupt(image, name, s, seed=[7, 1]) for s in SEVERITIES]
    assert np.array_equal(image, before), "the input image was changed"
    assert all(o.shape == image.shape and o.min() >= 0 and o.max() <= 1 for o in out)
    assert np.array_equal(out[2], corrupt(image, name, 3, seed=[7, 1])), "same seed, other pixels"
    mse = [float(((o - image) ** 2).mean()) for o in out]
    assert mse[0] > 0 and all(np.diff(mse) > 0), f"{name}: MSE against the clean image {mse}"
    with pytest.raises(ValueError, match="severity"):
        corrupt(image, name, 6)


def test_random_corruptions_depend_on_the_seed(image):
    for name in ("speckle", "shadowing"):
        assert not np.array_equal(corrupt(image, name, 3, seed=0), corrupt(image, name, 3, seed=1))


TINY = {"kind": "study", "name": "tiny_clinical",
        "base": {"data": {"synthetic": {"n_sites": 2, "images_per_site": 40, "image_size": 64}, "image_size": 32,
                          "split": {"val_fraction": 0.25}},
                 "train": {"epochs": 1, "batch_size": 8}, "evaluation": {"bootstrap": 20}},
        "protocol": "pairwise", "pairs": [{"sources": ["site_a"], "target": "site_b"}],
        "methods": ["erm"], "embedding_figure": False}


def senolab(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "senolab.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_study_then_stress_then_predict_at_a_stored_threshold(tmp_path):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    study = senolab("study", "tiny.yaml", "--quiet", cwd=tmp_path)
    assert study.returncode == 0, study.stderr[-3000:]
    out = tmp_path / "runs" / "tiny_clinical"
    results = pd.read_csv(out / "results.csv")
    for rule in ("youden", "sens90", "spec90"):
        assert {f"threshold_{rule}", f"sensitivity_{rule}_lo", f"specificity_{rule}", f"ppv_{rule}", f"npv_{rule}",
                f"oracle_threshold_{rule}"} <= set(results.columns)
    assert {"ece_score", "ece_score_scaled", "brier", "temperature"} <= set(results.columns)
    assert not any("target_labels" in c or "recalibrat" in c for c in results.columns)
    unit = out / "runs" / "site_b" / "erm" / "seed0"
    stored = json.loads((unit / "model" / "artifacts" / "preprocessing.json").read_text())["clinical"]
    assert stored["chosen_on"] == "source validation"
    assert results.loc[0, "threshold_youden"] == pytest.approx(stored["thresholds"]["youden"])
    predictions = pd.read_parquet(unit / "predictions.parquet")
    assert set(predictions["domain"]) == {"target", "source", "source_val"}
    recalibration = pd.read_csv(out / "recalibration.csv")
    assert len(recalibration) and recalibration["uses_target_labels"].isin([10, 20, 50]).all()
    assert "USES k LABELLED TARGET CASES" in (out / "recalibration.md").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["operating_points"]["erm"]["site_b"]["source"]["thresholds"] == stored["thresholds"]
    assert (out / "calibration.png").is_file() and (out / "decision_curves.png").is_file()

    relative_unit = "runs/tiny_clinical/runs/site_b/erm/seed0"
    stress = senolab("stress", relative_unit, "--on", "synthetic", "--quiet", cwd=tmp_path)
    assert stress.returncode == 0, stress.stderr[-3000:]
    written = tmp_path / relative_unit / "stress_synthetic"
    table = pd.read_csv(written / "stress.csv")
    assert len(table) == 1 + len(CORRUPTIONS) * len(SEVERITIES)
    assert set(table["corruption"]) == {"clean", *CORRUPTIONS.names()} and table["n_cases"].eq(40).all()
    assert {"auc", "auc_lo", "auc_hi", "dice", "dice_lo", "dice_hi", "delta_auc"} <= set(table.columns)
    clean = table[table["corruption"] == "clean"].iloc[0]
    assert clean["auc"] == pytest.approx(results.loc[0, "auc"], abs=1e-6)  # the unit's own target AUC
    assert (written / "stress.png").is_file() and "| speckle |" in (written / "stress.md").read_text()

    predicted = senolab("predict", relative_unit, "runs/tiny_clinical/calibration.png", "--out", "pred",
                        "--threshold", "youden", "--quiet", cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert json.loads((tmp_path / "pred" / "summary.json").read_text())["threshold"] == pytest.approx(
        stored["thresholds"]["youden"])


def test_stress_on_a_folder_that_is_no_run_is_one_line(tmp_path):
    (tmp_path / "not_a_run").mkdir()
    result = senolab("stress", "not_a_run", "--on", "synthetic", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: not_a_run: not a trained run"), result.stderr
