"""Training throughput (images/s) on 1 and 2 data-parallel processes, and in mixed precision on a GPU.

    .venv/bin/python benchmarks/train_throughput.py [--epochs 4] [--images-per-site 96] [--out runs/train_throughput]

On CPU, one fixed synthetic experiment (a residual U-Net with classification and
segmentation heads, 64 px, global batch 16) is trained three ways: 1 process with 1
thread, 2 processes (DDP over gloo, launched by torchrun) with 1 thread each, and 1
process with 2 threads (the same two cores used by intra-op threads instead of
processes). With a CUDA GPU, also 1 process on it in float32, bf16-mixed and 16-mixed
(the card is named). Each run's throughput is the training images of an epoch over the
trainer's own ``train_seconds`` (history.csv: the training pass without validation), the
median over the epochs after the first (which warms up allocators and caches).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]


def experiment(epochs: int, images_per_site: int, **train) -> dict:
    return {
        "kind": "experiment",
        "name": "train_throughput",
        "data": {"cohorts": ["synthetic"], "synthetic": {"n_sites": 2, "images_per_site": images_per_site,
                                                         "image_size": 96},
                 "image_size": 64, "split": {"kind": "holdout", "test_fraction": 0.2, "seed": 0}},
        "model": {"encoder_options": {"widths": [16, 32, 64, 128]},
                  "heads": {"classification": True, "segmentation": True, "bbox": False}},
        "train": {"epochs": epochs, "batch_size": 16, "early_stopping": {"patience": epochs}, **train},
    }


def run(name: str, config: dict, out: Path, processes: int = 1, threads: int = 1) -> float:
    """Train ``config`` in a fresh process (or ``processes`` under torchrun); its images/s."""
    folder = out / name.replace(" ", "_")
    shutil.rmtree(folder, ignore_errors=True)  # a fresh run, never resumed from an earlier one
    folder.mkdir(parents=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    worker = [__file__, "--worker", str(path), str(folder / "run"), str(threads)]
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
                if processes > 1 else [sys.executable])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(launcher + worker, check=True, env=env, stdout=subprocess.DEVNULL)
    history = pd.read_csv(folder / "run" / "history.csv")
    n_train = int((folder / "run" / "n_train").read_text())
    rates = [n_train / seconds for seconds in history["train_seconds"].iloc[1:]]
    rate = statistics.median(rates)
    print(f"{name:<34} {rate:8.1f} images/s   (epochs {[round(r, 1) for r in rates]})", flush=True)
    return rate


def worker(config_path: str, out: str, threads: int) -> None:
    """One training process (or one rank): the trainer alone, no evaluation."""
    import torch

    from senolab.engine import distributed
    from senolab.engine.config import load_config
    from senolab.engine.data import prepare
    from senolab.engine.trainer import Trainer

    torch.set_num_threads(threads)
    config = load_config(config_path)
    with distributed.process_group(config.train):
        data = prepare(config.data, progress=False)
        Trainer(config, data, out).fit(progress=False)
        if distributed.is_main():
            (Path(out) / "n_train").write_text(str(len(data.case_ids("train"))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--images-per-site", type=int, default=96)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "train_throughput")
    args = parser.parse_args()
    import torch

    base = {"epochs": args.epochs, "images_per_site": args.images_per_site, "device": "cpu"}
    print(f"CPU ({os.cpu_count()} cores), torch {torch.__version__}; global batch 16, 64 px, "
          f"{2 * args.images_per_site} synthetic images in all")
    one = run("cpu 1 process x 1 thread", experiment(**base), args.out)
    two = run("cpu 2 processes x 1 thread (gloo)", experiment(**base, devices=2), args.out, processes=2)
    threads = run("cpu 1 process x 2 threads", experiment(**base), args.out, threads=2)
    print(f"2 processes / 1 process: {two / one:.2f}x;  1 process with 2 threads / 1 thread: {threads / one:.2f}x")
    if torch.cuda.is_available():
        print(f"GPU: {torch.cuda.get_device_name(0)}")
        gpu = {**base, "device": "cuda"}
        fp32 = run("gpu float32", experiment(**gpu), args.out)
        for precision in ("bf16-mixed", "16-mixed"):
            rate = run(f"gpu {precision}", experiment(**gpu, precision=precision), args.out)
            print(f"  {precision} / float32: {rate / fp32:.2f}x")
    else:
        print("no CUDA GPU: float32 vs bf16-mixed on a GPU not measured")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main()
