"""Ultrasound-specific image corruptions at five severities, for graded stress tests.

In the spirit of MedMNIST-C (Di Salvo et al. 2024, "MedMNIST-C: comprehensive benchmark and
improved classifier robustness by simulating realistic image corruptions") and ImageNet-C
(Hendrycks & Dietterich 2019): each corruption of :data:`CORRUPTIONS` is a pure function
``(image, severity, rng) -> image`` of a float grayscale image in [0, 1] (H x W), a
severity 1..5 and a numpy ``Generator``; it returns a new image in [0, 1] and never
changes its input. The same image, severity and generator state give the same pixels.
Random corruptions draw their random field the same way at every severity (only its
strength depends on the severity), so with the same seed a higher severity is a
stronger version of the same corruption.

The B-mode image is taken as log-compressed over :data:`DYNAMIC_RANGE_DB` dB (a gain
change in dB shifts the brightness by gain / dynamic range), depth running down the rows.

| corruption | what a scanner does | severities 1..5 |
|---|---|---|
| ``gain`` | overall gain set too high | +3, +6, +9, +12, +18 dB |
| ``speckle`` | stronger multiplicative speckle (fewer looks) | log-normal noise, sigma 0.1..0.6, 1.5 px grain |
| ``depth_attenuation`` | time-gain compensation mis-set: the image darkens with depth | exp(-a depth), a = 0.5..3.5 over the image height |
| ``blur`` | defocus: worse lateral than axial resolution | Gaussian, lateral sigma 0.75..4 px (axial half) |
| ``resolution`` | a lower-resolution probe or a downsampled export | down- then up-sampled by 1.5, 2, 3, 4, 6 |
| ``shadowing`` | acoustic shadows under a strongly attenuating structure | 1..3 dark bands, 5-25 % of the width, 30-90 % darker |
| ``jpeg`` | lossy export / PACS compression | JPEG quality 50, 30, 20, 10, 5 |
"""
from __future__ import annotations

import io
from typing import Callable

import numpy as np

from senolab.registry import Registry

SEVERITIES = (1, 2, 3, 4, 5)
DYNAMIC_RANGE_DB = 60.0

Corruption = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]
CORRUPTIONS: Registry[Corruption] = Registry("corruption")


def _level(values: tuple, severity: int):
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}; got {severity!r}")
    return values[severity - 1]


def _image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2:
        raise ValueError(f"a corruption takes a 2D grayscale image; got shape {image.shape}")
    return image


def _gaussian(image: np.ndarray, sigma_rows: float, sigma_cols: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(image, sigma=(sigma_rows, sigma_cols), mode="reflect")


@CORRUPTIONS.register("gain")
def gain(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Overall gain too high: brightness + gain_dB / dynamic range, saturating at white."""
    db = _level((3.0, 6.0, 9.0, 12.0, 18.0), severity)
    return np.clip(_image(image) + db / DYNAMIC_RANGE_DB, 0.0, 1.0)


@CORRUPTIONS.register("speckle")
def speckle(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative log-normal speckle with a grain of about 1.5 px (mean 1)."""
    sigma = _level((0.1, 0.2, 0.3, 0.45, 0.6), severity)
    image = _image(image)
    field = _gaussian(rng.standard_normal(image.shape), 1.5, 1.5)
    field /= field.std() + 1e-12
    return np.clip(image * np.exp(sigma * field - sigma**2 / 2), 0.0, 1.0)


@CORRUPTIONS.register("depth_attenuation")
def depth_attenuation(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Uncompensated attenuation: rows darken as exp(-a * depth), depth 0..1 down the image."""
    a = _level((0.5, 1.0, 1.5, 2.5, 3.5), severity)
    image = _image(image)
    depth = np.linspace(0.0, 1.0, image.shape[0])[:, None]
    return np.clip(image * np.exp(-a * depth), 0.0, 1.0)


@CORRUPTIONS.register("blur")
def blur(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Defocus: Gaussian blur, lateral sigma 0.75..4 px, axial (down the rows) half of it."""
    sigma = _level((0.75, 1.25, 2.0, 3.0, 4.0), severity)
    return np.clip(_gaussian(_image(image), sigma / 2, sigma), 0.0, 1.0)


@CORRUPTIONS.register("resolution")
def resolution(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Lost resolution: bilinear down-sampling by 1.5..6, then back up to the image's size."""
    from PIL import Image

    factor = _level((1.5, 2.0, 3.0, 4.0, 6.0), severity)
    image = _image(image)
    h, w = image.shape
    small = Image.fromarray(image.astype(np.float32)).resize((max(1, round(w / factor)), max(1, round(h / factor))),
                                                            Image.Resampling.BILINEAR)
    return np.clip(np.asarray(small.resize((w, h), Image.Resampling.BILINEAR), np.float64), 0.0, 1.0)


@CORRUPTIONS.register("shadowing")
def shadowing(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Acoustic shadows: vertical bands, darker from a random depth downwards, soft-edged.

    The bands' places are drawn the same way at every severity; width, darkness and the
    number of bands grow with it."""
    width = _level((0.05, 0.08, 0.12, 0.18, 0.25), severity)
    darkness = _level((0.3, 0.45, 0.6, 0.75, 0.9), severity)
    n_bands = _level((1, 1, 2, 2, 3), severity)
    image = _image(image)
    h, w = image.shape
    centres, starts = rng.uniform(0.15, 0.85, size=3), rng.uniform(0.1, 0.5, size=3)  # 3 drawn, n_bands used
    cols, rows = np.arange(w) / max(w - 1, 1), np.arange(h) / max(h - 1, 1)
    keep = np.ones_like(image)
    for centre, start in zip(centres[:n_bands], starts[:n_bands]):
        across = np.clip(1.0 - np.abs(cols - centre) / (width / 2), 0.0, 1.0) ** 0.5  # soft edges
        down = np.clip((rows - start) / 0.05, 0.0, 1.0)  # the shadow begins under the structure
        keep *= 1.0 - darkness * down[:, None] * across[None, :]
    return np.clip(image * keep, 0.0, 1.0)


@CORRUPTIONS.register("jpeg")
def jpeg(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Lossy JPEG at quality 50, 30, 20, 10, 5 (8-bit round trip)."""
    from PIL import Image

    quality = _level((50, 30, 20, 10, 5), severity)
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(image)).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("L"), np.float64) / 255.0


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(_image(image), 0.0, 1.0) * 255).astype(np.uint8)


def corrupt(image: np.ndarray, name: str, severity: int, seed: int | list[int] = 0) -> np.ndarray:
    """``name`` at ``severity`` on a [0, 1] image with a generator seeded by ``seed`` (an int
    or a list of ints, e.g. [seed, case index])."""
    return CORRUPTIONS.build(name, image, severity, np.random.default_rng(seed))
