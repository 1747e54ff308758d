"""Segmentation and box metrics: per case from binary masks, then aggregated.

Per case (:func:`segmentation_case_metrics`, numpy masks of one image):

- ``dice`` = 2|P∩T| / (|P| + |T|); ``iou`` = |P∩T| / |P∪T|.
- ``hd95_px`` / ``hd95_mm``: the symmetric 95th-percentile Hausdorff distance between the
  mask surfaces: surface pixels are those of the mask with a 4-neighbour outside it (or
  on the image border); d(P→T) are the Euclidean distances from each surface pixel of P
  to the nearest surface pixel of T, and HD95 = max(q95 d(P→T), q95 d(T→P)) (the
  percentile generalisation of the Hausdorff distance, as MONAI's
  ``compute_hausdorff_distance(percentile=95)``; Huttenlocher et al. 1993, IEEE TPAMI
  15:850). ``hd95_px`` is in pixels of the given masks and always present; ``hd95_mm``
  uses the pixel spacing (mm, in the masks' grid) and is NaN when the spacing is unknown.
  A lesion that the prediction misses entirely (empty prediction) scores the image
  diagonal: the largest distance possible on that image, so misses are penalised rather
  than dropped.
- ``box_iou`` of two xyxy boxes (:func:`box_iou`).
- ``pred_area_px`` and ``pred_area_fraction`` (of the image).

Policy for images without a lesion (:data:`LESION_FREE_POLICY`): an image whose reference
mask is empty is EXCLUDED from the Dice, IoU, HD95 and box-IoU aggregates, whatever was
predicted. Counting it would inflate Dice (an empty prediction on an empty reference
scores 1) and mix two questions. Lesion-free images are reported separately by
``fp_rate_lesion_free`` (the fraction of them with a predicted area of at least
:data:`FP_MIN_AREA_PX` pixels) and ``pred_area_lesion_free`` (their mean predicted area
as a fraction of the image). Each aggregate records how many cases entered it (``n``).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from senolab.evaluation.metrics import CaseArrays, register_metric, safe_ratio, weighted_mean

KIND = "segmentation"
LESION_FREE_POLICY = (
    "images with an empty reference mask are excluded from dice, iou, hd95_px, hd95_mm and box_iou; "
    "they are reported by fp_rate_lesion_free and pred_area_lesion_free"
)
HD95_DEFINITION = (
    "max of the two directed 95th percentiles of surface distances (4-neighbour surfaces); "
    "an empty prediction on a lesion scores the image diagonal"
)
HD95_PERCENTILE = 95.0
# A lesion-free image counts as a false positive once the prediction covers this many pixels.
FP_MIN_AREA_PX = 1

# Per-case columns this module reads from a prediction table (all optional).
LESION_COLUMN = "lesion_present"
CASE_COLUMNS = ("dice", "iou", "hd95_px", "hd95_mm", "box_iou", "pred_area_px", "pred_area_fraction",
                "dice_vs_circle", "iou_vs_circle")


def _binary(mask: np.ndarray, name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{name} must be a 2-D mask (H, W); got shape {mask.shape}")
    if mask.dtype != bool:
        values = np.unique(mask)
        if not np.isin(values, (0, 1)).all():
            raise ValueError(
                f"{name} must be binary (bool or 0/1); found values {values[:5].tolist()}: "
                "threshold probabilities or 0/255 masks first"
            )
    return mask.astype(bool)


def _pair(pred_mask: np.ndarray, true_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, true = _binary(pred_mask, "pred_mask"), _binary(true_mask, "true_mask")
    if pred.shape != true.shape:
        raise ValueError(f"pred_mask shape {pred.shape} differs from true_mask shape {true.shape}")
    return pred, true


def _spacing(spacing_mm: float | Sequence[float] | None) -> tuple[float, float] | None:
    """(row, col) spacing in mm, or None when unknown (None or NaN)."""
    if spacing_mm is None:
        return None
    values = np.broadcast_to(np.asarray(spacing_mm, dtype=float), (2,))
    if np.isnan(values).any():
        return None
    if (values <= 0).any():
        raise ValueError(f"pixel spacing must be positive mm; got {spacing_mm}")
    return float(values[0]), float(values[1])


def dice(pred_mask: np.ndarray, true_mask: np.ndarray) -> float:
    """2|P∩T| / (|P| + |T|); NaN when both masks are empty (undefined)."""
    pred, true = _pair(pred_mask, true_mask)
    total = pred.sum() + true.sum()
    return float(2 * (pred & true).sum() / total) if total else float("nan")


def iou(pred_mask: np.ndarray, true_mask: np.ndarray) -> float:
    """|P∩T| / |P∪T|; NaN when both masks are empty (undefined)."""
    pred, true = _pair(pred_mask, true_mask)
    union = (pred | true).sum()
    return float((pred & true).sum() / union) if union else float("nan")


def _surface(mask: np.ndarray) -> np.ndarray:
    # border_value=0: a mask touching the image border has a surface along it.
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hd95(
    pred_mask: np.ndarray, true_mask: np.ndarray, spacing_mm: float | Sequence[float] | None = None
) -> float:
    """Symmetric 95th-percentile Hausdorff distance between the mask surfaces.

    In mm when ``spacing_mm`` (scalar or (row, col), in the masks' grid) is given, else in
    pixels. One empty mask: the image diagonal (the worst case). Both empty: NaN.
    """
    pred, true = _pair(pred_mask, true_mask)
    sampling = _spacing(spacing_mm) or (1.0, 1.0)
    if not pred.any() and not true.any():
        return float("nan")
    if not pred.any() or not true.any():
        return float(np.hypot(pred.shape[0] * sampling[0], pred.shape[1] * sampling[1]))
    pred_surface, true_surface = _surface(pred), _surface(true)
    to_true = ndimage.distance_transform_edt(~true_surface, sampling=sampling)[pred_surface]
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=sampling)[true_surface]
    return float(max(np.percentile(to_true, HD95_PERCENTILE), np.percentile(to_pred, HD95_PERCENTILE)))


def box_iou(pred_boxes: np.ndarray, true_boxes: np.ndarray) -> np.ndarray:
    """IoU of xyxy boxes (x0, y0, x1, y1), elementwise over the leading axes.

    Any coordinate unit works as long as both use it (pixels or normalised). NaN where
    both boxes have zero area.
    """
    a = np.asarray(pred_boxes, dtype=float)
    b = np.asarray(true_boxes, dtype=float)
    if a.shape[-1:] != (4,) or b.shape[-1:] != (4,):
        raise ValueError(f"boxes must have 4 xyxy coordinates in the last axis; got {a.shape} and {b.shape}")
    for name, box in (("pred_boxes", a), ("true_boxes", b)):
        if (box[..., 2] < box[..., 0]).any() or (box[..., 3] < box[..., 1]).any():
            raise ValueError(f"{name} must be xyxy with x1 >= x0 and y1 >= y0")
    width = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    height = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = width * height
    return safe_ratio(inter, _box_area(a) + _box_area(b) - inter)


def _box_area(box: np.ndarray) -> np.ndarray:
    return (box[..., 2] - box[..., 0]) * (box[..., 3] - box[..., 1])


def segmentation_case_metrics(
    pred_mask: np.ndarray, true_mask: np.ndarray, spacing_mm: float | Sequence[float] | None = None
) -> dict[str, float | bool]:
    """The per-case segmentation columns of a prediction table for one image.

    Follows :data:`LESION_FREE_POLICY`: with an empty reference mask, ``dice``, ``iou``
    and the HD95s are NaN and only the predicted area speaks.
    """
    pred, true = _pair(pred_mask, true_mask)
    lesion = bool(true.any())
    spacing = _spacing(spacing_mm)
    area = int(pred.sum())
    return {
        LESION_COLUMN: lesion,
        "dice": dice(pred, true) if lesion else float("nan"),
        "iou": iou(pred, true) if lesion else float("nan"),
        "hd95_px": hd95(pred, true) if lesion else float("nan"),
        "hd95_mm": hd95(pred, true, spacing) if lesion and spacing else float("nan"),
        "pred_area_px": float(area),
        "pred_area_fraction": area / pred.size,
    }


# --------------------------------------------------------------------------- aggregates


def _lesion_values(column: str):
    """Support: images with a lesion and a value for ``column``."""

    def support(cases: CaseArrays) -> np.ndarray:
        return cases.lesion_present & np.isfinite(cases.values[column])

    return support


def _lesion_free_values(column: str):
    """Support: lesion-free images with a value for ``column``."""

    def support(cases: CaseArrays) -> np.ndarray:
        return ~cases.lesion_present & np.isfinite(cases.values[column])

    return support


def _available(column: str, support):
    """The metric applies when the column exists and some case enters it."""

    def applies(cases: CaseArrays) -> bool:
        return cases.lesion_present is not None and column in cases.values and bool(support(cases).any())

    return applies


def _register_mean(name: str, column: str, higher_is_better: bool, doc: str) -> None:
    support = _lesion_values(column)

    def compute(cases: CaseArrays, w: np.ndarray) -> np.ndarray:
        return weighted_mean(cases.values[column], support(cases), w)

    compute.__doc__ = doc
    register = register_metric(
        name, kind=KIND, higher_is_better=higher_is_better, support=support, applies=_available(column, support)
    )
    register(compute)


_register_mean("dice", "dice", True, "Mean Dice over images with a lesion.")
_register_mean("iou", "iou", True, "Mean IoU over images with a lesion.")
_register_mean("hd95_px", "hd95_px", False, "Mean HD95 in pixels over images with a lesion.")
_register_mean("hd95_mm", "hd95_mm", False, "Mean HD95 in mm over images with a lesion and a known spacing.")
_register_mean("box_iou", "box_iou", True, "Mean box IoU over images with a lesion.")
# Against circle annotations (mini-MIAS): overlap with an approximate disc, not a segmentation
# result; engine.predict writes these columns instead of dice and iou for such cases.
_register_mean("dice_vs_circle", "dice_vs_circle", True, "Mean Dice against circle annotations (approximate).")
_register_mean("iou_vs_circle", "iou_vs_circle", True, "Mean IoU against circle annotations (approximate).")

_fp_support = _lesion_free_values("pred_area_px")


@register_metric("fp_rate_lesion_free", kind=KIND, higher_is_better=False, support=_fp_support,
                 applies=_available("pred_area_px", _fp_support))
def _fp_rate_lesion_free(cases: CaseArrays, w: np.ndarray) -> np.ndarray:
    """Fraction of lesion-free images with any predicted lesion (>= FP_MIN_AREA_PX pixels)."""
    flagged = (cases.values["pred_area_px"] >= FP_MIN_AREA_PX).astype(float)
    return weighted_mean(flagged, _fp_support(cases), w)


_area_support = _lesion_free_values("pred_area_fraction")


@register_metric("pred_area_lesion_free", kind=KIND, higher_is_better=False, support=_area_support,
                 applies=_available("pred_area_fraction", _area_support))
def _pred_area_lesion_free(cases: CaseArrays, w: np.ndarray) -> np.ndarray:
    """Mean predicted area (fraction of the image) on lesion-free images."""
    return weighted_mean(cases.values["pred_area_fraction"], _area_support(cases), w)
