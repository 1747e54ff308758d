"""Real-data training benchmark: the default model on BUS-BRA + BUSI under a CPU budget.

    python benchmarks/train_ultrasound.py [--config configs/train_ultrasound.yaml]
        [--out runs/train_ultrasound] [--threads N] [--budget-s S | --no-time-budget]

Run from the repository root (the config's cohort paths are relative to it). The config
trains the default multi-task U-Net on BUS-BRA official folds 2-5 plus a patient-disjoint,
duplicate-grouped 80% of BUSI and tests on BUS-BRA official fold 1 and the BUSI held-out
20%; ``senolab train configs/train_ultrasound.yaml`` does the same run without the speed
figures. Printed, and written to ``OUT/benchmark.json``:

- per test cohort: malignancy AUC, Dice and box IoU (means over images with a lesion) with
  patient-bootstrap 95% CIs, from the run's ``results.csv``;
- epochs run and training images seen; training images per second (training passes only,
  validation excluded); FLOPs per image for inference and for a training step (forward +
  backward, torch.utils.flop_counter, a multiply-add counted as 2) and the achieved FLOP/s;
- inference milliseconds per image at batch 1 on one thread, and parameters.

Wall-clock figures depend on what else runs on the machine, so the run's CPU time (this
process and its DataLoader workers) and the load average at start and end are reported
alongside them. On a shared machine the wall-clock budget measures the neighbours more
than the model: ``--no-time-budget`` trains the configured epochs whatever the wall clock,
and the CPU-seconds show whether that stayed within 30 minutes of 2 cores (3600 CPU-s).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_speed import count_params, flops_per_image, inference_ms  # noqa: E402

from senolab.engine.config import load_config  # noqa: E402
from senolab.engine.data import prepare  # noqa: E402
from senolab.runners.experiment import train_and_evaluate  # noqa: E402
from senolab.runners.packaged import load_packaged_model  # noqa: E402
from senolab.models import multitask_losses  # noqa: E402

TEST_NAMES = {"busbra": "BUS-BRA official fold 1", "busi": "BUSI held-out 20%"}
TARGETS = {("busi", "dice"): 0.75, ("busbra", "dice"): 0.85, ("busbra", "auc"): 0.88, ("busi", "auc"): 0.88}
INFERENCE_TARGET_MS = 15.0
QUALITY = ("auc", "dice", "box_iou")


def training_flops_per_image(model: torch.nn.Module, loader) -> float:
    """FLOPs of one training step (forward, losses, backward) on a real batch, per image."""
    batch = next(iter(loader))
    model.train()
    with FlopCounterMode(display=False) as counter:
        sum(multitask_losses(model(batch), batch).values()).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(batch["case_id"])


def quality_rows(results: pd.DataFrame) -> list[dict]:
    """One row per test cohort: each quality metric as (value, lo, hi) and its target."""
    rows = []
    for site, name in TEST_NAMES.items():
        found = results[results["site"] == site]
        if found.empty:
            continue
        r = found.iloc[0]
        row = {"site": site, "test set": name, "n_cases": int(r["n_cases"])}
        for metric in QUALITY:
            row[metric] = [float(r[metric]), float(r[f"{metric}_lo"]), float(r[f"{metric}_hi"])]
        rows.append(row)
    return rows


def cpu_seconds() -> dict:
    """User + system CPU seconds so far: this process, and its finished children (workers)."""
    t = os.times()
    return {"self": t.user + t.system, "children": t.children_user + t.children_system}


def speed_figures(model: torch.nn.Module, data, history: pd.DataFrame, batch_size: int, cpu: dict) -> dict:
    n_train = len(data.case_ids("train"))
    epochs = len(history)
    train_seconds = float(history["train_seconds"].sum())
    images_per_s = n_train * epochs / train_seconds
    train_flops = training_flops_per_image(model, data.loader("train", batch_size, shuffle=True))
    return {
        "train_images": n_train, "epochs": epochs, "images_seen": n_train * epochs,
        "train_seconds": train_seconds, "train_plus_validation_seconds": float(history["seconds"].iloc[-1]),
        "train_images_per_s": images_per_s,
        "run_cpu_seconds": cpu["self"], "run_worker_cpu_seconds": cpu["children"],
        "inference_gflop_per_image": flops_per_image(model, data.image_size) / 1e9,
        "train_gflop_per_image": train_flops / 1e9,
        "achieved_train_gflop_per_s": train_flops * images_per_s / 1e9,
        "inference_ms_per_image_1_thread": inference_ms(model, data.image_size, repeats=50),
        "inference_cpu_ms_per_image_1_thread": inference_ms(model, data.image_size, repeats=50,
                                                            clock=time.thread_time),
        "parameters": count_params(model),
    }


def print_report(quality: list[dict], speed: dict, context: dict) -> None:
    print(f"\n{'test set':26} {'n':>4} " + " ".join(f"{m + ' [95% CI]':>24}" for m in QUALITY))
    for row in quality:
        cells = " ".join(f"{v:.3f} [{lo:.3f}, {hi:.3f}]".rjust(24) for v, lo, hi in (row[m] for m in QUALITY))
        print(f"{row['test set']:26} {row['n_cases']:>4} {cells}")
    print(f"\nepochs {speed['epochs']}, {speed['images_seen']} training images seen ({speed['train_images']} per "
          f"epoch) in {speed['train_seconds']:.0f} s of training ({speed['train_plus_validation_seconds']:.0f} s "
          f"with validation); the whole run (training, validation, test prediction) used "
          f"{speed['run_cpu_seconds']:.0f} CPU-s in this process + {speed['run_worker_cpu_seconds']:.0f} CPU-s in "
          f"DataLoader workers")
    print(f"training: {speed['train_images_per_s']:.1f} images/s, {speed['train_gflop_per_image']:.2f} GFLOP/image "
          f"(forward + backward), {speed['achieved_train_gflop_per_s']:.1f} GFLOP/s achieved")
    print(f"inference: {speed['inference_gflop_per_image']:.2f} GFLOP/image, "
          f"{speed['inference_ms_per_image_1_thread']:.1f} ms/image at {context['image_size']} px on one thread "
          f"(wall clock; {speed['inference_cpu_ms_per_image_1_thread']:.1f} ms of that thread's CPU time)")
    print(f"parameters: {speed['parameters'] / 1e6:.2f} M; torch threads {context['threads']}, DataLoader workers "
          f"{context['num_workers']}; load average {context['load_start']:.1f} at start, {context['load_end']:.1f} "
          f"at end (1-minute, {os.cpu_count()} cores); wall-clock budget {context['time_budget_s']} s")
    print("\ntargets:")
    by_site = {row["site"]: row for row in quality}
    for (site, metric), target in TARGETS.items():
        if site in by_site:
            value = by_site[site][metric][0]
            print(f"  {TEST_NAMES[site]} {metric} {value:.3f} (target >= {target}): {'met' if value >= target else 'NOT met'}")
    for clock in ("", "cpu_"):
        ms = speed[f"inference_{clock}ms_per_image_1_thread"]
        print(f"  inference {ms:.1f} {clock}ms (target <= {INFERENCE_TARGET_MS}): "
              f"{'met' if ms <= INFERENCE_TARGET_MS else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/train_ultrasound.yaml"))
    parser.add_argument("--out", type=Path, default=Path("runs/train_ultrasound"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads for training (default: all cores)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--budget-s", type=float, default=None, help="override train.time_budget_s")
    budget.add_argument("--no-time-budget", action="store_true",
                        help="train the configured epochs whatever the wall clock (a shared machine)")
    args = parser.parse_args()
    overrides = None
    if args.budget_s or args.no_time_budget:
        overrides = {"train": {"time_budget_s": args.budget_s}}
    config = load_config(args.config, overrides)
    missing = [c for c in config.data.cohorts if not Path(c).exists()]
    if missing:
        sys.exit(f"{args.config}: data.cohorts {missing} not found; run from the repository root with ../shared/data")
    if args.threads:
        torch.set_num_threads(args.threads)
    context = {"threads": torch.get_num_threads(), "num_workers": config.train.num_workers,
               "image_size": config.data.image_size, "time_budget_s": config.train.time_budget_s,
               "load_start": os.getloadavg()[0]}
    data = prepare(config.data)
    before = cpu_seconds()
    train_and_evaluate(config, args.out, data=data)
    after = cpu_seconds()
    context["load_end"] = os.getloadavg()[0]
    history = pd.read_csv(args.out / "history.csv")
    model = load_packaged_model(args.out / "model", data)  # the run's one copy of the trained model
    quality = quality_rows(pd.read_csv(args.out / "results.csv"))
    speed = speed_figures(model, data, history, config.train.batch_size,
                          {k: after[k] - before[k] for k in before})
    print_report(quality, speed, context)
    (args.out / "benchmark.json").write_text(json.dumps({"quality": quality, "speed": speed, "context": context},
                                                        indent=1))


if __name__ == "__main__":
    main()
