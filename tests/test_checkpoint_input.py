"""A checkpoint torch.load(weights_only=True) refuses is reported in one line naming the file,
and the message never advises weights_only=False (torch's own message does)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from senolab.checkpoint import load_checkpoint, save_checkpoint
from senolab.errors import InputError
from senolab.models import build_encoder


class TouchOnUnpickle:
    """Unpickling this runs Path.touch: what a malicious checkpoint could do with any call."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def refused_file(kind: str, folder: Path) -> Path:
    path = folder / f"{kind}.pt"
    if kind == "pickles_a_call":
        torch.save({"model": {}, "payload": TouchOnUnpickle(folder / "touched")}, path)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        save_checkpoint(folder / "whole.pt", model={"w": torch.zeros(64, 64)})
        path.write_bytes((folder / "whole.pt").read_bytes()[:300])
    elif kind == "text":
        path.write_text("encoder weights are in another file\n")
    elif kind == "folder":
        path.mkdir()
    return path


KINDS = ["pickles_a_call", "empty", "truncated", "text", "folder"]


def assert_plain_refusal(err: pytest.ExceptionInfo, path: Path) -> None:
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert "weights_only" not in message


@pytest.mark.parametrize("kind", KINDS)
def test_load_checkpoint_refuses_in_one_line(kind, tmp_path):
    path = refused_file(kind, tmp_path)
    with pytest.raises(InputError) as err:
        load_checkpoint(path)
    assert_plain_refusal(err, path)
    assert not (tmp_path / "touched").exists()


@pytest.mark.parametrize("kind", KINDS)
def test_encoder_checkpoint_refuses_in_one_line(kind, tmp_path):
    path = refused_file(kind, tmp_path)
    with pytest.raises(InputError) as err:
        build_encoder("unet", checkpoint=path)
    assert_plain_refusal(err, path)
    assert not (tmp_path / "touched").exists()


def train_with_encoder_checkpoint(folder: Path, checkpoint: str) -> subprocess.CompletedProcess:
    """`senolab train` in ``folder`` on a tiny config whose model.checkpoint is ``checkpoint``."""
    (folder / "config.yaml").write_text(
        "data:\n  synthetic: {n_sites: 2, images_per_site: 30, image_size: 64}\n  image_size: 32\n"
        f"model:\n  checkpoint: {checkpoint}\ntrain:\n  epochs: 1\nevaluation:\n  bootstrap: 0\n")
    return subprocess.run([sys.executable, "-m", "senolab.cli", "train", "config.yaml", "--out", "out", "--quiet"],
                          cwd=folder, capture_output=True, text=True, timeout=300)


def test_train_refuses_a_config_pointing_at_a_refused_encoder_checkpoint(tmp_path):
    refused_file("pickles_a_call", tmp_path)
    result = train_with_encoder_checkpoint(tmp_path, "pickles_a_call.pt")
    assert result.returncode == 2, result.stderr[-3000:]
    # (data preparation may print progress and sklearn warnings before it)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [result.stderr.strip().splitlines()[-1]], result.stderr[-3000:]
    assert "pickles_a_call.pt: refused" in errors[0]
    assert "Traceback" not in result.stderr and "weights_only" not in result.stderr
    assert not (tmp_path / "touched").exists()


def test_train_names_a_missing_encoder_checkpoint_in_one_line(tmp_path):
    result = train_with_encoder_checkpoint(tmp_path, "weights/encoder.pt")
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last == "error: weights/encoder.pt: no checkpoint here" and "Traceback" not in result.stderr
