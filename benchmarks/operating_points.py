"""Operating points across sites: the source threshold, the oracle, and k local labels.

    .venv/bin/python benchmarks/operating_points.py [STUDY_DIR] [--synthetic] [--out DIR] [--draws 200]

With STUDY_DIR (a finished leave-one-site-out study folder) it reads that study; without,
it runs a small LOSO study first: erm and adabn over ../shared/data/{busi,busbra,breast}
when those folders are there (binary task, 64 px, at most 3 epochs and 60 s of training
per unit, about 10 minutes on 2 cores), else (or with --synthetic) over three synthetic sites.

Prints, per method and unseen site: sensitivity and specificity at the thresholds chosen on
source validation (Youden, sensitivity 0.90) with their CIs, the oracle thresholds (the
site's own, chosen with its labels: never usable for selection), the recalibration curve
(specificity, and the sensitivity it comes with, at the sensitivity-0.90 threshold re-set
on k = 10, 20, 50 labelled target cases, evaluated on the other target cases, mean over
draws) and whether 20 local labels bring that specificity within 0.05 of the oracle
threshold's. The recalibration uses target labels and is reported apart from the
label-free results.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from senolab.engine.config import StudyConfig
from senolab.runners.study import recalibrate_study, run_study

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
REAL = ("busi", "busbra", "breast")
WITHIN = 0.05


def small_study(real: bool) -> StudyConfig:
    data = ({"cohorts": [str(DATA / name) for name in REAL]} if real
            else {"cohorts": ["synthetic"], "synthetic": {"n_sites": 3, "images_per_site": 90, "image_size": 96}})
    return StudyConfig.model_validate({
        "name": f"operating_points_{'real' if real else 'synthetic'}",
        "base": {"data": {**data, "image_size": 64, "classes": "binary", "split": {"val_fraction": 0.2, "seed": 0}},
                 "model": {"encoder": "unet", "heads": {"classification": True, "segmentation": True, "bbox": False}},
                 "train": {"epochs": 3, "batch_size": 16, "lr": 0.002, "time_budget_s": 60,
                           "early_stopping": {"patience": 2}},
                 "evaluation": {"bootstrap": 300}},
        "protocol": "loso", "methods": ["erm", "adabn"], "seeds": [0], "embedding_figure": False})


def report(study: Path, draws: int) -> str:
    results = pd.read_csv(study / "results.csv")
    recalibration = recalibrate_study(study, n_draws=draws)
    curve = recalibration[recalibration["rule"] == "sens90"]
    lines = []
    for r in results.to_dict("records"):
        method, site = r["method"], r["target_site"]
        lines.append(f"\n{method} -> unseen site {site} (n = {r['n_target']}, AUC {r['auc']:.3f})")
        for rule, name in (("youden", "Youden"), ("sens90", "sensitivity 0.90")):
            if pd.isna(r.get(f"threshold_{rule}")):
                lines.append(f"  {name}: no source threshold (a class missing from source validation)")
                continue
            lines.append(f"  {name:<17} source threshold {r[f'threshold_{rule}']:.3f}: "
                         f"sensitivity {_ci(r, f'sensitivity_{rule}')}, specificity {_ci(r, f'specificity_{rule}')}"
                         f" | oracle threshold {r[f'oracle_threshold_{rule}']:.3f}: sensitivity "
                         f"{r[f'oracle_sensitivity_{rule}']:.3f}, specificity {r[f'oracle_specificity_{rule}']:.3f}")
        rows = curve[(curve["method"] == method) & (curve["target_site"] == site)].sort_values("uses_target_labels")
        if rows.empty:
            lines.append("  recalibration: too few target cases")
            continue
        points = [f"k=0 (source) {rows['source_specificity'].iloc[0]:.3f} (sens {rows['source_sensitivity'].iloc[0]:.3f})"] + [
            f"k={int(k)} {s:.3f} (sens {se:.3f})"
            for k, s, se in zip(rows["uses_target_labels"], rows["specificity"], rows["sensitivity"])]
        oracle = rows["oracle_specificity"].iloc[0]
        lines.append(f"  specificity at the sens-0.90 threshold re-set on k target labels: {', '.join(points)}; "
                     f"oracle {oracle:.3f}")
        twenty = rows[rows["uses_target_labels"] == 20]
        if len(twenty):
            gap = twenty["specificity"].iloc[0] - oracle
            verdict = "within" if abs(gap) <= WITHIN else "NOT within"
            lines.append(f"  20 local labels: specificity {twenty['specificity'].iloc[0]:.3f}, {gap:+.3f} from the "
                         f"oracle's: {verdict} {WITHIN} (sensitivity {twenty['sensitivity'].iloc[0]:.3f})")
    return "\n".join(lines)


def _ci(row: dict, name: str) -> str:
    return f"{row[name]:.3f} [{row[name + '_lo']:.3f}, {row[name + '_hi']:.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, nargs="?", default=None, help="a finished LOSO study folder")
    parser.add_argument("--synthetic", action="store_true", help="run the small study on synthetic data")
    parser.add_argument("--out", type=Path, default=None, help="where to run the small study")
    parser.add_argument("--draws", type=int, default=200, help="random draws per k (default: %(default)s)")
    args = parser.parse_args()
    study = args.study
    began = time.perf_counter()
    if study is None:
        real = not args.synthetic and all((DATA / name).is_dir() for name in REAL)
        config = small_study(real)
        study = args.out or REPO / "runs" / config.name
        print(f"running {config.name} into {study}", flush=True)
        run_study(config, study, progress=False)
    print(report(study, args.draws))
    print(f"\nwall time {(time.perf_counter() - began) / 60:.1f} min; study {study}")


if __name__ == "__main__":
    main()
