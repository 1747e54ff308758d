"""The cross-institution study runner: results per method and target, resumable."""
from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest
import yaml

from senolab.cli import main
from senolab.cohorts.synthetic import DESIGNED_SITES, SyntheticConfig, generate
from senolab.engine.config import ConfigError
from senolab.runners.study import load_study_config, run_study

TINY_STUDY = {
    "kind": "study",
    "name": "tiny_study",
    "base": {"data": {"synthetic": {"n_sites": 2, "images_per_site": 30, "image_size": 64}, "image_size": 32,
                      "split": {"val_fraction": 0.25}},
             "train": {"epochs": 1, "batch_size": 8}, "evaluation": {"bootstrap": 20}},
    "protocol": "loso",
    "methods": ["erm", "dann"],
    "embedding_figure": False,
}


def test_study_writes_results_per_method_and_target_and_resumes(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(TINY_STUDY))
    config = load_study_config(path)
    out = tmp_path / "out"
    run_study(config, out, progress=False)
    results = pd.read_csv(out / "results.csv")
    assert sorted(zip(results["method"], results["target_site"])) == [
        ("dann", "site_a"), ("dann", "site_b"), ("erm", "site_a"), ("erm", "site_b")]
    assert results.set_index("method")["transductive"].to_dict() == {"erm": False, "dann": True}
    assert {"auc", "auc_lo", "auc_hi", "insite_auc", "gap_auc", "site_classifier_acc"} <= set(results.columns)
    paired = results.set_index("method")["auc_p_vs_erm"]  # DeLong against erm on the same target cases
    assert paired.loc["erm"].isna().all() and paired.loc["dann"].between(0, 1).all()
    # kill one run's result (as if the study stopped there): only that run is redone
    finished = out / "runs" / "site_a" / "erm" / "seed0"
    stamp = (finished / "model" / "artifacts" / "model.pt").stat().st_mtime_ns
    redo = out / "runs" / "site_b" / "dann" / "seed0"
    (redo / "done.json").unlink()
    assert main(["study", str(path), "--out", str(out), "--quiet"]) == 0
    assert (finished / "model" / "artifacts" / "model.pt").stat().st_mtime_ns == stamp
    assert (redo / "done.json").exists()
    again = pd.read_csv(out / "results.csv")
    pd.testing.assert_frame_equal(again.drop(columns=["site_classifier_acc"]),
                                  results.drop(columns=["site_classifier_acc"]))


def test_under_a_strong_site_shift_an_adaptation_method_beats_erm(tmp_path):
    """The target site is the source scanner with +16 dB gain and a 40 dB window: erm, trained on
    the source only, is near chance there; histogram matching to the (unlabelled) target must
    both shrink the measured domain gap and recover target AUC, by a margin, not by noise."""
    source = DESIGNED_SITES[0]
    target = replace(source, name="site_t", scanner="shifted", gain_db=source.gain_db + 16, dynamic_range_db=40.0)
    cohort = generate(SyntheticConfig(sites=(source, target), images_per_site=80, image_size=128, seed=0),
                      progress=False)
    study = {
        "name": "strong_shift",
        "base": {"data": {"image_size": 64, "classes": "binary", "split": {"val_fraction": 0.2, "seed": 0}},
                 "model": {"heads": {"classification": True, "segmentation": True, "bbox": False}},
                 "train": {"epochs": 4, "batch_size": 16, "lr": 0.002}, "evaluation": {"bootstrap": 200}},
        "protocol": "pairwise",
        "pairs": [{"sources": ["site_a"], "target": "site_t"}],
        "methods": ["erm", "histogram_matching"],
        "embedding_figure": False,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    run_study(load_study_config(path), tmp_path / "out", progress=False, cohort=cohort)
    results = pd.read_csv(tmp_path / "out" / "results.csv").set_index("method")
    erm, adapted = results.loc["erm"], results.loc["histogram_matching"]
    assert adapted["site_classifier_acc"] < erm["site_classifier_acc"] - 0.15
    assert adapted["auc"] > erm["auc"] + 0.15
    assert adapted["auc_lo"] > 0.5, "the adapted model's target AUC must be above chance with its CI"


def test_one_method_twice_needs_a_label_per_entry(tmp_path):
    methods = [{"name": "coral", "options": {"weight": 1}}, {"name": "coral", "options": {"weight": 100}}]
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**TINY_STUDY, "methods": methods}))
    with pytest.raises(ConfigError, match=r"\['coral'\] appear more than once"):
        load_study_config(path)
    methods[1]["label"] = "coral_w100"
    path.write_text(yaml.safe_dump({**TINY_STUDY, "methods": methods}))
    assert [(m.name, m.label) for m in load_study_config(path).methods] == [("coral", "coral"), ("coral", "coral_w100")]


def test_adabn_reuses_the_erm_model_of_its_target_and_seed(tmp_path):
    """AdaBN trains exactly as ERM does: the study adapts ERM's trained model instead of
    training an identical one (before, its epoch losses equalled ERM's to the digit)."""
    study = {**TINY_STUDY, "methods": ["adabn", "erm"], "pairs": [{"sources": ["site_a"], "target": "site_b"}],
             "protocol": "pairwise"}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    run_study(load_study_config(path), tmp_path / "out", progress=False)
    adabn, erm = (tmp_path / "out" / "runs" / "site_b" / m / "seed0" for m in ("adabn", "erm"))
    assert (erm / "history.csv").exists() and not (adabn / "history.csv").exists()
    results = pd.read_csv(tmp_path / "out" / "results.csv").set_index("method")
    assert results.loc["adabn", "best_epoch"] == results.loc["erm", "best_epoch"]
    # same trained model: same in-site predictions (AdaBN only changes the target's BatchNorm statistics)
    assert results.loc["adabn", "insite_auc"] == results.loc["erm", "insite_auc"]
