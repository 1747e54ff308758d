"""Checkpoints that store the config and can resume a stopped run, and the one safe way
senolab reads any checkpoint (a run's, or the encoder weights a config points to).

Only tensors, numbers, strings, lists and dicts are stored, so every load uses
``torch.load(..., weights_only=True)`` and never unpickles arbitrary objects.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from senolab.errors import InputError
from senolab.paths import require_file


class CheckpointMissing(InputError, FileNotFoundError):
    """No file where a checkpoint was expected (a config's ``model.checkpoint``, a run's ``best.pt``)."""


def save_checkpoint(path: str | Path, **state) -> Path:
    """Write atomically: a run killed while saving keeps its previous checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu"):
    """The tensors and plain data in the checkpoint at ``path``.

    A missing file is a :class:`CheckpointMissing` (a FileNotFoundError and an InputError);
    anything else that is not such a checkpoint (a folder, an empty or damaged file, one
    that pickles other objects) is an InputError. Either is one line naming the path.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointMissing(f"{path}: no checkpoint here")
    require_file(path, "checkpoint file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the checkpoint file is empty")
    with warnings.catch_warnings(record=True) as caught:
        try:
            loaded = torch.load(path, map_location=map_location, weights_only=True)
        except Exception:
            # torch fails in many ways here (UnpicklingError, RuntimeError, EOFError,
            # KeyError...), and its refusal advises weights_only=False, which would run
            # whatever code the file pickles: the one message below replaces them all.
            raise InputError(f"{path}: refused as a checkpoint: senolab loads only tensors and plain data "
                             "saved with torch.save, and this file is damaged, of another format, or "
                             "pickles other objects") from None
    # torch's warnings about a file it could load still matter; those about one it refused do not
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return loaded
