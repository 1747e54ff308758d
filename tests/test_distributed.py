"""Data-parallel training on 2 CPU processes (gloo), launched by torchrun as a user would.

- The same global batch gives the same loss curve on 1 and 2 processes. The comparison is
  exact only where the loss of a global batch is the mean of its halves' losses and nothing
  depends on how the batch is split, so the model here is chosen for it: a ViT encoder (no
  BatchNorm; every decoder has BatchNorm, so no segmentation head) with the classification
  head alone (three classes: every case has a label; cross-entropy is a mean over cases), its
  dropout switched off in both runs (masks are drawn per process, :func:`no_dropout`).
  Then per-epoch losses and validation scores agree to rtol 1e-4 (float32 sums in another
  order), and the final weights to atol 1e-5. With BatchNorm (per-process statistics; the
  fix, SyncBatchNorm, runs on GPUs only) or dropout the curves are statistically, not
  numerically, alike.
- A 2-process run stopped after its first epoch resumes on 2 processes and on 1 process,
  each time with the 1-process curve (same tolerances): the checkpoint holds the unwrapped
  model, so the number of processes may change.
- The real CLI: `senolab train CONFIG --devices 2 --out relative/path`, killed with SIGKILL
  (launcher and workers) after its first checkpoint, then the same command again: one
  history with every epoch once, one set of MLflow runs.
- Under a time budget rank 0's clock stops both processes at the same step; each rank's
  batches are its share of the 1-process batches (padded to equal step counts).
- bf16-mixed trains on CPU; 16-mixed on CPU, and a batch the devices do not divide, are refused.

This file is also the workers' script: torchrun runs it with a config, a folder and an
optional last epoch, and each rank trains its share (see ``__main__`` at the bottom).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from senolab.checkpoint import load_checkpoint
from senolab.engine import distributed
from senolab.engine.config import ConfigError, load_config
from senolab.engine.data import prepare
from senolab.engine.trainer import Trainer

EPOCHS = 3
EXACT = {
    "kind": "experiment",
    "name": "exact",
    # 40 training cases: 5 global batches of 8
    "data": {"cohorts": ["synthetic"], "synthetic": {"n_sites": 2, "images_per_site": 32, "image_size": 64},
             "image_size": 32, "augment": False, "classes": "three",  # every case labelled (binary leaves normals out)
             "split": {"kind": "holdout", "test_fraction": 0.25, "seed": 0}},
    "model": {"encoder": "vit", "encoder_options": {"image_size": 32, "patch_size": 8, "dim": 32, "depth": 1, "heads": 2},
              "heads": {"classification": True, "segmentation": False, "bbox": False}},
    "train": {"epochs": EPOCHS, "batch_size": 8, "warmup_epochs": 0.5, "early_stopping": {"patience": EPOCHS}},
}
COMPARED = ["loss", "loss_cls", "weight_cls", "val_auc", "val_score"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def write_config(path: Path, config: dict, **train) -> Path:
    config = json.loads(json.dumps(config))
    config["train"].update(train)
    path.write_text(yaml.safe_dump(config))
    return path


@contextmanager
def no_dropout():
    """Dropout off: its masks are drawn per process, for each process's share of the batch."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.nn.Dropout, "forward", lambda self, x: x)
        yield


def train_here(config_path: Path, out: Path, until_epoch: int | None = None) -> None:
    """Train in this process: a world of one, or one rank of a torchrun world."""
    config = load_config(config_path)
    with distributed.process_group(config.train), no_dropout():
        Trainer(config, prepare(config.data, progress=False), out).fit(progress=False, until_epoch=until_epoch)


def torchrun(config_path: Path, out: Path, until_epoch: int | None = None) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__,
               str(config_path), str(out), *([str(until_epoch)] if until_epoch else [])]
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def history(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "history.csv")


def same_curve(a: pd.DataFrame, b: pd.DataFrame, rtol: float) -> None:
    assert list(a["epoch"]) == list(b["epoch"]) == list(range(EPOCHS))
    pd.testing.assert_frame_equal(a[COMPARED], b[COMPARED], rtol=rtol, atol=0)


def same_weights(a: Path, b: Path, atol: float) -> None:
    first, second = load_checkpoint(a / "last.pt")["model"], load_checkpoint(b / "last.pt")["model"]
    assert first.keys() == second.keys()  # no "module." prefix from DDP
    for key in first:
        torch.testing.assert_close(first[key], second[key], atol=atol, rtol=0, msg=key)


def test_two_processes_follow_one_and_a_stopped_run_resumes_on_two_or_one(tmp_path, one_torch_thread):
    # One test, not several sharing a fixture (pytest-xdist would train the shared runs twice),
    # and no uninterrupted 2-process run: the 2-process curve, stopped after its first epoch
    # and resumed on 2 processes, must still be the 1-process curve.
    one_config = write_config(tmp_path / "one.yaml", EXACT)
    two_config = write_config(tmp_path / "two.yaml", EXACT, devices=2)
    train_here(one_config, tmp_path / "one")

    two = tmp_path / "two"
    torchrun(two_config, two, until_epoch=1)  # as if killed after its first epoch
    assert list(history(two)["epoch"]) == [0]
    on_one = tmp_path / "two_then_one"
    shutil.copytree(two, on_one)

    torchrun(two_config, two)  # 2 -> 2 processes
    same_curve(history(two), history(tmp_path / "one"), rtol=1e-4)
    same_weights(two, tmp_path / "one", atol=1e-5)

    train_here(one_config, on_one)  # 2 -> 1 process: the checkpoint holds the plain model
    same_curve(history(on_one), history(tmp_path / "one"), rtol=1e-4)
    same_weights(on_one, tmp_path / "one", atol=1e-5)


def test_the_time_budget_stops_every_rank_at_the_same_step(tmp_path):
    """Rank 0's clock decides, broadcast every step: a rank stopping alone would hang the other."""
    budget = write_config(tmp_path / "budget.yaml", EXACT, devices=2, epochs=1000, time_budget_s=2.0,
                          early_stopping={"patience": 1000})
    torchrun(budget, tmp_path / "run")
    spent = history(tmp_path / "run")
    assert len(spent) < 1000 and spent["seconds"].iloc[-1] >= 2.0


@pytest.mark.parametrize("size", [40, 37, 3])
def test_each_rank_gets_its_share_of_the_one_process_batches(size):
    """Batch k on one process is the union of the ranks' batches k; every rank runs as many steps."""
    from torch.utils.data import DataLoader

    from senolab.engine.data import ShardSampler

    def batches(batch_size, sampler=None):
        generator = torch.Generator().manual_seed(11)
        if sampler is not None:
            sampler.generator = generator
        loader = DataLoader(range(size), batch_size=batch_size, shuffle=sampler is None, sampler=sampler,
                            generator=generator)
        return [batch.tolist() for batch in loader]

    one = batches(8)
    shares = [batches(4, ShardSampler(size, rank, 2, True, None)) for rank in range(2)]
    assert len(shares[0]) == len(shares[1]) == len(one)
    for k, batch in enumerate(one):
        union = shares[0][k] + shares[1][k]
        if len(batch) % 2 == 0:
            assert sorted(union) == sorted(batch)
        else:  # the last batch, padded with the first case of the order
            assert sorted(union) == sorted(batch + [one[0][0]])


# ------------------------------------------------------------------------------ the CLI
CLI = {
    "kind": "experiment",
    "name": "cli",
    "data": {"cohorts": ["synthetic"], "synthetic": {"n_sites": 2, "images_per_site": 16, "image_size": 64},
             "image_size": 32, "split": {"kind": "holdout", "test_fraction": 0.25, "seed": 0}},
    "model": {"encoder_options": {"widths": [4, 8]}, "heads": {"classification": True, "segmentation": True,
                                                               "bbox": False}},
    "train": {"epochs": 15, "batch_size": 4, "early_stopping": {"patience": 15}},
    "evaluation": {"bootstrap": 10},
}


def descendants(root: int) -> list[int]:
    """Every process below ``root``, from the parent ids in /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # a process that ended meanwhile
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL the launcher and its workers (torchrun starts each in a session of its own)."""
    for pid in [process.pid, *descendants(process.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()


def test_cli_two_devices_killed_and_resumed_writes_the_run_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_config(Path("cli.yaml"), CLI)
    command = [sys.executable, "-m", "senolab.cli", "train", "cli.yaml", "--devices", "2", "--out", "runs/two",
               "--quiet"]
    first = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last, deadline = Path("runs/two/last.pt"), time.monotonic() + 120
    while not last.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    kill_tree(first)
    assert last.exists() and not Path("runs/two/done.json").exists(), "killed after the first checkpoint"
    stopped_at = len(history(Path("runs/two")))
    assert 1 <= stopped_at < CLI["train"]["epochs"]

    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("run written to") == 1  # rank 0 reports, once
    assert f"run written to {tmp_path / 'runs/two'}" in done.stdout

    run = Path("runs/two")
    epochs = list(history(run)["epoch"])
    assert epochs == list(range(len(epochs))) and len(epochs) > stopped_at  # resumed, every epoch once
    assert (run / "done.json").exists() and (run / "model").is_dir() and not list(run.glob("*.pt"))
    assert [r["name"] for r in json.loads((run / "runs.json").read_text())["runs"]] == ["erm"]
    assert load_config(run / "config.yaml").train.devices == 2

    import mlflow

    client = mlflow.tracking.MlflowClient(f"sqlite:///{(run / 'mlflow.db').resolve()}")
    experiment = client.get_experiment_by_name("cli").experiment_id
    found = client.search_runs([experiment])
    assert len(found) == 2  # the command's run and its one model, whatever the number of processes
    erm = next(r for r in found if r.data.tags.get("method") == "erm")
    assert len(client.get_metric_history(erm.info.run_id, "loss")) == len(epochs)


# ------------------------------------------------------------------------ precision, refusals
def test_bf16_mixed_trains_on_cpu(tmp_path, one_torch_thread):
    path = write_config(tmp_path / "bf16.yaml", EXACT, precision="bf16-mixed", epochs=1)
    train_here(path, tmp_path / "run")
    assert history(tmp_path / "run")["loss"].map(lambda v: v == v and abs(v) < float("inf")).all()


def test_what_cpu_processes_cannot_do_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="16-mixed.*needs a CUDA GPU"):
        load_config(write_config(tmp_path / "fp16.yaml", EXACT, precision="16-mixed", device="cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="16-mixed.*needs a CUDA GPU"):
            distributed.check_devices(load_config(write_config(tmp_path / "auto.yaml", EXACT, precision="16-mixed")).train)
        with pytest.raises(ConfigError, match="SyncBatchNorm does not run on CPU"):
            distributed.check_devices(load_config(write_config(tmp_path / "sbn.yaml", EXACT, devices=2,
                                                               sync_batchnorm=True)).train)
    with pytest.raises(ConfigError, match="batch_size 6 is the global batch.*multiple of 4"):
        load_config(write_config(tmp_path / "odd.yaml", EXACT, batch_size=6, devices=4))
    with pytest.raises(ConfigError, match="train.devices is 2 but outside torchrun"):
        train_here(write_config(tmp_path / "two.yaml", EXACT, devices=2), tmp_path / "run")


def test_cli_refuses_before_launching(tmp_path, capsys):
    from senolab.cli import main

    path = write_config(tmp_path / "odd.yaml", EXACT)
    assert main(["train", str(path), "--devices", "3", "--out", str(tmp_path / "run")]) == 2
    assert "multiple of 3" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


if __name__ == "__main__":  # one torchrun worker: CONFIG OUT [UNTIL_EPOCH]
    torch.set_num_threads(1)
    train_here(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else None)
