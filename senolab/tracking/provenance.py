"""Where a run came from: the code's git commit and a fingerprint of the data."""
from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pandas as pd

PACKAGE_DIR = Path(__file__).resolve().parents[1]


def git_commit(path: str | Path = PACKAGE_DIR) -> str:
    """The commit checked out at ``path`` (senolab's own tree by default), ``+dirty`` when
    tracked files have uncommitted changes; ``unknown`` outside a git work tree."""
    try:
        commit = _git(path, "rev-parse", "HEAD")
        dirty = _git(path, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}+dirty" if dirty else commit


def _git(path: str | Path, *args: str) -> str:
    result = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, check=True, timeout=30)
    return result.stdout.strip()


def table_fingerprint(table: pd.DataFrame) -> str:
    """A short content hash of a case table, independent of row and column order.

    Two studies with the same fingerprint saw the same cases with the same metadata
    (image files are identified by their paths in the table, not their pixels).
    """
    ordered = table.reindex(sorted(table.columns, key=str), axis=1)
    # str() per cell: under pandas 3 astype(str) leaves NaN and list cells as non-strings
    text = ordered.map(str).apply(lambda row: "\x1f".join(row), axis=1)
    digest = hashlib.sha256("\x1e".join(sorted(text)).encode()).hexdigest()
    return digest[:16]


def part_datasets(table: pd.DataFrame, parts: pd.Series, source: str) -> list[dict]:
    """What MLflow's Dataset column shows for a run: one entry per split part (its role:
    train, val, test...), named after the cohorts and sites in it, with the fingerprint of
    its rows and where the cohort came from."""
    entries = []
    for role in sorted(parts.unique()):
        rows = table[table["case_id"].isin(parts.index[parts == role])]
        if rows.empty:
            continue
        cohorts = "+".join(sorted(rows["cohort"].astype(str).unique()))
        sites = "+".join(sorted(rows["site"].astype(str).unique()))
        entries.append({"name": f"{cohorts} ({sites})", "digest": table_fingerprint(rows), "source": source,
                        "context": str(role), "n_cases": int(len(rows))})
    return entries
