"""Pixels of a case, from memory (synthetic cohorts) or from its files."""
from __future__ import annotations

import numpy as np

from senolab.cohorts.imaging import load_gray, load_mask
from senolab.cohorts.schema import Cohort


def case_image(cohort: Cohort, row: dict) -> np.ndarray:
    """uint8 HxW image of a table row."""
    held = cohort.arrays.get(row["case_id"])
    return held[0] if held is not None else load_gray(row["image_path"])


def case_masks(cohort: Cohort, row: dict) -> list[np.ndarray]:
    """One bool HxW mask per lesion ([] for an image without lesion)."""
    held = cohort.arrays.get(row["case_id"])
    return list(held[1]) if held is not None else [load_mask(p) for p in row["mask_paths"]]


def lesion_mask(cohort: Cohort, row: dict) -> np.ndarray:
    """The union of a case's lesion masks (all False for a normal image)."""
    masks = case_masks(cohort, row)
    if not masks:
        return np.zeros(case_image(cohort, row).shape, dtype=bool)
    return np.logical_or.reduce(masks)
