"""Leakage-free splits: patient-level stratified k-fold, official folds, leave-one-site-out.

Every split groups cases by *split group*: the union of a patient's images and their
near-duplicates (a duplicate of patient A's image found under patient B ties A and B).
A split is written to a file so a study can be reproduced exactly, and
:func:`check_leakage` raises when a patient or duplicate group straddles train and test.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from senolab.cohorts.schema import Cohort, LeakageError


def split_groups(table: pd.DataFrame) -> pd.Series:
    """A group id per case: connected components of 'same patient' and 'duplicate of'."""
    keys = ["patient_id"] + (["duplicate_group"] if "duplicate_group" in table.columns else [])
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for _, row in table[keys].iterrows():
        nodes = [f"{k}:{row[k]}" for k in keys]
        for other in nodes[1:]:
            a, b = find(nodes[0]), find(other)
            if a != b:
                parent[b] = a
    return pd.Series([find(f"patient_id:{p}") for p in table["patient_id"]], index=table.index, name="split_group")


def patient_kfold(table: pd.DataFrame, k: int = 5, seed: int = 0, stratify: str = "label") -> pd.Series:
    """Test fold (0..k-1) per case; stratified by ``stratify``, grouped by split group."""
    groups = split_groups(table)
    if groups.nunique() < k:
        raise ValueError(f"{k}-fold split needs at least {k} patients; the table has {groups.nunique()}")
    folds = np.full(len(table), -1)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    for fold, (_, test) in enumerate(splitter.split(np.zeros(len(table)), table[stratify].astype(str), groups)):
        folds[test] = fold
    return pd.Series(folds, index=table["case_id"].values, name="fold")


def holdout(table: pd.DataFrame, test_fraction: float = 0.2, seed: int = 0, stratify: str = "label") -> pd.Series:
    """'train' / 'test' per case, patient- and duplicate-disjoint (one fold of ~1/fraction)."""
    k = max(2, int(round(1.0 / test_fraction)))
    folds = patient_kfold(table, k=k, seed=seed, stratify=stratify)
    return folds.map(lambda f: "test" if f == 0 else "train").rename("part")


def leave_one_site_out(table: pd.DataFrame) -> dict[str, pd.Series]:
    """For each site: 'train' for every other site's cases, 'test' for its own."""
    return {
        site: pd.Series(np.where(table["site"] == site, "test", "train"), index=table["case_id"].values, name="part")
        for site in sorted(table["site"].unique())
    }


def check_leakage(table: pd.DataFrame, train_ids, test_ids) -> None:
    """Raise LeakageError when a patient or duplicate group is on both sides."""
    by_id = table.set_index("case_id")
    train, test = by_id.loc[list(train_ids)], by_id.loc[list(test_ids)]
    for column in ("patient_id", "duplicate_group"):
        if column not in by_id.columns:
            continue
        shared = sorted(set(train[column]) & set(test[column]))
        if shared:
            raise LeakageError(f"{len(shared)} value(s) of {column} are in both train and test, e.g. {shared[:3]}")


def check_folds(table: pd.DataFrame, folds: pd.Series) -> None:
    """Every fold against the rest: no patient or duplicate group may straddle two folds."""
    for fold in sorted(folds.unique()):
        check_leakage(table, folds.index[folds != fold], folds.index[folds == fold])


def write_split(path: str | Path, assignment: pd.Series, meta: dict | None = None) -> Path:
    """A split file: JSON with how it was made and the assignment of every case."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta or {}, "name": assignment.name, "assignment": {str(k): _plain(v) for k, v in assignment.items()}}
    path.write_text(json.dumps(payload, indent=1, sort_keys=True))
    return path


def read_split(path: str | Path) -> pd.Series:
    payload = json.loads(Path(path).read_text())
    return pd.Series(payload["assignment"], name=payload.get("name"))


def official_folds(cohort: Cohort, name: str) -> pd.Series:
    """A dataset's own folds (e.g. BUS-BRA's ``official_5fold``), checked for leakage."""
    if name not in cohort.splits:
        raise KeyError(f"{cohort.name} has no split {name!r}; it has {sorted(cohort.splits) or 'none'}")
    folds = cohort.splits[name]
    check_folds(cohort.table[cohort.table["case_id"].isin(folds.index)], folds)
    return folds


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value
