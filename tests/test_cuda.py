"""CUDA training in float32, bf16-mixed and 16-mixed: one short training each on the GPU.

Skipped, with the reason, on a machine without a CUDA GPU (the CPU paths are tested in
tests/test_distributed.py: bf16-mixed trains on CPU, 16-mixed is refused there).

Each precision trains the same tiny model from the same seed for 2 epochs; the losses must
be finite, and bf16-mixed's first-epoch loss within 5% (relative) of float32's: bfloat16
keeps 8 bits of mantissa, so the forward pass differs by about 1% per layer, and the
first epoch's loss averages over steps taken from the same starting weights. 16-mixed
keeps 11 bits and a loss scale, and is held to the same bound.
"""
from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from senolab.checkpoint import load_checkpoint
from senolab.engine.config import parse_config
from senolab.engine.data import prepare
from senolab.engine.trainer import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU: the CUDA and mixed-precision "
                                "paths are exercised on a machine with one")

TINY = {
    "data": {"cohorts": ["synthetic"], "synthetic": {"n_sites": 2, "images_per_site": 24, "image_size": 64},
             "image_size": 32, "augment": False, "split": {"kind": "holdout", "test_fraction": 0.25, "seed": 0}},
    "model": {"encoder_options": {"widths": [8, 16]}, "heads": {"classification": True, "segmentation": True,
                                                                "bbox": False}},
    "train": {"epochs": 2, "batch_size": 8, "device": "cuda"},
}


@pytest.fixture(scope="module")
def first_epoch_losses(tmp_path_factory):
    root = tmp_path_factory.mktemp("cuda")
    data = prepare(parse_config(TINY).data, progress=False)
    losses = {}
    for precision in ("32", "bf16-mixed", "16-mixed"):
        config = parse_config({**TINY, "train": {**TINY["train"], "precision": precision}})
        trainer = Trainer(config, data, root / precision)
        assert trainer.device.type == "cuda"
        trainer.fit(progress=False)
        history = pd.read_csv(root / precision / "history.csv")
        assert all(math.isfinite(v) for v in history["loss"]), (precision, history["loss"].tolist())
        losses[precision] = history["loss"].iloc[0]
    return losses


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_follows_float32(first_epoch_losses, precision):
    assert first_epoch_losses[precision] == pytest.approx(first_epoch_losses["32"], rel=0.05)


def test_sixteen_bit_runs_keep_their_loss_scale(tmp_path):
    config = parse_config({**TINY, "train": {**TINY["train"], "precision": "16-mixed", "epochs": 1}})
    trainer = Trainer(config, prepare(config.data, progress=False), tmp_path)
    trainer.fit(progress=False)
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["scaler"]["scale"] > 0  # resumed runs start from the scale reached
