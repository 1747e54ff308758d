"""ComBat harmonisation of features across sites, fitted on training cases only.

The location/scale model of Johnson, Li & Rabinovic (Biostatistics 2007), as applied to
multicentre imaging features by Fortin et al. (NeuroImage 2017, neuroCombat) and to
radiomics by Orlhac et al. (J Nucl Med 2018). For feature ``g``, case ``j`` of site ``i``:

    y_ijg = alpha_g + x_ij' beta_g + gamma_ig + delta_ig * eps_ijg

``alpha_g`` is the mean, ``x_ij`` biological covariates to preserve (e.g. the label),
``gamma_ig`` and ``delta_ig`` the additive and multiplicative site effects. Site effects
are estimated on standardised features and shrunk towards a prior shared by all features
of a site (parametric empirical Bayes: normal prior on ``gamma``, inverse-gamma on
``delta^2``), which keeps small sites from being over-corrected.

What differs from the batch-correct-everything use of neuroCombat, and why:
- ``fit`` sees the training cases only (with their covariates); ``transform`` needs only
  the site, as in neuroCombat's ``neuroCombatFromTraining``: the labels of test cases are
  unknown and must not be used. Training and test cases go through the same
  ``transform``, so a model sees features made the same way on both.
- Covariate columns are centred on the training cases, so ``alpha_g`` is the mean of the
  training cases and harmonised features keep their usual scale.
- Features with no residual variance pass through unchanged.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from senolab.radiomics.hygiene import HYGIENE, FeatureStep, as_matrix


class ComBatError(ValueError):
    """Inputs ComBat cannot harmonise (missing values, a site too small, unknown site...)."""


@HYGIENE.register("combat")
class ComBat(FeatureStep):
    """ComBat with empirical Bayes, scikit-learn style: ``fit`` on train, ``transform`` any.

    ``empirical_bayes=False`` gives the plain location/scale adjustment (no shrinkage).
    ``covariates`` passed to :meth:`fit` (a DataFrame aligned with ``X``; text columns are
    one-hot encoded) are preserved: their effect is estimated jointly with the site effect
    and not removed.
    """

    def __init__(self, empirical_bayes: bool = True, tolerance: float = 1e-4, max_iterations: int = 1000):
        self.empirical_bayes = empirical_bayes
        self.tolerance = tolerance
        self.max_iterations = max_iterations

    def fit(self, X: pd.DataFrame, sites=None, covariates: pd.DataFrame | None = None) -> "ComBat":
        Y, columns = as_matrix(X, "ComBat.fit")
        site_codes, self.sites_ = _site_codes(sites, len(Y))
        _check_site_sizes(site_codes, self.sites_)
        batch = np.eye(len(self.sites_))[site_codes]
        design = np.hstack([batch, _covariate_design(covariates, X.index)])
        if np.linalg.matrix_rank(design) < design.shape[1]:
            raise ComBatError(
                "ComBat.fit: a covariate is constant within every site (or constant overall): its "
                "effect cannot be told apart from the site effect"
            )
        beta, *_ = np.linalg.lstsq(design, Y, rcond=None)
        weights = batch.sum(0) / len(Y)
        self.columns_ = columns
        self.grand_mean_ = weights @ beta[: len(self.sites_)]
        residual = Y - design @ beta
        self.var_pooled_ = (residual**2).mean(0)
        self.adjusted_ = self.var_pooled_ > 1e-12 * np.maximum(1.0, self.grand_mean_**2)
        covariate_effect = design[:, len(self.sites_):] @ beta[len(self.sites_):]
        z = (Y - self.grand_mean_ - covariate_effect) / np.sqrt(np.where(self.adjusted_, self.var_pooled_, 1.0))
        self.gamma_, self.delta_ = self._site_effects(z[:, self.adjusted_], site_codes)
        return self

    def transform(self, X: pd.DataFrame, sites=None) -> pd.DataFrame:
        self._check_fitted()
        Y, _ = as_matrix(X, "ComBat.transform", self.columns_)
        site_codes = _known_site_codes(sites, self.sites_, len(Y))
        scale = np.sqrt(self.var_pooled_[self.adjusted_])
        z = (Y[:, self.adjusted_] - self.grand_mean_[self.adjusted_]) / scale
        z = (z - self.gamma_[site_codes]) / np.sqrt(self.delta_[site_codes])
        out = Y.copy()
        out[:, self.adjusted_] = z * scale + self.grand_mean_[self.adjusted_]
        return pd.DataFrame(out, index=X.index, columns=self.columns_)

    def _site_effects(self, z: np.ndarray, site_codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(gamma, delta): per site and feature, shrunk by empirical Bayes when asked."""
        k = len(self.sites_)
        gamma = np.stack([z[site_codes == i].mean(0) for i in range(k)])
        delta = np.stack([z[site_codes == i].var(0, ddof=1) for i in range(k)])
        if self.empirical_bayes and z.shape[1] >= 2:
            for i in range(k):
                gamma[i], delta[i] = self._shrink(z[site_codes == i], gamma[i], delta[i])
        # A feature constant within a site has no scale to correct there.
        return gamma, np.where(delta > 0, delta, 1.0)

    def _shrink(self, z: np.ndarray, gamma_hat: np.ndarray, delta_hat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior means of one site's effects (Johnson et al. 2007, iterative solution)."""
        gamma_bar, tau2 = gamma_hat.mean(), gamma_hat.var(ddof=1)
        a, b = _inverse_gamma_prior(delta_hat)
        n = len(z)
        gamma, delta = gamma_hat.copy(), delta_hat.copy()
        for _ in range(self.max_iterations):
            gamma_new = (tau2 * n * gamma_hat + delta * gamma_bar) / (tau2 * n + delta)
            delta_new = (0.5 * ((z - gamma_new) ** 2).sum(0) + b) / (n / 2.0 + a - 1.0)
            change = max(_relative_change(gamma_new, gamma), _relative_change(delta_new, delta))
            gamma, delta = gamma_new, delta_new
            if change < self.tolerance:
                break
        return gamma, delta

    def _check_fitted(self) -> None:
        if not hasattr(self, "gamma_"):
            raise ComBatError("ComBat.transform called before fit")


def _inverse_gamma_prior(delta_hat: np.ndarray) -> tuple[float, float]:
    # Method of moments for the inverse-gamma prior of a site's variances.
    m, s2 = delta_hat.mean(), delta_hat.var(ddof=1)
    if s2 <= 0:
        s2 = 1e-12  # every feature has the same variance: a very tight prior
    return (2 * s2 + m**2) / s2, (m * s2 + m**3) / s2


def _relative_change(new: np.ndarray, old: np.ndarray) -> float:
    return float(np.max(np.abs(new - old) / np.maximum(np.abs(old), 1e-12)))


def _site_codes(sites, n: int) -> tuple[np.ndarray, list[str]]:
    values = _site_values(sites, n, "ComBat.fit")
    names = sorted(set(values))
    if len(names) < 2:
        raise ComBatError(f"ComBat.fit: needs at least two sites, got {names}")
    lookup = {s: i for i, s in enumerate(names)}
    return np.array([lookup[s] for s in values]), names


def _known_site_codes(sites, known: list[str], n: int) -> np.ndarray:
    values = _site_values(sites, n, "ComBat.transform")
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ComBatError(
            f"ComBat.transform: sites {unknown} were not seen by fit (fitted on {known}); "
            "ComBat cannot estimate a site's effect without some of its cases"
        )
    lookup = {s: i for i, s in enumerate(known)}
    return np.array([lookup[s] for s in values])


def _site_values(sites, n: int, where: str) -> list[str]:
    if sites is None:
        raise ComBatError(f"{where}: sites are required (one per row)")
    values = [str(s) for s in sites]
    if len(values) != n:
        raise ComBatError(f"{where}: {len(values)} sites for {n} rows")
    return values


def _check_site_sizes(codes: np.ndarray, names: list[str]) -> None:
    counts = np.bincount(codes, minlength=len(names))
    small = [f"{names[i]} ({c})" for i, c in enumerate(counts) if c < 2]
    if small:
        raise ComBatError(f"ComBat.fit: every site needs at least 2 training cases; too few in {small}")


def _covariate_design(covariates: pd.DataFrame | None, index: pd.Index) -> np.ndarray:
    """Centred design columns of the covariates (text columns one-hot, first level dropped)."""
    if covariates is None:
        return np.zeros((len(index), 0))
    if len(covariates) != len(index):
        raise ComBatError(f"ComBat.fit: {len(covariates)} covariate rows for {len(index)} feature rows")
    encoded = pd.get_dummies(pd.DataFrame(covariates).reset_index(drop=True), drop_first=True, dtype=float)
    if encoded.isna().any().any():
        missing = encoded.columns[encoded.isna().any()].tolist()
        raise ComBatError(f"ComBat.fit: covariates {missing} have missing values")
    design = encoded.to_numpy(float)
    return design - design.mean(0)
