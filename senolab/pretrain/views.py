"""Augmented views of grey ultrasound images for self-supervised pretraining.

Each view is a random resized crop (the area fraction drawn from ``crop_scale``, aspect
3:4 to 4:3) followed by torchio transforms that mimic what differs between scans and
scanners: left-right flip (never up-down: depth runs downwards), small affine moves and
elastic deformation (probe pressure and angle), gamma and a smooth bias field (gain and
time-gain compensation), blur (focus, resolution) and noise (speckle). No colour jitter:
the images are grey.

Randomness comes from torch's global generator, which the pretraining loop re-seeds each
epoch, so a resumed run draws the same views as one that never stopped.
"""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def ultrasound_transforms(size: int = 128):
    """torchio transforms for a 2D ``size`` x ``size`` image held as a 1 x H x W x 1 volume."""
    import torchio as tio

    # elastic displacement in pixels, below half the control-point spacing (no folding)
    displacement = max(1.0, size / 32)

    return tio.Compose([
        tio.RandomFlip(axes=(1,), flip_probability=0.5),
        tio.RandomAffine(scales=(0.85, 1.15, 0.85, 1.15, 1, 1), degrees=(0, 0, 0, 0, -15, 15),
                         translation=(-6, 6, -6, 6, 0, 0), p=0.8),
        tio.RandomElasticDeformation(num_control_points=(7, 7, 5), max_displacement=(displacement, displacement, 0),
                                     p=0.25),
        tio.RandomGamma(log_gamma=(-0.4, 0.4), p=0.8),
        tio.RandomBiasField(coefficients=0.4, order=2, p=0.4),
        tio.RandomBlur(std=(0, 1.5, 0, 1.5, 0, 0), p=0.4),
        tio.RandomNoise(std=(0, 0.05), p=0.5),
    ])


def random_resized_crop(image: torch.Tensor, scale: tuple[float, float],
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """(C, H, W) -> (C, H, W): a random crop of ``scale`` of the area, resized back."""
    _, h, w = image.shape
    area = h * w * float(torch.empty(1).uniform_(*scale))
    aspect = math.exp(float(torch.empty(1).uniform_(math.log(ratio[0]), math.log(ratio[1]))))
    ch = max(1, min(h, round(math.sqrt(area / aspect))))
    cw = max(1, min(w, round(math.sqrt(area * aspect))))
    top = int(torch.randint(0, h - ch + 1, (1,)))
    left = int(torch.randint(0, w - cw + 1, (1,)))
    crop = image[:, top:top + ch, left:left + cw]
    return F.interpolate(crop[None], size=(h, w), mode="bilinear", align_corners=False)[0]


class UltrasoundViews:
    """``views(images)``: one augmented view of each image of a (B, 1, H, W) batch in [0, 1]."""

    def __init__(self, crop_scale: tuple[float, float] = (0.4, 1.0), size: int = 128):
        self.crop_scale = tuple(crop_scale)
        self.transform = ultrasound_transforms(size)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.stack([self._one(image) for image in images])

    def _one(self, image: torch.Tensor) -> torch.Tensor:
        import torchio as tio

        cropped = random_resized_crop(image, self.crop_scale)
        subject = tio.Subject(image=tio.ScalarImage(tensor=cropped[..., None]))
        return self.transform(subject)["image"].data[..., 0].float().clamp(0, 1)
