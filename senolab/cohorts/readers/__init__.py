"""Readers of real datasets in their official release layouts, one module each.

Each reader registers an object with ``name``, ``layout`` (a sentence naming the files it
expects, used in errors), ``detect(root) -> bool`` and ``read(root, strict) -> Cohort``.
"""
from __future__ import annotations

from pathlib import Path

from senolab.cohorts.schema import Cohort, CohortError
from senolab.registry import Registry

READERS: Registry = Registry("cohort reader")


def read_cohort(root: str | Path, strict: bool = False, reader: str | None = None) -> Cohort:
    """Read the dataset at ``root``, detecting which one it is from its layout."""
    _import_all()
    root = Path(root)
    if not root.is_dir():
        raise CohortError(f"{root}: no such folder. Expected one of:\n{expected_layouts()}")
    if reader is not None:
        return READERS.get(reader).read(root, strict=strict)
    for name in READERS:
        entry = READERS.get(name)
        if entry.detect(root):
            return entry.read(root, strict=strict)
    raise CohortError(f"{root}: not a known dataset layout. Expected one of:\n{expected_layouts()}")


def expected_layouts() -> str:
    _import_all()
    return "\n".join(f"  - {name}: {READERS.get(name).layout}" for name in READERS)


def _import_all() -> None:
    # Importing the modules registers the readers.
    from senolab.cohorts.readers import breast, busbra, busi, synthetic  # noqa: F401
