"""Inference speed and accuracy of a trained model: PyTorch as trained, PyTorch with
BatchNorm folded, ONNX Runtime fp32 and ONNX Runtime int8.

    python benchmarks/inference_speed.py [--run RUN] [--on ROOT ...] [--repeats 50]

RUN is a `senolab train` run folder; without it a quick model is trained here on the
built-in synthetic cohort (the default U-Net with its three heads at 128 px, 4 epochs).
The speed is the architecture's, whatever the weights; the AUC/Dice changes mean
something only for a model that has learnt (seen 2026-11-27: the quick synthetic model
reached AUC 0.59 and Dice 0 on its 40 test cases, so measure them on a real run, e.g.
``senolab train configs/train_ultrasound.yaml`` then ``--run runs/train_ultrasound``). The
model is exported as `senolab export RUN --int8` does (parity on the run's test part,
int8 calibrated on its training part) into ``--work``; each ``--on`` cohort (a dataset
folder) is predicted by all four as well.

Measured per backend: milliseconds per image at batch 1 on one thread (median of
``--repeats``) and images per second at batch 32 on two threads (the four backends take
turns call by call, so a change of the machine's load hits them alike), each with the process's
CPU time beside the wall time (``time.process_time``: every thread of the process, ONNX
Runtime's pool included; its threads spin while waiting, which counts as CPU time), the
model's size on disk, and the AUC and Dice changes of ONNX fp32 and int8 against PyTorch.
The machine's 1-minute load average is printed at the start and the end: on a shared
machine the wall times are only as good as the load was low. Goal of issue 18: at most
8 ms per 128 px image with int8, losing at most 0.005 AUC and Dice.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from senolab.cohorts.readers import read_cohort
from senolab.engine.config import load_config
from senolab.models.inference import inference_model
from senolab.runners.experiment import train_and_evaluate
from senolab.runners.export import INT8_NAME, ONNX_NAME, OnnxModel, export_run, parity, read_checkpoint
from senolab.runners.packaged import PREPROCESSING, input_cohort, read_state, restored_data

GOAL_MS, GOAL_LOSS = 8.0, 0.005
QUICK = {"kind": "experiment", "name": "inference_speed_synthetic",
         "data": {"cohorts": ["synthetic"], "synthetic": {"n_sites": 2, "images_per_site": 80, "image_size": 160,
                                                          "seed": 0},
                  "image_size": 128, "classes": "binary",
                  "split": {"kind": "holdout", "test_fraction": 0.25, "val_fraction": 0.15, "seed": 0}},
         "model": {"encoder": "unet", "heads": {"classification": True, "segmentation": True, "bbox": True}},
         "train": {"epochs": 4, "batch_size": 16, "lr": 0.002, "warmup_epochs": 1, "time_budget_s": 240, "seed": 0},
         "evaluation": {"bootstrap": 100}}


def interleaved_times(runs: dict, repeats: int, warmup: int = 5) -> dict[str, tuple[float, float]]:
    """Median wall and process-CPU seconds of each ``runs[name]()``, the backends taking
    turns call by call: a change of the machine's load hits all of them alike."""
    for run in runs.values():
        for _ in range(warmup):
            run()
    wall = {name: [] for name in runs}
    cpu = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            w, c = time.perf_counter(), time.process_time()
            run()
            wall[name].append(time.perf_counter() - w)
            cpu[name].append(time.process_time() - c)
    return {name: (statistics.median(wall[name]), statistics.median(cpu[name])) for name in runs}


def torch_runner(model: torch.nn.Module, mode):
    def run(images: np.ndarray):
        with mode():
            return model({"image": torch.from_numpy(images)})
    return run


def measure(runners: dict, size: int, repeats: int, batch: int, threads_batch: int) -> dict[str, dict]:
    """Per backend: latency at batch 1 on one thread, throughput at ``batch`` on ``threads_batch`` threads.
    ``runners``: name -> (threads -> a callable on an image batch); torch's thread count is
    process-wide, so it is set around each torch call."""
    rng = np.random.default_rng(0)
    one = rng.random((1, 1, size, size), dtype=np.float32)
    many = rng.random((batch, 1, size, size), dtype=np.float32)
    results = {name: {} for name in runners}
    for latency, threads, images, n in ((True, 1, one, repeats), (False, threads_batch, many, max(5, repeats // 5))):
        key = f"batch{len(images)}_{threads}thread{'s' if threads > 1 else ''}"
        calls = {}
        for name, runner in runners.items():
            run = runner(threads)
            calls[name] = (lambda run=run, images=images, threads=threads: (torch.set_num_threads(threads), run(images)))
        for name, (wall, cpu) in interleaved_times(calls, n, warmup=5 if latency else 2).items():
            cpu_ms = {f"cpu_ms_per_image_{key}": 1000 * cpu / len(images)}
            results[name].update({f"ms_per_image_{key}": 1000 * wall, **cpu_ms} if latency
                                 else {f"images_per_s_{key}": len(images) / wall, **cpu_ms})
    return results


def with_torch_threads(model, mode):
    def runner(threads: int):
        return torch_runner(model, mode)
    return runner


def with_ort_threads(path: Path):
    def runner(threads: int):
        onnx = OnnxModel(path, threads=threads)
        return onnx
    return runner


def quick_run(work: Path) -> Path:
    """A model trained here on the synthetic cohort (module docstring)."""
    run = work / "quick_run"
    if (run / "done.json").is_file():
        return run
    config_path = work / "quick.yaml"
    config_path.write_text(yaml.safe_dump(QUICK))
    train_and_evaluate(load_config(config_path), run, progress=False)
    return run


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def extra_parity(root: str, state: dict, reference, folder: Path) -> dict:
    """fp32 and int8 ONNX against PyTorch on every case of the cohort at ``root``."""
    data = restored_data(state, read_cohort(root, progress=False))
    return {kind: parity(reference, OnnxModel(folder / name), data)
            for kind, name in (("fp32", ONNX_NAME), ("int8", INT8_NAME))}


def quality_lines(name: str, report: dict) -> list[str]:
    lines = [f"{name} ({report['fp32']['n_cases']} cases):"]
    for kind in ("fp32", "int8"):
        part = report[kind]
        cells = [f"{m.upper()} {part[m]['torch']:.4f} -> {part[m]['onnx']:.4f} ({part[m]['change']:+.4f})"
                 for m in ("auc", "dice") if m in part]
        diff = max(part["max_abs_diff"].values())
        lines.append(f"  onnxruntime {kind}: {'; '.join(cells)}; largest |output diff| {diff:.2e}")
        for site, metrics in part.get("sites", {}).items():
            cells = [f"{m.upper()} {metrics[m]['torch']:.4f} -> {metrics[m]['onnx']:.4f} ({metrics[m]['change']:+.4f})"
                     for m in ("auc", "dice") if m in metrics]
            lines.append(f"      {site} ({metrics['n_cases']} cases): {'; '.join(cells)}")
    return lines


def main() -> None:
    import onnxruntime

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None, help="a `senolab train` run (default: a quick synthetic one)")
    parser.add_argument("--on", nargs="*", default=[], metavar="ROOT", help="further test cohorts (dataset folders)")
    parser.add_argument("--work", type=Path, default=Path("runs/inference_speed"), help="exports and results")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="threads for the batch throughput")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    run = args.run or quick_run(args.work)
    folder = args.work / f"onnx_{run.name}"
    load_start = os.getloadavg()[0]
    report = export_run(str(run), folder, int8=True, progress=False)
    state = read_state(folder / PREPROCESSING)
    size = state["image_size"]
    config, weights = read_checkpoint(run / "model" / "artifacts" / "model.pt")
    from senolab.engine.trainer import model_from_config

    probe = restored_data(state, input_cohort([np.zeros((size, size), np.uint8)], _empty_frame(), state))
    plain = model_from_config(config, probe, initial_weights=False)
    plain.load_state_dict(weights)
    plain.eval()
    folded = inference_model(plain)
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(folded.state_dict(), Path(tmp) / "folded.pt")
        folded_bytes = (Path(tmp) / "folded.pt").stat().st_size
    backends = {
        "pytorch fp32 (as trained, no_grad)": (with_torch_threads(plain, torch.no_grad),
                                               (run / "model" / "artifacts" / "model.pt").stat().st_size),
        "pytorch folded (inference_mode)": (with_torch_threads(folded, torch.inference_mode), folded_bytes),
        "onnxruntime fp32": (with_ort_threads(folder / ONNX_NAME), (folder / ONNX_NAME).stat().st_size),
        "onnxruntime int8": (with_ort_threads(folder / INT8_NAME), (folder / INT8_NAME).stat().st_size),
    }
    speeds = measure({name: runner for name, (runner, _) in backends.items()}, size, args.repeats, args.batch,
                     args.threads)
    rows = {name: {"size_mb": size_bytes / 1e6, **speeds[name]} for name, (_, size_bytes) in backends.items()}
    extra = {root: extra_parity(root, state, folded, folder) for root in args.on}
    load_end = os.getloadavg()[0]
    torch.set_num_threads(args.threads)

    params = sum(p.numel() for p in plain.parameters())
    print(f"\nsenolab inference speed: {run} ({size} px, {params / 1e6:.2f} M parameters, "
          f"{config.model.encoder} with heads {', '.join(k for k, v in config.model.heads.model_dump().items() if v)})")
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; torch {torch.__version__}, onnxruntime {onnxruntime.__version__}; "
          f"load average {load_start:.2f} at start, {load_end:.2f} at end (1-minute)")
    b = args.batch
    many = f"{args.threads}thread{'s' if args.threads > 1 else ''}"
    print(f"\n{'backend':36} {'size MB':>8} {'ms/img b1 1thr':>15} {'CPU ms':>7} "
          f"{f'img/s b{b} {args.threads}thr':>15} {'CPU ms/img':>10}")
    for name, row in rows.items():
        print(f"{name:36} {row['size_mb']:8.2f} {row['ms_per_image_batch1_1thread']:15.2f} "
              f"{row['cpu_ms_per_image_batch1_1thread']:7.2f} {row[f'images_per_s_batch{b}_{many}']:15.1f} "
              f"{row[f'cpu_ms_per_image_batch{b}_{many}']:10.2f}")
    print()
    for line in quality_lines(f"held out: {report['held_out']['source']}", report):
        print(line)
    for root, part in extra.items():
        for line in quality_lines(root, part):
            print(line)
    int8 = rows["onnxruntime int8"]["ms_per_image_batch1_1thread"]
    changes = [report["int8"][m]["change"] for m in ("auc", "dice") if m in report["int8"]]
    print(f"\ngoal: int8 <= {GOAL_MS} ms/image: {int8:.2f} ms ({'met' if int8 <= GOAL_MS else 'NOT met'}); "
          f"int8 AUC, Dice change within {GOAL_LOSS} on the held-out part: {', '.join(f'{v:+.4f}' for v in changes)} "
          f"({'met' if all(abs(v) <= GOAL_LOSS for v in changes) else 'NOT met'})")
    result = {"run": str(run), "image_size": size, "parameters": params, "cpu": cpu_name(), "cores": os.cpu_count(),
              "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "load_start": load_start,
              "load_end": load_end, "speed": rows, "parity": report, "extra_parity": extra}
    (args.work / f"inference_speed_{run.name}.json").write_text(json.dumps(result, indent=1, default=str))
    print(f"written: {args.work / f'inference_speed_{run.name}.json'}")


def _empty_frame():
    import pandas as pd

    return pd.DataFrame(index=range(1))


if __name__ == "__main__":
    sys.exit(main())
