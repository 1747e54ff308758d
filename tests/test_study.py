"""The cross-institution study runner: results per method and target, resumable."""
from __future__ import annotations

import pandas as pd
import yaml

from senolab.cli import main
from senolab.engine.study import load_study_config, run_study

TINY_STUDY = {
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
    # kill one run's result (as if the study stopped there): only that run is redone
    finished = out / "runs" / "site_a" / "erm" / "seed0"
    stamp = (finished / "best.pt").stat().st_mtime_ns
    redo = out / "runs" / "site_b" / "dann" / "seed0"
    (redo / "result.json").unlink()
    assert main(["study", str(path), "--out", str(out), "--quiet"]) == 0
    assert (finished / "best.pt").stat().st_mtime_ns == stamp
    assert (redo / "result.json").exists()
    again = pd.read_csv(out / "results.csv")
    pd.testing.assert_frame_equal(again.drop(columns=["site_classifier_acc"]),
                                  results.drop(columns=["site_classifier_acc"]))
