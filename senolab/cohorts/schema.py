"""The cohort table: one row per image, the columns every part of senolab relies on.

A :class:`Cohort` holds that table, the declared type of each metadata column, the
official splits a dataset ships with, and the problems met while reading it (every
skipped case is counted with its file and reason: nothing is dropped silently).
:func:`validate_table` checks the contract written up in docs/contracts.md#case-table.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from senolab.errors import InputError

LABELS: tuple[str, ...] = ("normal", "benign", "malignant")

# Columns present in every cohort table (docs/contracts.md#case-table).
CORE_COLUMNS: tuple[str, ...] = (
    "case_id",  # unique in a study, prefixed by cohort: "busi/benign (1)"
    "patient_id",  # prefixed by cohort too, so two cohorts never share a patient by accident
    "cohort",
    "site",
    "scanner",
    "modality",  # one of MODALITIES: "US", "MG", "MR"
    "image_path",  # str, or None for an in-memory cohort (see Cohort.arrays)
    "mask_paths",  # list[str], one per lesion; [] for an image without lesion
    "other_mask_paths",  # list[str]: other findings (BrEaST `_other`), never lesion targets
    "label",  # one of LABELS
    "pixel_spacing_mm",  # float, NaN when unknown; in the stored image's pixel grid
    "width",
    "height",
    "mask_kind",  # one of MASK_KINDS: how the lesions' location is known
    "lesion_bboxes",  # list of [x0, y0, x1, y1] per lesion in stored pixels
)

MODALITIES: tuple[str, ...] = ("US", "MG", "MR")  # DICOM's codes: ultrasound, mammography, MRI

# How a case's lesions are located, which decides what it can teach and how it is scored:
# - "outline": drawn masks (mask files, or arrays in memory); boxes derived from them;
# - "circle": approximate circles (mini-MIAS); the mask is the disc inscribed in each box,
#   a segmentation target of sorts, but its Dice is reported apart ("dice_vs_circle");
# - "box": boxes only (a manifest's box column): a box target, no segmentation target;
# - "none": the image is abnormal but its lesion is not located (mini-MIAS's spread
#   calcifications): a class label only.
# An image without lesion takes its cohort's kind: an empty outline is a true "no lesion here".
MASK_KINDS: tuple[str, ...] = ("outline", "circle", "box", "none")
SEGMENTABLE: frozenset[str] = frozenset({"outline", "circle"})


class Kind(str, Enum):
    """How a metadata column is typed and, later, encoded as a model input."""

    NUMERIC = "numeric"  # float, NaN when missing
    CATEGORICAL = "categorical"  # one of `levels`, None when missing
    ORDINAL = "ordinal"  # one of `levels` in their order, None when missing
    MULTI = "multi"  # a set of `levels` (stored as a sorted list), None when missing


@dataclass(frozen=True)
class Column:
    """A declared metadata column.

    ``outcome`` marks columns that encode the answer (BI-RADS, histology, diagnosis,
    pathology, verification, interpretation): they stay in the table for analysis but are
    never model inputs unless a config opts in by name.
    """

    name: str
    kind: Kind
    levels: tuple[str, ...] = ()
    outcome: bool = False
    description: str = ""


class CohortError(InputError):
    """A cohort cannot be read: wrong layout, or a bad case under ``strict``."""


class LeakageError(Exception):
    """A patient or a duplicate group stands on both sides of a split."""


@dataclass(frozen=True)
class Problem:
    """A case that was skipped, or a finding worth reporting, with its file and reason."""

    cohort: str
    file: str
    reason: str

    def __str__(self) -> str:
        return f"{self.cohort}: {self.file}: {self.reason}"


@dataclass
class Cohort:
    """A cohort table plus what is known about its columns.

    ``splits`` maps a split name (e.g. ``"official_5fold"``) to a Series indexed by
    ``case_id`` giving each case's test fold. ``arrays`` holds pixels for cohorts kept in
    memory (the synthetic generator): ``case_id -> (image uint8 HxW, [lesion masks bool])``.
    """

    name: str
    table: pd.DataFrame
    columns: dict[str, Column] = field(default_factory=dict)
    splits: dict[str, pd.Series] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    root: Path | None = None
    arrays: dict[str, tuple[np.ndarray, list[np.ndarray]]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.table)

    def metadata_columns(self, include_outcomes: bool = False) -> list[str]:
        return [c.name for c in self.columns.values() if include_outcomes or not c.outcome]

    def outcome_columns(self) -> list[str]:
        return [c.name for c in self.columns.values() if c.outcome]

    def model_inputs(self, opt_in: Iterable[str] = ()) -> list[str]:
        """Metadata columns a model may use: non-outcome ones plus outcomes opted in by name."""
        opt_in = list(opt_in)
        unknown = [n for n in opt_in if n not in self.columns]
        if unknown:
            raise KeyError(f"opt-in names unknown columns {unknown}; known: {sorted(self.columns)}")
        return [c.name for c in self.columns.values() if not c.outcome or c.name in opt_in]

    def validate(self) -> "Cohort":
        validate_table(self.table, self.columns)
        return self


def is_present(value) -> bool:
    """False for None and NaN (a missing metadata value), True otherwise."""
    if value is None:
        return False
    if isinstance(value, float):
        return not np.isnan(value)
    return True


def validate_table(table: pd.DataFrame, columns: dict[str, Column]) -> None:
    """Raise CohortError naming the column and what was expected."""
    missing = [c for c in CORE_COLUMNS if c not in table.columns]
    if missing:
        raise CohortError(f"cohort table lacks core columns {missing}")
    if table["case_id"].duplicated().any():
        dup = table.loc[table["case_id"].duplicated(), "case_id"].tolist()[:5]
        raise CohortError(f"case_id must be unique; repeated: {dup}")
    for column, allowed in (("label", LABELS), ("modality", MODALITIES), ("mask_kind", MASK_KINDS)):
        bad = sorted(set(table[column]) - set(allowed))
        if bad:
            raise CohortError(f"column {column!r}: unknown values {bad}; expected one of {allowed}")
    for col in columns.values():
        if col.name not in table.columns:
            raise CohortError(f"declared metadata column {col.name!r} is not in the table")
        _validate_column(table[col.name], col)


def _validate_column(values: pd.Series, col: Column) -> None:
    if col.kind is Kind.NUMERIC:
        if not pd.api.types.is_numeric_dtype(values):
            raise CohortError(f"column {col.name!r}: expected numeric, got {values.dtype}")
        return
    present = values.dropna()
    if col.kind is Kind.MULTI:
        seen = {v for items in present for v in items}
    else:
        seen = set(present.astype(str))
    unknown = sorted(seen - set(col.levels))
    if col.levels and unknown:
        raise CohortError(f"column {col.name!r}: values {unknown} not among levels {col.levels}")


def combine(cohorts: Sequence[Cohort], name: str = "study") -> Cohort:
    """Stack cohorts into one table; metadata columns absent from a cohort become missing."""
    columns: dict[str, Column] = {}
    for cohort in cohorts:
        for col in cohort.columns.values():
            if col.name in columns and columns[col.name] != col:
                columns[col.name] = _merge_columns(columns[col.name], col)
            else:
                columns.setdefault(col.name, col)
    tables = []
    for cohort in cohorts:
        t = cohort.table.copy()
        for col in columns.values():
            if col.name not in t.columns:
                t[col.name] = np.nan if col.kind is Kind.NUMERIC else None
        tables.append(t)
    table = pd.concat(tables, ignore_index=True)
    splits = {f"{c.name}:{k}": v for c in cohorts for k, v in c.splits.items()}
    arrays = {k: v for c in cohorts for k, v in c.arrays.items()}
    problems = [p for c in cohorts for p in c.problems]
    return Cohort(name, table, columns, splits, problems, None, arrays).validate()


def _merge_columns(a: Column, b: Column) -> Column:
    if a.kind is not b.kind:
        raise CohortError(f"column {a.name!r} is {a.kind.value} in one cohort, {b.kind.value} in another")
    levels = tuple(dict.fromkeys(a.levels + b.levels))
    return Column(a.name, a.kind, levels, a.outcome or b.outcome, a.description or b.description)
