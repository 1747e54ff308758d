"""Readers of real datasets in their official release layouts, one module each.

Each reader registers an object with ``name``, ``layout`` (a sentence naming the files it
expects, used in errors), ``detect(root) -> bool`` and ``read(root, strict) -> Cohort``.
"""
from __future__ import annotations

from pathlib import Path

from senolab.cohorts.schema import Cohort, CohortError
from senolab.paths import require_folder
from senolab.registry import Registry

READERS: Registry = Registry("cohort reader")


def read_cohort(root: str | Path, strict: bool = False, reader: str | None = None) -> Cohort:
    """Read the dataset at ``root``, detecting which one it is from its layout."""
    _import_all()
    root = require_folder(root, "dataset folder")  # a file or a symlink loop is called what it is
    name = reader or detect_layout(root)
    if name is None:
        raise CohortError(f"{root}: not a known dataset layout; expected one of: {expected_layouts()}")
    return READERS.get(name).read(root, strict=strict)


def detect_layout(root: str | Path) -> str | None:
    """The name of the reader that knows the folder's layout, or None (e.g. to pick the
    readable datasets out of a folder that holds others too)."""
    _import_all()
    return next((name for name in READERS if READERS.get(name).detect(Path(root))), None)


def expected_layouts() -> str:
    """The known layouts on one line, as the command line prints errors."""
    _import_all()
    return "; ".join(f"{name}: {READERS.get(name).layout}" for name in READERS)


def _import_all() -> None:
    # Importing the modules registers the readers.
    from senolab.cohorts.readers import breast, busbra, busi, synthetic  # noqa: F401
