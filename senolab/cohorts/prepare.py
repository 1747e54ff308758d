"""Per-modality preparation of a case's pixels before the model's resize (``letterbox``).

``PREPARERS`` maps a modality code (schema.MODALITIES) to ``(image, masks, row) ->
(image, masks)``: the same geometric change is applied to the image and to every mask,
so targets stay aligned. The table keeps the stored images' geometry (boxes, sizes,
spacing); preparation happens where pixels become a model's input.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from senolab.registry import Registry

Preparer = Callable[[np.ndarray, list[np.ndarray], dict], tuple[np.ndarray, list[np.ndarray]]]
PREPARERS: Registry[Preparer] = Registry("modality preparation")


def as_stored(image: np.ndarray, masks: list[np.ndarray], row: dict) -> tuple[np.ndarray, list[np.ndarray]]:
    """Ultrasound and MRI slices are used as stored: the probe or the scanner frames them."""
    return image, masks


PREPARERS.register("US")(as_stored)
PREPARERS.register("MR")(as_stored)


def prepare(image: np.ndarray, masks: list[np.ndarray], row: dict) -> tuple[np.ndarray, list[np.ndarray]]:
    """The case's pixels prepared for its modality."""
    return PREPARERS.get(row.get("modality", "US"))(image, masks, row)
