"""A study run sequentially and on Ray: wall time, CPU time, and whether the results agree.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/study_executors.py \
        [--config configs/study_synthetic.yaml] [--out runs/study_executors] \
        [--variants sequential ray sequential_default_threads]

Runs ``senolab study`` on the config (each variant in a fresh folder, as a user would):

- ``sequential``: the sequential executor with ``executor.cpus: 1`` (one torch thread per run);
- ``ray``: the ray executor with ``executor.cpus: 1`` on a local Ray sized to this machine
  (as many 1-CPU tasks at once as it has cores: 2 on a 2-core machine);
- ``sequential_default_threads`` (asked for with ``--variants``): the sequential executor
  with torch's default threads (``executor.cpus`` unset): other results than the two
  above, and the usual way to run.

Prints per variant the wall time and the CPU time (user + system) of the command and every
process under it (Ray's GCS, raylet and workers included), summed from per-process CPU times
sampled every 0.5 s with psutil: what a process spent in its last half second before it
ended is missed. Then whether the ``sequential`` and ``ray`` results.csv are identical.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]


class TreeCpu:
    """CPU seconds of a process and all its descendants, sampled while it runs."""

    def __init__(self, pid: int, every: float = 0.5):
        self.root, self.every, self.seconds = psutil.Process(pid), every, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                processes = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for process in processes:
                try:
                    times = process.cpu_times()
                except psutil.Error:
                    continue
                self.seconds[(process.pid, process.create_time())] = times.user + times.system
            self._stop.wait(self.every)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return sum(self.seconds.values())


def run_variant(config: dict, name: str, executor: str, out: Path) -> dict:
    """``senolab study`` of ``config`` into ``out/name`` with ``executor``: wall and CPU seconds."""
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    command = [sys.executable, "-m", "senolab.cli", "study", str(path), "--out", str(folder / "study"),
               "--executor", executor, "--quiet"]
    began = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(folder / "stderr.log", "w"))
    cpu = TreeCpu(process.pid)
    code = process.wait()
    wall = time.perf_counter() - began
    cpu_seconds = cpu.stop()
    if code != 0:
        raise SystemExit(f"{name}: senolab study exited {code}; see {folder / 'stderr.log'}")
    return {"variant": name, "executor": executor, "cpus_per_run": config["executor"].get("cpus", "default"),
            "wall_s": round(wall, 1), "cpu_s": round(cpu_seconds, 1), "results": folder / "study" / "results.csv"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "study_synthetic.yaml")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "study_executors")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=["sequential", "ray"],
                        help="what to run (default: sequential and ray, 1 thread per run)")
    args = parser.parse_args()
    config = yaml.safe_load(args.config.read_text())
    print(f"{args.config.name}: {os.cpu_count()} cores; load before: {os.getloadavg()[0]:.2f}", flush=True)
    rows = [run_variant(VARIANTS[name](config), name, "ray" if name == "ray" else "sequential", args.out)
            for name in args.variants]
    table = pd.DataFrame(rows).set_index("variant")
    print(table.drop(columns=["results"]).to_string())
    if {"sequential", "ray"} <= set(table.index):
        sequential, on_ray = (pd.read_csv(table.loc[name, "results"]) for name in ("sequential", "ray"))
        same = sequential.shape == on_ray.shape and sequential.equals(on_ray)
        print(f"results.csv identical (sequential vs ray, 1 thread per run): {same} "
              f"({len(sequential)} runs, {sequential.shape[1]} columns)")
        if not same:
            diff = (sequential.select_dtypes("number") - on_ray.select_dtypes("number")).abs().max().max()
            print(f"largest absolute difference: {diff}")
    print(f"load after: {os.getloadavg()[0]:.2f}")


def _executor(config: dict, **changes) -> dict:
    section = {k: v for k, v in config.get("executor", {}).items() if k != "cpus"}
    return {**config, "executor": {**section, **changes}}


# Each variant's config: 1 torch thread per run (both executors), or torch's default threads.
VARIANTS = {"sequential": lambda config: _executor(config, cpus=1),
            "ray": lambda config: _executor(config, cpus=1),
            "sequential_default_threads": lambda config: _executor(config)}


if __name__ == "__main__":
    main()
