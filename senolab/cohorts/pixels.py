"""Pixels of a case, from memory (synthetic cohorts) or from its files.

Lesion masks follow the row's ``mask_kind`` (schema.MASK_KINDS): outlines come from mask
files or arrays, circles are drawn from the lesion boxes (the disc inscribed in each),
and boxes or unlocated lesions have no lesion mask at all.
"""
from __future__ import annotations

import numpy as np

from senolab.cohorts.imaging import load_gray, load_mask
from senolab.cohorts.schema import Cohort


def case_image(cohort: Cohort, row: dict) -> np.ndarray:
    """uint8 HxW image of a table row."""
    held = cohort.arrays.get(row["case_id"])
    return held[0] if held is not None else load_gray(row["image_path"])


def case_masks(cohort: Cohort, row: dict) -> list[np.ndarray]:
    """One bool HxW mask per lesion ([] for an image without lesion, and for lesions known
    only by a box or not located at all)."""
    kind = row.get("mask_kind", "outline")
    if kind == "circle":
        return [inscribed_disc(box, row["height"], row["width"]) for box in row["lesion_bboxes"]]
    if kind != "outline":
        return []
    held = cohort.arrays.get(row["case_id"])
    return list(held[1]) if held is not None else [load_mask(p) for p in row["mask_paths"]]


def lesion_mask(cohort: Cohort, row: dict) -> np.ndarray:
    """The union of a case's lesion masks (all False for a normal image)."""
    masks = case_masks(cohort, row)
    if not masks:
        return np.zeros(case_image(cohort, row).shape, dtype=bool)
    return np.logical_or.reduce(masks)


def inscribed_disc(box, height: int, width: int) -> np.ndarray:
    """The ellipse (a disc for a square box) inscribed in xyxy ``box``, clipped to the image.

    A circle annotation is stored as its box, which may reach past the image border, so
    the drawn disc keeps its true centre and radius."""
    x0, y0, x1, y1 = (float(v) for v in box)
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, max((x1 - x0) / 2, 0.5), max((y1 - y0) / 2, 0.5)
    ys, xs = np.ogrid[:height, :width]
    return ((xs + 0.5 - cx) / rx) ** 2 + ((ys + 0.5 - cy) / ry) ** 2 <= 1.0


def box_masks(row: dict) -> list[np.ndarray]:
    """Each lesion box filled, clipped to the image: how a box follows the image through
    resizing and augmentation (it is never a segmentation target)."""
    masks = []
    for box in row["lesion_bboxes"]:
        x0, y0, x1, y1 = (int(round(float(v))) for v in box)
        mask = np.zeros((row["height"], row["width"]), dtype=bool)
        mask[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = True
        masks.append(mask)
    return masks
