"""Leave-one-site-out over BUSI, BUS-BRA and BrEaST with erm and the adaptation methods.

    .venv/bin/python benchmarks/cross_site.py [--config configs/study_loso.yaml] [--out runs/cross_site]

Prints the results table (AUC and Dice with patient-bootstrap 95% CIs on each unseen
target site, the in-site AUC and the gap, the embedding site-classifier accuracy) and the
wall time. The study is resumable: run it again after a stop and finished runs are kept.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from senolab.engine.config import load_study_config
from senolab.runners.study import run_study

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "study_loso.yaml")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "cross_site")
    args = parser.parse_args()
    config = load_study_config(args.config)
    began = time.perf_counter()
    run_study(config, args.out)
    wall = time.perf_counter() - began
    print((args.out / "results.md").read_text())
    print(f"wall time: {wall / 60:.1f} min for {len(config.methods)} methods x 3 target sites, seed(s) {config.seeds}")


if __name__ == "__main__":
    main()
