"""Weak and strong augmentations of grayscale image batches, as torch tensor ops.

FixMatch's pair (Sohn et al., "FixMatch: Simplifying Semi-Supervised Learning with
Consistency and Confidence", NeurIPS 2020): the weak view is a horizontal flip and a
translation of up to 12.5 %; the strong view is RandAugment (Cubuk et al. 2020; two
operations per image at random magnitudes) followed by Cutout (DeVries & Taylor 2017).
The strong operations here only change intensities (plus the Cutout square), never
geometry, so a pixel of the strong view is the same pixel of the view it was made from:
a segmentation pseudo-label of the weak view applies to its strong view unchanged.
Images are expected in [0, 1]; outputs stay there. Every draw comes from ``generator``.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.nn import functional as F


def _uniform(generator: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def weak_augment(images: torch.Tensor, generator: torch.Generator, max_shift: float = 0.125) -> torch.Tensor:
    """Random horizontal flip, then a random translation with reflection padding."""
    b, _, h, w = images.shape
    flip = torch.rand(b, generator=generator) < 0.5
    out = torch.where(flip.view(b, 1, 1, 1).to(images.device), images.flip(-1), images)
    pad_y, pad_x = int(round(max_shift * h)), int(round(max_shift * w))
    padded = F.pad(out, (pad_x, pad_x, pad_y, pad_y), mode="reflect")
    dy = torch.randint(0, 2 * pad_y + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad_x + 1, (b,), generator=generator)
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])


# Intensity operations: (image (1,H,W) in [0,1], magnitude in [0,1]) -> image.
def _autocontrast(x: torch.Tensor, m: float) -> torch.Tensor:
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo).clamp_min(1e-6)


def _brightness(x: torch.Tensor, m: float) -> torch.Tensor:
    return x + 0.3 * (2 * m - 1)


def _contrast(x: torch.Tensor, m: float) -> torch.Tensor:
    return (x - x.mean()) * (0.4 + 1.2 * m) + x.mean()


def _gamma(x: torch.Tensor, m: float) -> torch.Tensor:
    return x.clamp(0, 1).pow(2.0 ** (2 * m - 1))


def _equalize(x: torch.Tensor, m: float) -> torch.Tensor:
    ranks = x.flatten().argsort().argsort().float()
    return (ranks / max(ranks.numel() - 1, 1)).view_as(x)


def _posterize(x: torch.Tensor, m: float) -> torch.Tensor:
    levels = 2 ** (4 + round(4 * (1 - m)))  # 16..256 grey levels
    return torch.floor(x.clamp(0, 1) * (levels - 1) + 0.5) / (levels - 1)


def _solarize(x: torch.Tensor, m: float) -> torch.Tensor:
    threshold = 1.0 - 0.5 * m
    return torch.where(x >= threshold, 1.0 - x, x)


def _box_blur(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(F.pad(x[None], (1, 1, 1, 1), mode="replicate"), 3, stride=1)[0]


def _sharpness(x: torch.Tensor, m: float) -> torch.Tensor:
    return x + 1.5 * m * (x - _box_blur(x))


def _blur(x: torch.Tensor, m: float) -> torch.Tensor:
    return torch.lerp(x, _box_blur(x), m)


def _noise(x: torch.Tensor, m: float, generator: torch.Generator) -> torch.Tensor:
    return x + 0.08 * m * torch.randn(x.shape, generator=generator).to(x)


INTENSITY_OPS: dict[str, Callable] = {
    "autocontrast": _autocontrast,
    "brightness": _brightness,
    "contrast": _contrast,
    "gamma": _gamma,
    "equalize": _equalize,
    "posterize": _posterize,
    "solarize": _solarize,
    "sharpness": _sharpness,
    "blur": _blur,
    "noise": _noise,
}
_NEEDS_GENERATOR = {"noise"}


def _apply(name: str, image: torch.Tensor, magnitude: float, generator: torch.Generator) -> torch.Tensor:
    op = INTENSITY_OPS[name]
    return op(image, magnitude, generator) if name in _NEEDS_GENERATOR else op(image, magnitude)


def cutout(images: torch.Tensor, generator: torch.Generator, max_fraction: float = 0.5,
           fill: float = 0.5) -> torch.Tensor:
    """One random square per image, of side up to ``max_fraction`` of the image, set to ``fill``."""
    b, _, h, w = images.shape
    out = images.clone()
    sides = (_uniform(generator, b, 0.0, max_fraction) * min(h, w)).long()
    ys, xs = torch.randint(0, h, (b,), generator=generator), torch.randint(0, w, (b,), generator=generator)
    for i in range(b):
        half = int(sides[i]) // 2
        top, left = max(int(ys[i]) - half, 0), max(int(xs[i]) - half, 0)
        out[i, :, top : int(ys[i]) + half, left : int(xs[i]) + half] = fill
    return out


def strong_augment(images: torch.Tensor, generator: torch.Generator, n_ops: int = 2) -> torch.Tensor:
    """RandAugment over intensity operations (``n_ops`` per image, random magnitudes), then Cutout."""
    names = list(INTENSITY_OPS)
    views = []
    for image in images:
        picks = torch.randint(0, len(names), (n_ops,), generator=generator)
        magnitudes = torch.rand(n_ops, generator=generator)
        for pick, magnitude in zip(picks.tolist(), magnitudes.tolist()):
            image = _apply(names[pick], image, magnitude, generator)
        views.append(image.clamp(0, 1))
    return cutout(torch.stack(views), generator)
