"""A cache of lesion features keyed by content: image bytes, mask bytes, spacing, parameters.

Probing it never decodes an image: a key is a sha256 over the raw bytes of the image and
mask files (or of the arrays of an in-memory cohort), the pixel spacing and the parameter
hash (which covers the pyradiomics version). Renaming or moving files keeps their entries;
changing one mask changes one key. An entry is the outcome for that content, features or
the reason extraction failed (a one-pixel mask fails the same way every time).

Location: ``$SENOLAB_CACHE_DIR/radiomics`` when that variable is set, otherwise
``$XDG_CACHE_HOME/senolab/radiomics`` (``~/.cache/senolab/radiomics``). One entry is one
small JSON file under ``<dir>/<key[:2]>/<key>.json``, written atomically, so concurrent
runs may share a cache and deleting the folder is always safe.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def default_cache_dir() -> Path:
    """Where the cache lives unless told otherwise (see the module docstring)."""
    explicit = os.environ.get("SENOLAB_CACHE_DIR")
    if explicit:
        return Path(explicit) / "radiomics"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "senolab" / "radiomics"


def content_hash(source: str | Path | np.ndarray) -> str:
    """sha256 of a file's bytes, or of an array's dtype, shape and bytes."""
    digest = hashlib.sha256()
    if isinstance(source, np.ndarray):
        array = np.ascontiguousarray(source)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    else:
        digest.update(Path(source).read_bytes())
    return digest.hexdigest()


def lesion_key(image_hash: str, mask_hash: str, spacing_mm: float, params_hash: str) -> str:
    """The cache key of one lesion."""
    # The spacing given to pyradiomics, not whether the cohort knew it: the features
    # depend on the former only.
    return hashlib.sha256(f"{image_hash}|{mask_hash}|{float(spacing_mm)!r}|{params_hash}".encode()).hexdigest()


class FeatureCache:
    """Outcomes of lesion extraction stored by key under ``root``."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored entry (``{"features": {...} | None, "error": str | None}``) or None."""
        try:
            return json.loads(self._path(key).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None  # a damaged entry is recomputed and overwritten

    def put(self, key: str, entry: dict[str, Any]) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: a reader never sees half an entry, even with concurrent runs.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(entry, f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def __len__(self) -> int:
        return sum(1 for _ in self.root.glob("*/*.json")) if self.root.exists() else 0
