"""Pretrained encoders on the leave-one-site-out study: does a better starting point help?

    python benchmarks/pretrain_loso.py [--synthetic] [--image-size 64] [--epochs 6]
        [--time-budget 60] [--ssl-method simclr] [--ssl-epochs 10] [--ssl-time-budget 90]
        [--out runs/pretrain_loso] [--no-speed]

Four arms, each a `senolab study` (protocol loso, method erm, seed 0) with the same data,
split and fine-tuning budget (epochs, time budget per unit, batch, lr):

1. ``unet_scratch``: the default U-Net from random weights (today's baseline);
2. ``resnet18_scratch``: a timm ResNet-18 from random weights;
3. ``resnet18_ssl_sources``: the same, pretrained first by senolab pretrain on the source
   sites' training images (per target: the study's ``pretrain: {on: sources}``);
4. ``resnet18_ssl_transductive``: pretrained on those plus the unlabelled target images
   (``on: sources+target``; TRANSDUCTIVE).

Prints one table per target site: AUC and Dice with patient-bootstrap 95% CIs, DeLong's p
of each arm's AUC against arm 1 on the same target cases, the pretraining's CPU-minutes
and its k-NN accuracy on source validation; then the training images/s, inference ms per
128 px image and parameter counts of the timm backbones against the default U-Net.

Every setting is fixed before the run, the same for every arm; the only model selection
is the study's (source validation). Nothing here reads a target label before the final
evaluation. Data: ../shared/data/{busi,busbra,breast}, or ``--synthetic`` (three
synthetic sites). Every study is resumable (run again after a stop).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from senolab.engine.config import StudyConfig
from senolab.engine.data import load_cohorts
from senolab.evaluation import POOLED, compare_methods
from senolab.runners.study import run_study

REPO = Path(__file__).resolve().parents[1]
REAL = [str(REPO.parent / "shared" / "data" / name) for name in ("busi", "busbra", "breast")]
BASELINE = "unet_scratch"
HEADS = {"classification": True, "segmentation": True, "bbox": False}


def arms(args) -> dict[str, dict]:
    """Arm name -> the study config's model section and pretrain step (None: none)."""
    resnet = {"encoder": "timm", "encoder_options": {"name": args.backbone}, "heads": HEADS}
    ssl = {"method": args.ssl_method, "epochs": args.ssl_epochs, "batch_size": args.ssl_batch_size,
           "lr": args.ssl_lr, "time_budget_s": args.ssl_time_budget, "monitor_every": max(1, args.ssl_epochs // 3)}
    return {
        BASELINE: {"model": {"encoder": "unet", "heads": HEADS}, "pretrain": None},
        f"{args.backbone}_scratch": {"model": resnet, "pretrain": None},
        f"{args.backbone}_ssl_sources": {"model": resnet, "pretrain": {**ssl, "on": "sources"}},
        f"{args.backbone}_ssl_transductive": {"model": resnet, "pretrain": {**ssl, "on": "sources+target"}},
    }


def study_config(args, name: str, arm: dict) -> StudyConfig:
    data = ({"cohorts": ["synthetic"], "synthetic": {"n_sites": 3, "images_per_site": args.synthetic_images,
                                                     "image_size": 128}}
            if args.synthetic else {"cohorts": REAL})
    base = {"name": name,
            "data": {**data, "image_size": args.image_size, "classes": "binary", "split": {"val_fraction": 0.15}},
            "model": arm["model"],
            "train": {"epochs": args.epochs, "batch_size": 16, "lr": args.lr, "time_budget_s": args.time_budget,
                      "early_stopping": {"patience": 3}},
            "evaluation": {"bootstrap": args.bootstrap}}
    raw = {"kind": "study", "name": name, "base": base, "protocol": "loso", "methods": ["erm"], "seeds": [0],
           "embedding_figure": False}
    if arm["pretrain"] is not None:
        raw["pretrain"] = arm["pretrain"]
    return StudyConfig.model_validate(raw)


def run_arms(args) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, float]]:
    """Run (or resume) every arm's study; its rows, target predictions and wall minutes."""
    rows, cases, minutes = [], [], {}
    cohort = None
    for name, arm in arms(args).items():
        config = study_config(args, name, arm)
        if cohort is None:
            cohort = load_cohorts(config.base.data, progress=not args.quiet)
        began = time.perf_counter()
        run_study(config, args.out / name, progress=not args.quiet, cohort=cohort)
        minutes[name] = (time.perf_counter() - began) / 60
        results = pd.read_csv(args.out / name / "results.csv").assign(arm=name)
        rows.append(results)
        for target in results["target_site"]:
            table = pd.read_parquet(args.out / name / "runs" / target / "erm" / "seed0" / "predictions.parquet")
            cases.append(table[table["domain"] == "target"].assign(method=name))
    return pd.concat(rows, ignore_index=True), pd.concat(cases, ignore_index=True), minutes


def pretraining_record(args, arm: str, target: str) -> dict:
    path = args.out / arm / "pretrain" / target / "seed0" / "pretrain.json"
    return json.loads(path.read_text()) if path.exists() else {}


def result_table(args, results: pd.DataFrame, cases: pd.DataFrame) -> str:
    lines = ["| target | arm | transductive | AUC [95% CI] | DeLong p vs unet_scratch | Dice [95% CI] "
             "| pretraining CPU-min | k-NN acc (source val) |", "|---|---|---|---|---|---|---|---|"]
    for target, per_target in results.groupby("target_site", sort=True):
        same = cases[cases["site"] == target].drop(columns=["label_name", "domain"], errors="ignore")
        for r in per_target.to_dict("records"):
            p = np.nan
            if r["arm"] != BASELINE:
                p = compare_methods(same, BASELINE, r["arm"]).set_index("site").loc[POOLED, "p"]
            record = pretraining_record(args, r["arm"], target)
            cpu = f"{record['cpu_minutes']:.2f}" if record else "-"
            knn = f"{record['knn_acc']:.3f}" if record.get("knn_acc") is not None else "-"
            lines.append(f"| {target} | {r['arm']} | {'yes' if r['transductive'] else 'no'} | {_ci(r, 'auc')} "
                         f"| {'-' if not np.isfinite(p) else f'{p:.3g}'} | {_ci(r, 'dice')} | {cpu} | {knn} |")
    worst = results.groupby("arm")["auc"].min()
    lines += ["", "worst-site AUC per arm: " + ", ".join(f"{a} {v:.3f}" for a, v in worst.items())]
    return "\n".join(lines)


def _ci(row: dict, metric: str) -> str:
    value = row.get(metric)
    if value is None or not np.isfinite(value):
        return "-"
    return f"{value:.3f} [{row[metric + '_lo']:.3f}, {row[metric + '_hi']:.3f}]"


def speed_table(args) -> str:
    """Training images/s (batch 16, all threads) and inference ms per image (batch 1, one
    thread) at 128 px, and parameters, for the default U-Net and the timm backbones."""
    sys.path.insert(0, str(Path(__file__).parent))
    from model_speed import count_params, inference_ms, train_step_seconds

    from senolab.models import build_model

    heads = {"cls": {"num_classes": 3}, "seg": {}}  # model_speed's batch has three classes
    lines = [f"torch {torch.__version__}, {torch.get_num_threads()} threads for training; 128 px, cls + seg heads",
             "| encoder | params (model) | params (encoder) | train img/s (batch 16) | inference ms/img (1 thread) |",
             "|---|---|---|---|---|"]
    for label, encoder, options in [("unet (default)", "unet", {}),
                                    *[(f"timm {n}", "timm", {"name": n}) for n in args.speed_backbones]]:
        torch.manual_seed(0)
        model = build_model(encoder, heads, options)
        train = train_step_seconds(model, 128, 16, 3)
        infer = inference_ms(model, 128, 10)
        lines.append(f"| {label} | {count_params(model) / 1e6:.2f}M | {count_params(model.encoder) / 1e6:.2f}M "
                     f"| {16 / train:.1f} | {infer:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic", action="store_true", help="three synthetic sites instead of the real cohorts")
    parser.add_argument("--synthetic-images", type=int, default=80, help="images per synthetic site")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=6, help="fine-tuning epochs, every arm")
    parser.add_argument("--time-budget", type=float, default=60.0, help="fine-tuning seconds per unit, every arm")
    parser.add_argument("--lr", type=float, default=0.002)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--ssl-method", default="simclr")
    parser.add_argument("--ssl-epochs", type=int, default=10)
    parser.add_argument("--ssl-batch-size", type=int, default=32)
    parser.add_argument("--ssl-lr", type=float, default=1e-3)
    parser.add_argument("--ssl-time-budget", type=float, default=90.0, help="pretraining seconds per (target, seed)")
    parser.add_argument("--bootstrap", type=int, default=500)
    parser.add_argument("--speed-backbones", nargs="*", default=["resnet18", "convnext_atto", "efficientnet_b0"])
    parser.add_argument("--no-speed", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "pretrain_loso")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    began, cpu_began = time.perf_counter(), time.process_time()
    results, cases, minutes = run_arms(args)
    print(f"\nLeave-one-site-out, {'synthetic sites' if args.synthetic else 'BUSI, BUS-BRA, BrEaST'}, "
          f"{args.image_size} px; fine-tuning {args.epochs} epochs / {args.time_budget:.0f} s per unit (every arm); "
          f"pretraining {args.ssl_method}, {args.ssl_epochs} epochs / {args.ssl_time_budget:.0f} s per target")
    print(result_table(args, results, cases))
    print("wall minutes per arm (all targets, evaluation included): "
          + ", ".join(f"{a} {m:.1f}" for a, m in minutes.items()))
    if not args.no_speed:
        print()
        print(speed_table(args))
    print(f"\ntotal: {(time.perf_counter() - began) / 60:.1f} min wall, "
          f"{(time.process_time() - cpu_began) / 60:.1f} CPU-min")


if __name__ == "__main__":
    main()
