"""mini-MIAS benchmark: patient-level 5-fold cross-validation of the default multi-task model.

    python benchmarks/mias_cv.py [--config configs/train_mias.yaml] [--out runs/mias_cv]
        [--folds 0 1 2 3 4] [--epochs N] [--threads N]

Run from the repository root with ../shared/data/mias present. Each fold trains
``senolab train``'s model on four patient-grouped folds (both breasts of a woman in one
fold) and predicts the fifth; the five out-of-fold prediction tables are pooled, and
printed (and written to ``OUT/benchmark.json``) with patient-bootstrap 95% CIs:

- abnormal vs normal AUC, score 1 - P(normal), over all 322 images;
- benign vs malignant AUC, score P(malignant) / (P(benign) + P(malignant)), over the
  abnormal images;
- mean Dice against the Info.txt circles (``dice_vs_circle``: overlap with an approximate
  circle, not a segmentation result).

Published mini-MIAS figures are mostly image- or patch-level: crops around the known
abnormality, both breasts of a woman on both sides of a split, or an abnormality's
several views counted apart, which a patient-level image split does not allow.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from senolab.engine.config import load_config
from senolab.evaluation.bootstrap import bootstrap
from senolab.evaluation.classification import weighted_auc


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from senolab.runners.experiment import train_and_evaluate

    base = load_config(args.config, kind="experiment")
    out = Path(args.out)
    tables, started = [], time.time()
    for fold in args.folds:
        config = base.model_copy(deep=True)
        config.data.split.fold = fold
        if args.epochs:
            config.train.epochs = args.epochs
        fold_dir = out / f"fold{fold}"
        print(f"fold {fold}: training in {fold_dir}", flush=True)
        train_and_evaluate(config, fold_dir, progress=False)
        tables.append(pd.read_parquet(fold_dir / "predictions.parquet").assign(fold=fold))
    pooled = pd.concat(tables, ignore_index=True)
    pooled.to_csv(out / "out_of_fold_predictions.csv", index=False)
    figures = {"folds": list(args.folds), "n_images": int(len(pooled)), "n_patients": int(pooled["patient_id"].nunique()),
               "wall_s": round(time.time() - started, 1), **pooled_metrics(pooled, args.bootstrap)}
    (out / "benchmark.json").write_text(json.dumps(figures, indent=1) + "\n")
    print(json.dumps(figures, indent=1))
    return 0


def pooled_metrics(pooled: pd.DataFrame, n_resamples: int) -> dict:
    """The two AUCs and the circle Dice of the pooled out-of-fold table, with patient-bootstrap CIs."""
    abnormal = (pooled["label_name"] != "normal").to_numpy()
    malignant = (pooled["label_name"] == "malignant").to_numpy()
    abnormal_score = 1.0 - pooled["prob_normal"].to_numpy()
    lesion = pooled[abnormal]
    bm_score = (lesion["prob_malignant"] / (lesion["prob_benign"] + lesion["prob_malignant"])).to_numpy()
    figures = {
        "abnormal_vs_normal_auc": _interval(lambda w: weighted_auc(abnormal_score, abnormal, w),
                                            pooled["patient_id"], n_resamples),
        "benign_vs_malignant_auc": _interval(lambda w: weighted_auc(bm_score, malignant[abnormal], w),
                                             lesion["patient_id"], n_resamples),
        "counts": {"normal": int((~abnormal).sum()), "benign": int((abnormal & ~malignant).sum()),
                   "malignant": int(malignant.sum())},
    }
    if "dice_vs_circle" in pooled.columns:
        dice = pooled["dice_vs_circle"].to_numpy(float)
        known = np.isfinite(dice)
        figures["dice_vs_circle"] = _interval(lambda w: _weighted_mean(dice[known], w),
                                              pooled.loc[known, "patient_id"], n_resamples)
    return figures


def _weighted_mean(values: np.ndarray, w: np.ndarray) -> np.ndarray:
    return (w * values).sum(1) / w.sum(1)


def _interval(statistic, patients: pd.Series, n_resamples: int) -> dict:
    result = bootstrap({"m": statistic}, patients.to_numpy(), n_resamples=n_resamples, seed=0)["m"]
    return {"value": round(result.value, 4), "ci": [round(result.lo, 4), round(result.hi, 4)],
            "n_cases": int(len(patients)), "n_patients": int(patients.nunique())}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/train_mias.yaml")
    parser.add_argument("--out", default="runs/mias_cv")
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=None, help="override the config's epochs (a quick look)")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 0)) or None)
    return parser


if __name__ == "__main__":
    sys.exit(main())
