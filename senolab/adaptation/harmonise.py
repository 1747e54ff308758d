"""Intensity harmonisation baselines: the images change, the task model does not.

- ``histogram_matching``: each source image's grey-level distribution is mapped onto the
  target site's pooled distribution (transductive: the reference comes from unlabelled
  target images). Classic CDF matching (Gonzalez & Woods, "Digital Image Processing",
  ch. 3; as in ``skimage.exposure.match_histograms``); for MRI, Nyúl & Udupa 1999.
- ``per_image_standardisation``: each image (source or target) to zero mean and unit
  variance over its pixels; uses no target data, so it is not transductive.
- ``cyclegan``: source images translated to the target site's appearance by a CycleGAN
  trained on unlabelled images of both sites (see :mod:`senolab.adaptation.cyclegan`).
"""
from __future__ import annotations

from typing import Iterable

import torch
from tqdm.auto import tqdm

from senolab.adaptation.base import AdaptationMethod, register_method
from senolab.adaptation.cyclegan import CycleGAN


def interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation like ``numpy.interp`` (``xp`` increasing; clamped ends)."""
    index = torch.searchsorted(xp, x).clamp(1, len(xp) - 1)
    x0, x1, f0, f1 = xp[index - 1], xp[index], fp[index - 1], fp[index]
    weight = ((x - x0) / (x1 - x0).clamp_min(1e-12)).clamp(0, 1)
    return f0 + weight * (f1 - f0)


class PooledHistogram:
    """A histogram of pixel values accumulated over many images, on a fixed range."""

    def __init__(self, bins: int = 1024, value_range: tuple[float, float] = (0.0, 1.0)):
        self.bins, self.low, self.high = int(bins), float(value_range[0]), float(value_range[1])
        self.counts = torch.zeros(self.bins, dtype=torch.float64)

    def add(self, images: torch.Tensor, source: str = "images") -> None:
        images = images.detach().float().cpu()
        if images.min() < self.low - 1e-6 or images.max() > self.high + 1e-6:
            raise ValueError(f"{source}: pixel values [{images.min():.3g}, {images.max():.3g}] fall outside "
                             f"the histogram range [{self.low}, {self.high}]")
        self.counts += torch.histc(images, self.bins, self.low, self.high).double()

    def quantile_function(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(cumulative fractions, bin centres) of the non-empty bins, for :func:`interp`."""
        if self.counts.sum() == 0:
            raise ValueError("the pooled histogram is empty: no pixel was added")
        width = (self.high - self.low) / self.bins
        centres = self.low + width * (torch.arange(self.bins, dtype=torch.float64) + 0.5)
        filled = self.counts > 0
        return (self.counts[filled].cumsum(0) / self.counts.sum()).float(), centres[filled].float()


def match_histogram(image: torch.Tensor, reference_quantiles: torch.Tensor,
                    reference_values: torch.Tensor) -> torch.Tensor:
    """Map ``image``'s empirical CDF onto a reference quantile function (equal values stay equal)."""
    values, inverse, counts = torch.unique(image.flatten(), return_inverse=True, return_counts=True)
    quantiles = counts.cumsum(0).float() / image.numel()
    mapped = interp(quantiles, reference_quantiles.to(image.device), reference_values.to(image.device))
    return mapped[inverse].view_as(image).to(image.dtype)


@register_method("histogram_matching")
class HistogramMatching(AdaptationMethod):
    """Match every source image's histogram to the target site's pooled histogram."""

    transductive = True

    def __init__(self, bins: int = 1024, value_range: tuple[float, float] = (0.0, 1.0)):
        super().__init__()
        self.bins, self.value_range = int(bins), (float(value_range[0]), float(value_range[1]))
        self.register_buffer("reference_quantiles", torch.empty(0))
        self.register_buffer("reference_values", torch.empty(0))

    def _prepare(self, model, source_loader, target_loader):
        if target_loader is None:
            raise ValueError("histogram_matching needs the unlabelled target loader in prepare()")
        self.fit_reference(batch["image"] for batch in target_loader)

    def fit_reference(self, target_images: Iterable[torch.Tensor]) -> None:
        """Pool the histogram of the target images (an iterable of (B,1,H,W) batches)."""
        pooled = PooledHistogram(self.bins, self.value_range)
        for images in tqdm(target_images, desc="target histogram", leave=False):
            pooled.add(images, "target images")
        self.reference_quantiles, self.reference_values = pooled.quantile_function()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The reference's length is only known once fitted: take the saved one's shape.
        for name in ("reference_quantiles", "reference_values"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def transform_images(self, images, domain):
        if domain == "target":
            return images
        if self.reference_values.numel() == 0:
            raise RuntimeError("histogram_matching: call prepare() (or fit_reference) before harmonising images")
        return torch.stack([match_histogram(image, self.reference_quantiles, self.reference_values)
                            for image in images])


@register_method("per_image_standardisation")
class PerImageStandardisation(AdaptationMethod):
    """Each image to zero mean and unit standard deviation over its own pixels."""

    def __init__(self, eps: float = 1e-6):
        super().__init__()
        self.eps = float(eps)

    def transform_images(self, images, domain):
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        std = images.std(dim=(1, 2, 3), keepdim=True)
        return (images - mean) / (std + self.eps)


@register_method("cyclegan")
class CycleGANHarmonisation(AdaptationMethod):
    """Train the task model on source images translated to the target site's appearance.

    :meth:`prepare` fits a :class:`~senolab.adaptation.cyclegan.CycleGAN` on (up to
    ``max_images`` of) the unlabelled images of both loaders; source images are then
    translated on the fly, at training and at source validation; target images are used
    as they are. ``cyclegan`` holds the keyword arguments of the CycleGAN.
    """

    transductive = True

    def __init__(self, steps: int = 2000, batch_size: int = 1, max_images: int = 1000, seed: int = 0,
                 **cyclegan):
        super().__init__()
        self.steps, self.batch_size, self.max_images, self.seed = int(steps), int(batch_size), int(max_images), seed
        self.translator = CycleGAN(**cyclegan)

    def _prepare(self, model, source_loader, target_loader):
        if target_loader is None:
            raise ValueError("cyclegan needs the unlabelled target loader in prepare()")
        self.translator.fit(_collect_images(source_loader, self.max_images, "source"),
                            _collect_images(target_loader, self.max_images, "target"),
                            steps=self.steps, batch_size=self.batch_size, seed=self.seed)

    def transform_images(self, images, domain):
        if domain == "target":
            return images
        return self.translator.translate(images, "source_to_target")


def _collect_images(loader, limit: int, domain: str) -> torch.Tensor:
    batches, n = [], 0
    for batch in loader:
        batches.append(batch["image"].detach().cpu())
        n += len(batches[-1])
        if n >= limit:
            break
    if not batches:
        raise ValueError(f"cyclegan: the {domain} loader yielded no image")
    return torch.cat(batches)[:limit]
