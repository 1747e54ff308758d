"""Checks on the folders and files a user names, made before any long work starts.

Each check raises :class:`senolab.errors.InputError` with one sentence that names the
path and says what it is (a file where a folder was expected, a symlink loop, a folder
that cannot be written), so the command line can print it and exit 2.
"""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from senolab.errors import InputError


def describe_path(path: str | Path) -> str:
    """What is at ``path``, in words: "a folder", "a file", "a broken symlink", "nothing"..."""
    path = Path(path)
    try:
        if path.is_symlink() and not path.exists():
            try:
                os.stat(path)
            except OSError as err:
                if err.errno == errno.ELOOP:
                    return "a symlink loop"
            return "a broken symlink"
        if path.is_dir():
            return "a folder"
        if path.is_file():
            return "a file"
        if path.exists():
            return "neither a file nor a folder"
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "a symlink loop"
        return f"unreadable ({err.strerror})"
    return "nothing"


def require_folder(path: str | Path, what: str = "folder") -> Path:
    """``path`` as a Path if it is an existing folder, else an InputError saying what it is."""
    return _require(path, "a folder", what)


def require_file(path: str | Path, what: str = "file") -> Path:
    """``path`` as a Path if it is an existing regular file, else an InputError saying what it is."""
    return _require(path, "a file", what)


def _require(path: str | Path, kind: str, what: str) -> Path:
    path = Path(path)
    found = describe_path(path)
    if found != kind:
        raise InputError(f"{path}: expected a {what}, found {found}")
    return path


def writable_folder(path: str | Path, what: str = "output folder") -> Path:
    """Create ``path`` (and its parents) if needed and prove it can be written, by writing
    and removing a small file there. Raises InputError naming the path otherwise."""
    path = Path(path)
    found = describe_path(path)
    if found not in ("a folder", "nothing"):
        raise InputError(f"{path}: the {what} is {found}, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".senolab-write-check-"):
            pass
    except OSError as err:
        raise InputError(f"{path}: the {what} cannot be written ({err.strerror or err})") from None
    return path


def inside(root: str | Path, relative: str | Path, what: str = "path") -> Path:
    """``root / relative``, refusing a path that leaves ``root`` (``../..`` or an absolute
    path): dataset tables must not reach files elsewhere on the machine. The check is on
    the written path, not on where symlinks lead, so a dataset whose files are symlinks
    (git-annex, a shared store) still reads."""
    normal = os.path.normpath(str(relative))
    if os.path.isabs(normal) or normal == ".." or normal.startswith(".." + os.sep):
        raise InputError(f"{what} {str(relative)!r} leaves the dataset folder {root}")
    return Path(root) / normal
