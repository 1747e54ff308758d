"""Checkpoints that store the config and can resume a stopped run.

Only tensors, numbers, strings, lists and dicts are stored, so every load uses
``torch.load(..., weights_only=True)`` and never unpickles arbitrary objects.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch


def save_checkpoint(path: str | Path, **state) -> Path:
    """Write atomically: a run killed while saving keeps its previous checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no checkpoint here")
    return torch.load(path, map_location=map_location, weights_only=True)
