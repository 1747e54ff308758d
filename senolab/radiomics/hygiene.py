"""Feature hygiene before fusion: fitted on the training cases, applied to every case.

Steps share one scikit-learn-like interface on DataFrames (rows = lesions or cases,
columns = features): ``fit(X, sites=None, covariates=None)`` then ``transform(X,
sites=None)``. ``sites`` is only used by site-aware steps (ComBat); ``covariates`` only
at fit time (ComBat's biology to preserve). Steps are registered in :data:`HYGIENE` and a
pipeline is built from names, as a config names them::

    build_pipeline(["drop_incomplete", "drop_constant", {"drop_correlated": {"threshold": 0.9}},
                    "combat", "standardise"])

Missing values are not imputed: select the ``ok`` rows of a feature table
(:func:`senolab.radiomics.table.ok_features`) and start with ``drop_incomplete``; the
other steps refuse non-finite values with an error naming the features.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from senolab.registry import Registry

HYGIENE: Registry = Registry("feature hygiene step")


class FeatureStep:
    """Base of a hygiene step: ``fit`` on training rows, ``transform`` any rows."""

    def fit(self, X: pd.DataFrame, sites=None, covariates: pd.DataFrame | None = None) -> "FeatureStep":
        raise NotImplementedError

    def transform(self, X: pd.DataFrame, sites=None) -> pd.DataFrame:
        raise NotImplementedError

    def fit_transform(self, X: pd.DataFrame, sites=None, covariates: pd.DataFrame | None = None) -> pd.DataFrame:
        return self.fit(X, sites, covariates).transform(X, sites)


class ColumnSelector(FeatureStep):
    """A step that keeps a subset of the columns it was fitted on (``columns_``)."""

    def transform(self, X: pd.DataFrame, sites=None) -> pd.DataFrame:
        if not hasattr(self, "columns_"):
            raise ValueError(f"{type(self).__name__}.transform called before fit")
        missing = [c for c in self.columns_ if c not in X.columns]
        if missing:
            raise KeyError(f"{type(self).__name__}.transform: columns {missing[:5]} were fitted but are absent")
        return X[self.columns_]


@HYGIENE.register("drop_incomplete")
class DropIncomplete(ColumnSelector):
    """Drop features missing or infinite on any training row (pyradiomics yields NaN for
    a feature it cannot compute on a lesion, e.g. a texture of a one-grey-level region)."""

    def fit(self, X, sites=None, covariates=None) -> "DropIncomplete":
        if not isinstance(X, pd.DataFrame):
            raise TypeError(f"DropIncomplete.fit: expected a pandas DataFrame, got {type(X).__name__}")
        complete = np.isfinite(X.to_numpy(dtype=np.float64)).all(0)
        self.columns_ = X.columns[complete].tolist()
        self.dropped_ = X.columns[~complete].tolist()
        return self


@HYGIENE.register("drop_constant")
class DropConstant(ColumnSelector):
    """Drop features that do not vary on the training rows (std <= ``tolerance`` x scale)."""

    def __init__(self, tolerance: float = 1e-8):
        self.tolerance = tolerance

    def fit(self, X, sites=None, covariates=None) -> "DropConstant":
        values, columns = as_matrix(X, "DropConstant.fit")
        scale = np.maximum(1.0, np.abs(values).max(0))
        varies = values.std(0) > self.tolerance * scale
        self.columns_ = [c for c, keep in zip(columns, varies) if keep]
        self.dropped_ = [c for c, keep in zip(columns, varies) if not keep]
        return self


@HYGIENE.register("drop_correlated")
class DropCorrelated(ColumnSelector):
    """Drop near-duplicates: a feature whose |Pearson r| with an already kept one exceeds
    ``threshold`` on the training rows. Columns are visited in their order (pyradiomics'
    order), so the first of a correlated group is kept.
    """

    def __init__(self, threshold: float = 0.95):
        if not 0 < threshold <= 1:
            raise ValueError(f"drop_correlated: threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold

    def fit(self, X, sites=None, covariates=None) -> "DropCorrelated":
        values, columns = as_matrix(X, "DropCorrelated.fit")
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = np.abs(np.corrcoef(values, rowvar=False))
        corr = np.nan_to_num(np.atleast_2d(corr), nan=0.0)  # a constant column correlates with nothing
        kept: list[int] = []
        for j in range(len(columns)):
            if not kept or corr[j, kept].max() <= self.threshold:
                kept.append(j)
        self.columns_ = [columns[j] for j in kept]
        self.dropped_ = [c for c in columns if c not in set(self.columns_)]
        return self


@HYGIENE.register("standardise")
class Standardise(FeatureStep):
    """z-scores with the training mean and standard deviation (1 where it is 0)."""

    def fit(self, X, sites=None, covariates=None) -> "Standardise":
        values, self.columns_ = as_matrix(X, "Standardise.fit")
        self.mean_ = values.mean(0)
        std = values.std(0)
        self.scale_ = np.where(std > 0, std, 1.0)
        return self

    def transform(self, X, sites=None) -> pd.DataFrame:
        if not hasattr(self, "mean_"):
            raise ValueError("Standardise.transform called before fit")
        values, _ = as_matrix(X, "Standardise.transform", self.columns_)
        return pd.DataFrame((values - self.mean_) / self.scale_, index=X.index, columns=self.columns_)


class FeaturePipeline(FeatureStep):
    """Steps applied in order; each is fitted on the output of the previous ones."""

    def __init__(self, steps: Sequence[FeatureStep]):
        self.steps = list(steps)

    def fit(self, X, sites=None, covariates=None) -> "FeaturePipeline":
        for step in self.steps:
            X = step.fit_transform(X, sites, covariates)
        return self

    def transform(self, X, sites=None) -> pd.DataFrame:
        for step in self.steps:
            X = step.transform(X, sites)
        return X


def build_pipeline(spec: Sequence[str | dict[str, dict[str, Any]]]) -> FeaturePipeline:
    """A pipeline from step names, or ``{name: {option: value}}`` for options."""
    steps = []
    for item in spec:
        if isinstance(item, str):
            steps.append(HYGIENE.build(item))
        elif isinstance(item, dict) and len(item) == 1:
            (name, options), = item.items()
            steps.append(HYGIENE.build(name, **(options or {})))
        else:
            raise ValueError(f"hygiene step {item!r}: expected a name or {{name: {{options}}}}")
    return FeaturePipeline(steps)


def as_matrix(X: pd.DataFrame, where: str, columns: Sequence[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """``X`` (restricted to ``columns`` when given) as a finite float matrix, or a clear error."""
    if not isinstance(X, pd.DataFrame):
        raise TypeError(f"{where}: expected a pandas DataFrame of features, got {type(X).__name__}")
    if columns is not None:
        missing = [c for c in columns if c not in X.columns]
        if missing:
            raise KeyError(f"{where}: columns {missing[:5]} were fitted but are absent")
        X = X[list(columns)]
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{where}: no rows or no feature columns (shape {X.shape})")
    values = X.to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values).all(0)
    if bad.any():
        names = X.columns[bad].tolist()
        raise ValueError(
            f"{where}: features {names[:5]}{'...' if len(names) > 5 else ''} have missing or infinite values; "
            "use the ok rows of the feature table and drop features that pyradiomics could not compute"
        )
    return values, list(X.columns)
