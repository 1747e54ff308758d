"""Reading images and masks as the cohort layer needs them, whatever the file's mode."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# Errors PIL raises for unreadable or truncated files: reported per case, never fatal
# unless the reader runs under --strict.
READ_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError)


def load_gray(path: str | Path) -> np.ndarray:
    """An image as uint8 HxW grayscale.

    L, LA, P, RGB and RGBA files are accepted: official BUSI images are RGB with equal
    channels and official BrEaST images are RGBA, some tinted by a colour map; the
    luminance conversion folds both to one channel. 16-bit files are scaled to 8 bits.
    """
    with Image.open(path) as im:
        im.load()  # decode now, so a truncated file fails here with its path
        if im.mode in ("I;16", "I;16B", "I"):
            arr = np.asarray(im, dtype=np.float64)
            top = arr.max() or 1.0
            return np.clip(arr / top * 255.0, 0, 255).astype(np.uint8)
        if im.mode != "L":
            im = im.convert("RGBA").convert("RGB").convert("L") if "A" in im.mode else im.convert("L")
        return np.asarray(im, dtype=np.uint8).copy()


def load_mask(path: str | Path) -> np.ndarray:
    """A lesion mask as bool HxW.

    Masks come as 0/1 or 0/255 (and one BrEaST mask has a stray 75), so the threshold is
    half the file's maximum rather than a comparison with 255.
    """
    arr = load_gray(path).astype(np.float32)
    top = arr.max()
    if top == 0:
        return np.zeros(arr.shape, dtype=bool)
    return arr >= top / 2.0


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the header, without decoding the pixels."""
    with Image.open(path) as im:
        return im.size


def bbox_from_mask(mask: np.ndarray) -> list[int] | None:
    """[x0, y0, x1, y1] of the mask's pixels, end-exclusive; None for an empty mask."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
