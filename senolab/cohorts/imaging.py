"""Reading images and masks as the cohort layer needs them, whatever the file's mode or format (DICOM too)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from senolab.cohorts.dicom import dicom_size, is_dicom, read_dicom

# Errors PIL raises for unreadable or truncated files, and DicomError (a ValueError):
# reported per case, never fatal unless the reader runs under --strict.
READ_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError)


def load_gray(path: str | Path) -> np.ndarray:
    """An image as uint8 HxW grayscale.

    L, LA, P, RGB and RGBA files are accepted: official BUSI images are RGB with equal
    channels and official BrEaST images are RGBA, some tinted by a colour map; the
    luminance conversion folds both to one channel. 16-bit files are scaled to 8 bits.
    DICOM files go through the radiology display pipeline of :func:`senolab.cohorts.dicom.read_dicom`.
    """
    if is_dicom(path):
        return read_dicom(path).pixels
    with Image.open(path) as im:
        im.load()  # decode now, so a truncated file fails here with its path
        if im.mode in ("I;16", "I;16B", "I"):
            arr = np.asarray(im, dtype=np.float64)
            top = arr.max() or 1.0
            return np.clip(arr / top * 255.0, 0, 255).astype(np.uint8)
        if im.mode != "L":
            im = im.convert("RGBA").convert("RGB").convert("L") if "A" in im.mode else im.convert("L")
        return np.asarray(im, dtype=np.uint8).copy()


# A mask is 0/255-like (a 0/255 mask after JPEG compression or bilinear resampling) when its
# values sit near 0 and near 255 with only an edge's worth in between: then 128 separates them.
NEAR_0 = 64
NEAR_255 = 192
MAX_IN_BETWEEN = 0.05  # fraction of all pixels; a blurred outline is far below, a grey image far above


class MaskValueError(ValueError):
    """A mask whose values are neither binary nor 0/255-like, so no threshold is safe."""


def load_mask(path: str | Path) -> np.ndarray:
    """A lesion mask as bool HxW, by :func:`mask_foreground`."""
    return mask_foreground(load_gray(path))


def mask_foreground(gray: np.ndarray) -> np.ndarray:
    """The lesion pixels of a uint8 mask, by the rule its value set calls for.

    - binary, 0 and one other value (0/1, 0/255, 0/75 ...): that value is the lesion;
      only 0 is an empty mask;
    - 0/255-like (near 0 and near 255, few values between): the lesion is >= 128, so a
      stray 75 in a 0/255 mask is background;
    - anything else (a 0/1 mask with a stray 75, a grey image, no 0 background) raises
      :class:`MaskValueError`: half the maximum would turn a stray pixel into a lesion.
    """
    counts = np.bincount(gray.ravel(), minlength=256)
    values = np.flatnonzero(counts)
    if values[0] == 0 and len(values) <= 2:
        return gray > 0
    in_between = counts[NEAR_0:NEAR_255].sum()
    if counts[:NEAR_0].any() and counts[NEAR_255:].any() and in_between <= MAX_IN_BETWEEN * gray.size:
        return gray >= 128
    raise MaskValueError(
        f"mask values {_value_set(values)} are neither binary (0 and one lesion value) "
        f"nor 0/255-like (near 0 and near 255)"
    )


def _value_set(values: np.ndarray) -> str:
    if len(values) <= 6:
        return "{" + ", ".join(str(v) for v in values) + "}"
    return f"({len(values)} distinct, {values[0]} to {values[-1]})"


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the header, without decoding the pixels."""
    if is_dicom(path):
        return dicom_size(path)
    with Image.open(path) as im:
        return im.size


def bbox_from_mask(mask: np.ndarray) -> list[int] | None:
    """[x0, y0, x1, y1] of the mask's pixels, end-exclusive; None for an empty mask."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
