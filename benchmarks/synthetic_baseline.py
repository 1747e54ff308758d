"""How hard is the synthetic cohort? Simple baselines, benign vs malignant ROC AUC.

    python benchmarks/synthetic_baseline.py [--images-per-site 120] [--seed 0]

Baselines (logistic regression, standardised inputs, fitted on training cases only):
- ``lesion``: eight hand-made features of the annotated lesion (ground-truth mask): mean
  and spread of the interior, contrast to a 1.5 mm ring around it, posterior brightness
  against the tissue beside it, solidity, circularity, height/width, area in mm^2;
- ``pixels``: the whole image downsampled to 24x24 (no mask);
- ``metadata``: age, symptoms, family history, tissue composition, with missing-value
  indicators (sites that record nothing give chance);
- ``birads``: the outcome column alone, to show it nearly encodes the label (never an input).

Within a site: out-of-fold predictions of a 5-fold patient-grouped stratified split
(an injected near-duplicate is grouped with its source's patient). Across sites: fitted
on all of one site, scored on each other site.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage
from scipy.spatial import ConvexHull
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from senolab.cohorts.synthetic import BIRADS_LEVELS, SYMPTOM_LEVELS, TISSUE_LEVELS, SyntheticConfig, generate


def lesion_features(image: np.ndarray, mask: np.ndarray, spacing: float) -> list[float]:
    img = image.astype(np.float64)
    ring = ndimage.binary_dilation(mask, iterations=max(1, int(round(1.5 / spacing)))) & ~mask
    inside, around = img[mask].mean(), img[ring].mean() + 1e-6
    ys, xs = np.nonzero(mask)
    height, width = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    below = slice(ys.max() + 1, min(img.shape[0], ys.max() + 1 + height))
    cols = slice(xs.min(), xs.max() + 1)
    left = slice(max(0, xs.min() - width), xs.min())
    right = slice(xs.max() + 1, min(img.shape[1], xs.max() + 1 + width))
    beside = np.concatenate([img[below, left].ravel(), img[below, right].ravel()])
    posterior = img[below, cols].mean() / (beside.mean() + 1e-6) if img[below, cols].size and beside.size else 1.0
    area = float(mask.sum())
    perimeter = float((mask & ~ndimage.binary_erosion(mask)).sum())
    hull = ConvexHull(np.column_stack([ys, xs])).volume if area >= 3 else area
    return [inside, img[mask].std(), inside / around, posterior, area / max(hull, 1.0),
            4 * np.pi * area / max(perimeter, 1.0) ** 2, height / width, area * spacing**2]


def metadata_features(table: pd.DataFrame) -> np.ndarray:
    age = table["age"].to_numpy(dtype=float)
    cols = [np.nan_to_num(age, nan=np.nanmean(age) if np.isfinite(age).any() else 0.0), np.isnan(age)]
    for name, levels in (("symptoms", SYMPTOM_LEVELS), ("tissue_composition", TISSUE_LEVELS)):
        values = table[name]
        cols.append(values.isna().to_numpy())
        cols += [values.map(lambda v, lv=lv: isinstance(v, list) and lv in v).to_numpy() for lv in levels]
    family = table["family_history"]
    cols += [family.isna().to_numpy(), (family == "yes").to_numpy()]
    return np.column_stack(cols).astype(float)


def birads_feature(table: pd.DataFrame) -> np.ndarray:
    ranks = table["birads"].map(lambda v: BIRADS_LEVELS.index(v) if isinstance(v, str) else np.nan).to_numpy(float)
    return np.column_stack([np.nan_to_num(ranks, nan=0.0), np.isnan(ranks)]).astype(float)


def pixel_features(images: list[np.ndarray]) -> np.ndarray:
    small = [np.asarray(Image.fromarray(im).resize((24, 24), Image.Resampling.BILINEAR), float).ravel() for im in images]
    return np.stack(small) / 255.0


def model(c: float = 1.0):
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))


def within_site_auc(x: np.ndarray, y: np.ndarray, groups: np.ndarray, c: float, seed: int) -> float:
    if np.allclose(x.std(0), 0):
        return 0.5  # nothing recorded: the model can only guess
    scores = np.zeros(len(y))
    for train, test in StratifiedGroupKFold(5, shuffle=True, random_state=seed).split(x, y, groups):
        scores[test] = model(c).fit(x[train], y[train]).predict_proba(x[test])[:, 1]
    return roc_auc_score(y, scores)


def cross_site_auc(x_tr, y_tr, x_te, y_te, c: float) -> float:
    if np.allclose(x_tr.std(0), 0) or np.allclose(x_te.std(0), 0):
        return 0.5
    return roc_auc_score(y_te, model(c).fit(x_tr, y_tr).predict_proba(x_te)[:, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images-per-site", type=int, default=SyntheticConfig().images_per_site)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.time()
    cohort = generate(SyntheticConfig(images_per_site=args.images_per_site, seed=args.seed))
    print(f"generated {len(cohort)} images in {time.time() - start:.1f} s")
    table = cohort.table[cohort.table["label"] != "normal"].reset_index(drop=True)
    patient = dict(zip(cohort.table["case_id"], cohort.table["patient_id"]))
    groups = np.array([patient[d] if isinstance(d, str) else p for d, p in zip(table["duplicate_of"], table["patient_id"])])
    y = (table["label"] == "malignant").to_numpy(int)
    images = [cohort.arrays[c][0] for c in table["case_id"]]
    union = [np.logical_or.reduce(cohort.arrays[c][1]) for c in table["case_id"]]
    features = {
        "lesion": (np.array([lesion_features(i, m, s) for i, m, s in zip(images, union, table["pixel_spacing_mm"])]), 1.0),
        "pixels": (pixel_features(images), 0.01),
        "metadata": (metadata_features(table), 1.0),
        "birads": (birads_feature(table), 1.0),
    }
    sites = sorted(table["site"].unique())
    print("\nwithin site (5-fold patient-grouped CV), benign vs malignant AUC")
    rows = []
    for name, (x, c) in features.items():
        row = {"baseline": name}
        for site in sites:
            s = (table["site"] == site).to_numpy()
            row[site] = within_site_auc(x[s], y[s], groups[s], c, args.seed)
        rows.append(row)
    print(pd.DataFrame(rows).to_string(index=False, float_format="%.3f"))
    print("\ncross site (train on one site, test on another)")
    rows = []
    for name, (x, c) in features.items():
        for train in sites:
            row = {"baseline": name, "train": train}
            tr = (table["site"] == train).to_numpy()
            for test in sites:
                te = (table["site"] == test).to_numpy()
                row[f"test {test}"] = np.nan if test == train else cross_site_auc(x[tr], y[tr], x[te], y[te], c)
            rows.append(row)
    print(pd.DataFrame(rows).to_string(index=False, float_format="%.3f", na_rep="-"))
    counts = table.groupby("site")["label"].value_counts().unstack()
    print(f"\nbenign/malignant images per site:\n{counts.to_string()}")


if __name__ == "__main__":
    main()
