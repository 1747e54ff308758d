"""`senolab sync RUN_DIR [--tracking-uri URI]`: upload a run directory to MLflow."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers) -> None:
    sync = subparsers.add_parser(
        "sync",
        help="upload a finished or partial run directory to MLflow (never duplicates runs)",
        description="Upload the runs recorded in RUN_DIR/runs.json to MLflow. Runs already there "
        "(found by their senolab run key) are left alone, so syncing twice creates nothing new.",
    )
    sync.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a directory written by a senolab study")
    sync.add_argument("--tracking-uri", default=None, metavar="URI",
                      help="MLflow server or store (default: the run's own, or its embedded SQLite store)")
    sync.set_defaults(func=run_sync)


def run_sync(args: argparse.Namespace) -> int:
    from senolab.tracking.rundir import RunDir

    try:
        run = RunDir.open(args.run_dir)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        counts = run.sync(args.tracking_uri)
    except Exception as err:  # noqa: BLE001 - report any backend failure; the manifest records it
        print(f"error: upload to MLflow failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    print(f"{counts.created} runs created, {counts.resumed} completed, {counts.skipped} already in MLflow")
    print(run.tracking_message())
    return 0
