"""A cache of lesion features keyed by content: image bytes, mask bytes, spacing, parameters.

Probing it never decodes an image: a key is a sha256 over the raw bytes of the image and
mask files (or of the arrays of an in-memory cohort), the pixel spacing and the parameter
hash (which covers the pyradiomics version). Renaming or moving files keeps their entries;
changing one mask changes one key. An entry is the outcome for that content, features or
the reason extraction failed (a one-pixel mask fails the same way every time).

An entry is ``{"format", "key", "features", "error", "checksum"}``: exactly one of
``features`` (a mapping of feature names to numbers) and ``error`` (a reason) is set, and
``checksum`` is a sha256 over the rest, the key included, so an entry is tied both to its
content and to what it was computed from. An entry that does not validate (damaged,
emptied, edited by hand, copied under another key, or written by an older format) is a
miss: it is recomputed and overwritten, and :attr:`FeatureCache.invalid` counts it so the
user is told.

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


# Bumped when the layout of an entry changes: entries of another format are recomputed.
ENTRY_FORMAT = 2
ENTRY_FIELDS = frozenset({"format", "key", "features", "error", "checksum"})


def lesion_key(image_hash: str, mask_hash: str, spacing_mm: float, params_hash: str) -> str:
    """The cache key of one lesion."""
    # The spacing given to pyradiomics, not whether the cohort knew it: the features
    # depend on the former only.
    return hashlib.sha256(f"{image_hash}|{mask_hash}|{float(spacing_mm)!r}|{params_hash}".encode()).hexdigest()


def make_entry(key: str, features: dict[str, float] | None, error: str | None) -> dict[str, Any]:
    """The entry stored for one lesion's outcome, with its checksum."""
    body = {"format": ENTRY_FORMAT, "key": key, "features": features, "error": error}
    return {**body, "checksum": _checksum(body)}


def is_valid_entry(entry: Any, key: str) -> bool:
    """Whether ``entry`` has the entry schema, one outcome, belongs to ``key`` and matches its checksum."""
    if not isinstance(entry, dict) or set(entry) != ENTRY_FIELDS:
        return False
    body = {name: value for name, value in entry.items() if name != "checksum"}
    return (
        entry["format"] == ENTRY_FORMAT
        and entry["key"] == key
        and _is_one_outcome(entry["features"], entry["error"])
        and entry["checksum"] == _checksum(body)
    )


def _is_one_outcome(features: Any, error: Any) -> bool:
    # Features without an error, or a reason without features: never both, never neither
    # (an entry of nulls would otherwise read as a success with no feature at all).
    if error is None:
        return (
            isinstance(features, dict)
            and bool(features)
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in features.values())
        )
    return features is None and isinstance(error, str) and bool(error)


def _checksum(body: dict[str, Any]) -> str:
    # Canonical JSON: floats are written by repr (exact round trip), NaN as NaN.
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class FeatureCache:
    """Outcomes of lesion extraction stored by key under ``root``.

    ``invalid`` counts the lookups :meth:`get` found an entry for but rejected (see the module doc).
    """

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.invalid = 0

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The valid entry stored under ``key`` (see :func:`make_entry`), else None."""
        try:
            entry = json.loads(self._path(key).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            entry = None  # unreadable or not JSON: invalid like any other bad entry
        if is_valid_entry(entry, key):
            return entry
        self.invalid += 1  # a miss: the caller recomputes the lesion and put() overwrites this
        return None

    def put(self, key: str, features: dict[str, float] | None, error: str | None) -> None:
        """Store the outcome of the lesion of ``key``: its features, or the reason it failed."""
        entry = make_entry(key, features, error)
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
