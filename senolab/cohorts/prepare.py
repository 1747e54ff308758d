"""Per-modality preparation of a case's pixels before the model's resize (``letterbox``).

``PREPARERS`` maps a modality code (schema.MODALITIES) to ``(image, masks, row) ->
(image, masks)``: the same geometric change is applied to the image and to every mask,
so targets stay aligned. The table keeps the stored images' geometry (boxes, sizes,
spacing); preparation happens where pixels become a model's input.

Pixel spacing: a preparer may crop or flip but never resamples, so a prepared pixel is
as many millimetres as a stored one. What changes is the letterbox scale, which follows
the prepared image's longer side: the dataset gives each item's millimetres per
model-input pixel (``spacing_mm`` of the batch) from that scale.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import ndimage

from senolab.registry import Registry

Preparer = Callable[[np.ndarray, list[np.ndarray], dict], tuple[np.ndarray, list[np.ndarray]]]
PREPARERS: Registry[Preparer] = Registry("modality preparation")


def as_stored(image: np.ndarray, masks: list[np.ndarray], row: dict) -> tuple[np.ndarray, list[np.ndarray]]:
    """Ultrasound and MRI slices are used as stored: the probe or the scanner frames them."""
    return image, masks


PREPARERS.register("US")(as_stored)
PREPARERS.register("MR")(as_stored)
GEOMETRY_KEPT = {"US", "MR"}  # modalities whose preparation leaves the stored size


# ----------------------------------------------------------------------------- mammography


@dataclass(frozen=True)
class BreastFrame:
    """Where the breast is in a stored mammogram and how it is turned to the canonical side.

    ``box`` is (top, bottom, left, right) in stored pixels, end-exclusive; ``flip`` mirrors
    the crop left-right so that the chest wall is on the LEFT of the prepared image;
    ``breast`` is the breast region on a grid ``step`` times coarser than the stored one
    (what is outside it, labels inside the box included, is blanked in the image)."""

    box: tuple[int, int, int, int]
    flip: bool
    breast: np.ndarray | None = None
    step: int = 1

    def apply(self, array: np.ndarray) -> np.ndarray:
        """The same crop and flip, for the image and for every mask."""
        top, bottom, left, right = self.box
        out = array[top:bottom, left:right]
        return np.ascontiguousarray(out[:, ::-1] if self.flip else out)

    def blank_outside(self, image: np.ndarray) -> np.ndarray:
        """The stored image with everything off the breast set to the background (0)."""
        if self.breast is None:
            return image
        keep = np.repeat(np.repeat(self.breast, self.step, 0), self.step, 1)[: image.shape[0], : image.shape[1]]
        return np.where(keep, image, np.zeros_like(image))

    @property
    def shape(self) -> tuple[int, int]:
        top, bottom, left, right = self.box
        return bottom - top, right - left


# The breast-region search runs on a copy whose longer side is at most this many pixels
# (a 4k mammogram in milliseconds); the box is then scaled back to the stored grid.
SEARCH_SIDE = 256
CROP_MARGIN = 0.02  # of the image's longer side, kept around the breast (the skin line is faint)
THIN = 0.01  # of the search copy's side: bands and lines thinner than twice this are cut off


def breast_frame(image: np.ndarray, row: dict) -> BreastFrame:
    """The breast region of a mammogram and its orientation.

    The background of a mammogram is the unattenuated exposure: the darkest, largest mode
    of the histogram. Thresholding halfway between the background and the Otsu level (the
    skin edge is fainter than the tissue Otsu separates), opening away thin bands and lines
    (a digitised film's edge or scanner stripe would otherwise join a label to the breast)
    and keeping the largest connected component keeps the breast and drops everything
    that is a separate blob: burned-in labels, lead markers, scanner marks.

    Orientation: radiology displays a right breast with its chest wall on the image's
    right (mini-MIAS confirms it: its odd, right-breast files hold their tissue in the
    right half, the even ones in the left), so ``laterality`` "R" is flipped and "L" kept.
    When the row does not know the laterality, the chest wall is taken to be the side
    holding more breast: the breast is widest at the chest wall and tapers to the nipple.
    """
    step = max(1, int(np.ceil(max(image.shape) / SEARCH_SIDE)))
    small = image[::step, ::step].astype(np.float32)
    smooth = ndimage.uniform_filter(small, 3)  # film grain and quantum noise make no islands
    radius = max(2, int(round(THIN * max(small.shape))))
    disc = np.hypot(*np.mgrid[-radius : radius + 1, -radius : radius + 1]) <= radius
    breast = _largest_component(ndimage.binary_opening(smooth > _breast_level(smooth), disc))
    if not breast.any():  # a blank image: nothing to crop, nothing to turn
        return BreastFrame((0, image.shape[0], 0, image.shape[1]), False)
    margin = int(round(CROP_MARGIN * max(image.shape)))
    region = ndimage.binary_dilation(breast, iterations=max(1, margin // step))
    rows, cols = np.nonzero(breast.any(1))[0], np.nonzero(breast.any(0))[0]
    h, w = image.shape
    box = (max(0, rows[0] * step - margin), min(h, (rows[-1] + 1) * step + margin),
           max(0, cols[0] * step - margin), min(w, (cols[-1] + 1) * step + margin))
    laterality = row.get("laterality")
    if laterality in ("L", "R"):
        flip = laterality == "R"
    else:  # unknown side: the chest wall is where the breast is
        half = breast.shape[1] // 2
        flip = breast[:, half:].sum() > breast[:, :half].sum()
    return BreastFrame(tuple(int(v) for v in box), bool(flip), region, step)


def _breast_level(values: np.ndarray) -> float:
    """Halfway between the background's level (the median below Otsu's threshold) and it."""
    otsu = _otsu_level(values)
    below = values[values < otsu]
    background = float(np.median(below)) if below.size else float(values.min())
    return background + 0.5 * (otsu - background)


def _otsu_level(values: np.ndarray) -> float:
    """Otsu's threshold over a 256-bin histogram: the level maximising between-class variance."""
    hist, edges = np.histogram(values, bins=256)
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(hist).astype(np.float64)
    total = weight[-1]
    mean = np.cumsum(hist * centres)
    between = (mean[-1] * weight - mean * total) ** 2 / np.maximum(weight * (total - weight), 1e-12)
    return float(centres[int(np.argmax(between[:-1]))])


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return ndimage.binary_fill_holes(labels == int(np.argmax(sizes)) + 1)


@PREPARERS.register("MG")
def prepare_mammogram(image: np.ndarray, masks: list[np.ndarray], row: dict) -> tuple[np.ndarray, list[np.ndarray]]:
    """The breast cropped out of its background and labels, chest wall on the left; the
    masks get the same crop and flip. The aspect-preserving resize is the letterbox's."""
    frame = breast_frame(image, row)
    return frame.apply(frame.blank_outside(image)), [frame.apply(mask) for mask in masks]


def prepare(image: np.ndarray, masks: list[np.ndarray], row: dict) -> tuple[np.ndarray, list[np.ndarray]]:
    """The case's pixels prepared for its modality."""
    return PREPARERS.get(row.get("modality", "US"))(image, masks, row)

