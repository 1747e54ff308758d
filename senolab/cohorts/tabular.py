"""Clinical metadata as model inputs, driven by the cohort's declared column types.

scikit-learn style: ``fit`` on the training cases only (numeric means and spreads),
``transform`` any cases into the batch arrays of docs/contracts.md#batch:

- ``meta_num`` (N, Fn) float with ``meta_num_missing`` (N, Fn) bool: numeric columns
  (standardised), ordinal columns (rank scaled to [0, 1]) and multi-valued columns (one
  0/1 indicator per level);
- ``meta_cat`` (N, Fc) long: categorical columns as 1..L, 0 for missing or unseen.

``fields`` says which slice of ``meta_num`` or which column of ``meta_cat`` belongs to
which clinical field, so a fusion model can make one token per field and an explainer one
group per field. Outcome columns (BI-RADS, histology, diagnosis, ...) are refused unless
opted in by name.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from senolab.cohorts.schema import Column, Kind, is_present


class OutcomeInputError(ValueError):
    """An outcome column was requested as a model input without an explicit opt-in."""


@dataclass(frozen=True)
class FieldSpec:
    name: str
    kind: Kind
    levels: tuple[str, ...]
    num_slice: tuple[int, int] | None = None  # columns of meta_num
    cat_index: int | None = None  # column of meta_cat (values 1..len(levels), 0 missing)


def select_inputs(columns: dict[str, Column], requested: list[str] | None = None, opt_in=()) -> list[str]:
    """The metadata columns a model may use; outcome columns only when opted in by name."""
    opt_in = set(opt_in)
    names = list(columns) if requested is None else list(requested)
    unknown = [n for n in names if n not in columns]
    if unknown:
        raise KeyError(f"unknown metadata columns {unknown}; known: {sorted(columns)}")
    leaking = [n for n in names if columns[n].outcome and n not in opt_in]
    if requested is None:
        return [n for n in names if n not in leaking]
    if leaking:
        raise OutcomeInputError(
            f"{leaking} encode the outcome (BI-RADS, histology, diagnosis, ...) and are not model "
            f"inputs unless opted in by name (opt_in: {leaking})"
        )
    return names


class MetadataEncoder:
    def __init__(self, columns: dict[str, Column], inputs: list[str] | None = None, opt_in=()):
        self.inputs = select_inputs(columns, inputs, opt_in)
        self.opted_in = sorted(set(opt_in) & set(self.inputs))
        self.columns = {n: columns[n] for n in self.inputs}
        self.fields: list[FieldSpec] = []
        n_num = n_cat = 0
        for col in self.columns.values():
            if col.kind is Kind.CATEGORICAL:
                self.fields.append(FieldSpec(col.name, col.kind, col.levels, cat_index=n_cat))
                n_cat += 1
            else:
                width = len(col.levels) if col.kind is Kind.MULTI else 1
                self.fields.append(FieldSpec(col.name, col.kind, col.levels, num_slice=(n_num, n_num + width)))
                n_num += width
        self.n_num, self.n_cat = n_num, n_cat
        self.mean_ = np.zeros(n_num)
        self.scale_ = np.ones(n_num)

    def fit(self, table: pd.DataFrame) -> "MetadataEncoder":
        """Standardisation of numeric fields from these (training) cases only."""
        num, missing, _ = self._raw(table)
        for field in self.fields:
            if field.kind is Kind.NUMERIC:
                i = field.num_slice[0]
                present = num[~missing[:, i], i]
                if len(present):
                    self.mean_[i] = present.mean()
                    self.scale_[i] = present.std() or 1.0
        return self

    def transform(self, table: pd.DataFrame) -> dict[str, np.ndarray]:
        num, missing, cat = self._raw(table)
        num = (num - self.mean_) / self.scale_
        num[missing] = 0.0  # a placeholder only: models mask missing features out
        return {"meta_num": num.astype(np.float32), "meta_num_missing": missing, "meta_cat": cat}

    def fit_transform(self, table: pd.DataFrame) -> dict[str, np.ndarray]:
        return self.fit(table).transform(table)

    def _raw(self, table: pd.DataFrame):
        n = len(table)
        num = np.zeros((n, self.n_num))
        missing = np.ones((n, self.n_num), dtype=bool)
        cat = np.zeros((n, self.n_cat), dtype=np.int64)
        for field in self.fields:
            values = table[field.name] if field.name in table.columns else pd.Series([None] * n)
            if field.kind is Kind.CATEGORICAL:
                index = {level: i + 1 for i, level in enumerate(field.levels)}
                cat[:, field.cat_index] = [index.get(str(v), 0) if is_present(v) else 0 for v in values]
                continue
            lo, hi = field.num_slice
            for row, value in enumerate(values):
                if not is_present(value) or (field.kind is Kind.ORDINAL and str(value) not in field.levels):
                    continue
                missing[row, lo:hi] = False
                num[row, lo:hi] = _encode_value(value, field)
        return num, missing, cat


def _encode_value(value, field: FieldSpec) -> np.ndarray | float:
    if field.kind is Kind.NUMERIC:
        return float(value)
    if field.kind is Kind.ORDINAL:
        return field.levels.index(str(value)) / max(1, len(field.levels) - 1)
    items = set(value)
    return np.array([1.0 if level in items else 0.0 for level in field.levels])
