"""Cohort sources: readers of datasets in their release layouts, one module each, and
cohorts made in memory (the synthetic generator).

Each reader registers an object with ``name``, ``layout`` (a sentence naming the files it
expects, used in errors), ``detect(root) -> bool`` and ``read(root, strict) -> Cohort``.
Each in-memory source registers a function ``(options) -> Cohort``. A config's cohort
entry is either a source's name or a dataset folder; :func:`open_cohort` tells them apart.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from senolab.cohorts.schema import Cohort, CohortError
from senolab.paths import require_folder
from senolab.registry import Registry

READERS: Registry = Registry("cohort reader")
SOURCES: Registry = Registry("cohort source")


def open_cohort(entry: str, options: Mapping[str, Any], strict: bool = False, progress: bool = True) -> Cohort:
    """The cohort a config entry names: a source's name makes it in memory from
    ``options[name]`` (its config section, e.g. a ``SyntheticConfig`` for ``synthetic``);
    anything else is a dataset folder, read by :func:`read_cohort`."""
    _import_all()
    if entry in SOURCES:
        return SOURCES.build(entry, options[entry], progress=progress)
    return read_cohort(entry, strict=strict, progress=progress)


def read_cohort(root: str | Path, strict: bool = False, reader: str | None = None, progress: bool = True) -> Cohort:
    """Read the dataset at ``root``, detecting which one it is from its layout (``progress``:
    a bar while the images are read)."""
    _import_all()
    root = require_folder(root, "dataset folder")  # a file or a symlink loop is called what it is
    name = reader or detect_layout(root)
    if name is None:
        raise CohortError(f"{root}: not a known dataset layout; expected one of: {expected_layouts()}")
    return READERS.get(name).read(root, strict=strict, progress=progress)


def detect_layout(root: str | Path) -> str | None:
    """The name of the reader that knows the folder's layout, or None (e.g. to pick the
    readable datasets out of a folder that holds others too)."""
    _import_all()
    # a manifest is the user's own description of the folder: it wins over a layout
    # guessed from the files (a class-folder tree with a manifest is not read as BUSI)
    names = sorted(READERS, key=lambda name: name != "manifest")
    return next((name for name in names if READERS.get(name).detect(Path(root))), None)


def expected_layouts() -> str:
    """The known layouts on one line, as the command line prints errors."""
    _import_all()
    return "; ".join(f"{name}: {READERS.get(name).layout}" for name in READERS)


def _import_all() -> None:
    # Importing the modules registers the readers and sources.
    from senolab.cohorts.readers import breast, busbra, busi, cbis_ddsm, manifest, mias, synthetic  # noqa: F401
