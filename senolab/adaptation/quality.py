"""How good is an image translation between sites? Measured, not assumed.

:func:`translation_quality` takes any source-to-target image mapping (a CycleGAN's
``translate``, histogram matching, ...) and reports three things:

- lesion survival: a fixed segmenter's masks on translated images against its masks on
  the originals (Dice agreement) and, given ground-truth masks, its Dice on both;
- site confusion: a site classifier (logistic regression on intensity and texture
  features) trained on real source versus real target images, evaluated on held-out
  target versus held-out source images before and after translation; balanced accuracy
  0.5 means the sites can no longer be told apart;
- intensity distance: the Wasserstein-1 distance between the pooled grey-level
  histograms of the source (before / after translation) and the target.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Mapping

import numpy as np
import torch
from scipy.stats import wasserstein_distance
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch.nn import functional as F

Translate = Callable[[torch.Tensor], torch.Tensor]
Segmenter = Callable[[torch.Tensor], torch.Tensor | Mapping[str, torch.Tensor]]


@dataclass
class TranslationQuality:
    site_accuracy_before: float
    site_accuracy_after: float
    intensity_distance_before: float
    intensity_distance_after: float
    dice_agreement: float | None  # segmenter on translated vs on original images
    dice_original: float | None  # segmenter on originals vs ground truth
    dice_translated: float | None  # segmenter on translations vs ground truth
    n_source: int
    n_target: int

    def as_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------- features
def _gradient_magnitude(images: torch.Tensor) -> torch.Tensor:
    dy = images[..., 1:, :-1] - images[..., :-1, :-1]
    dx = images[..., :-1, 1:] - images[..., :-1, :-1]
    return (dx.pow(2) + dy.pow(2)).sqrt()


def _local_std(images: torch.Tensor) -> torch.Tensor:
    mean = F.avg_pool2d(images, 3, stride=1)
    return (F.avg_pool2d(images.pow(2), 3, stride=1) - mean.pow(2)).clamp_min(0).sqrt()


def site_features(images: torch.Tensor, bins: int = 32) -> np.ndarray:
    """Per image: a grey-level histogram, intensity quantiles and speckle/edge texture.

    Simple on purpose: a site's look in ultrasound is mostly gain, dynamic range and
    speckle, which these capture; a translation that fools them has matched those.
    """
    images = images.detach().float().cpu()
    flat = images.flatten(1)
    histogram = torch.stack([torch.histc(x, bins, 0.0, 1.0) for x in flat]) / flat.shape[1]
    quantiles = torch.quantile(flat, torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95]), dim=1).T
    gradient, speckle = _gradient_magnitude(images).flatten(1), _local_std(images).flatten(1)
    texture = torch.stack([flat.mean(1), flat.std(1), gradient.mean(1), gradient.std(1),
                           speckle.mean(1), speckle.std(1)], dim=1)
    return torch.cat([histogram, quantiles, texture], dim=1).numpy()


def site_classifier_accuracy(train_source: torch.Tensor, train_target: torch.Tensor,
                             test_source: torch.Tensor, test_target: torch.Tensor) -> float:
    """Balanced accuracy of logistic regression (source 0 vs target 1) on the test images."""
    x = np.concatenate([site_features(train_source), site_features(train_target)])
    y = np.r_[np.zeros(len(train_source)), np.ones(len(train_target))]
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    classifier.fit(x, y)
    x_test = np.concatenate([site_features(test_source), site_features(test_target)])
    y_test = np.r_[np.zeros(len(test_source)), np.ones(len(test_target))]
    return float(balanced_accuracy_score(y_test, classifier.predict(x_test)))


def intensity_distance(images_a: torch.Tensor, images_b: torch.Tensor, bins: int = 256) -> float:
    """Wasserstein-1 distance between the pooled grey-level histograms of two image sets."""
    centres = (np.arange(bins) + 0.5) / bins
    hist_a = torch.histc(images_a.detach().float().cpu().clamp(0, 1), bins, 0.0, 1.0).numpy()
    hist_b = torch.histc(images_b.detach().float().cpu().clamp(0, 1), bins, 0.0, 1.0).numpy()
    return float(wasserstein_distance(centres, centres, hist_a, hist_b))


# ---------------------------------------------------------------------------- Dice
def _masks(segmenter: Segmenter, images: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for chunk in images.split(batch_size):
            logits = segmenter(chunk)
            if isinstance(logits, Mapping):
                logits = logits["seg_logits"]
            out.append(logits > 0)
    return torch.cat(out)


def dice_per_image(prediction: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Dice of boolean (N,1,H,W) masks per image; 1 where both are empty."""
    prediction, reference = prediction.flatten(1).float(), reference.flatten(1).float()
    overlap, total = (prediction * reference).sum(1), prediction.sum(1) + reference.sum(1)
    return torch.where(total > 0, 2 * overlap / total.clamp_min(1), torch.ones_like(total))


# ------------------------------------------------------------------------- the report
def translation_quality(translate: Translate, source_images: torch.Tensor, target_images: torch.Tensor,
                        segmenter: Segmenter | None = None, source_masks: torch.Tensor | None = None,
                        holdout: float = 0.5, seed: int = 0) -> TranslationQuality:
    """Measure a source-to-target translation (see the module docstring).

    ``segmenter`` maps (B,1,H,W) images to segmentation logits (or a model output dict
    with ``seg_logits``); without it the Dice fields are None. The site classifier trains
    on a ``1 - holdout`` share of each site's images and is tested on the rest.
    """
    for name, images in (("source_images", source_images), ("target_images", target_images)):
        if images.ndim != 4 or images.shape[1] != 1 or len(images) < 4:
            raise ValueError(f"{name}: expected (N,1,H,W) with N >= 4, got {tuple(images.shape)}")
    if source_masks is not None and source_masks.shape != source_images.shape:
        raise ValueError(f"source_masks: expected shape {tuple(source_images.shape)}, got {tuple(source_masks.shape)}")
    translated = torch.cat([translate(chunk) for chunk in source_images.split(16)])
    if translated.shape != source_images.shape:
        raise ValueError(f"translate changed the image shape: {tuple(source_images.shape)} -> {tuple(translated.shape)}")
    generator = torch.Generator().manual_seed(seed)
    s_train, s_test = _split(len(source_images), holdout, generator)
    t_train, t_test = _split(len(target_images), holdout, generator)
    dice = _dice_fields(segmenter, source_images, translated, source_masks)
    return TranslationQuality(
        site_accuracy_before=site_classifier_accuracy(source_images[s_train], target_images[t_train],
                                                      source_images[s_test], target_images[t_test]),
        site_accuracy_after=site_classifier_accuracy(source_images[s_train], target_images[t_train],
                                                     translated[s_test], target_images[t_test]),
        intensity_distance_before=intensity_distance(source_images, target_images),
        intensity_distance_after=intensity_distance(translated, target_images),
        **dice,
        n_source=len(source_images),
        n_target=len(target_images),
    )


def _split(n: int, holdout: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.randperm(n, generator=generator)
    n_test = min(max(1, round(holdout * n)), n - 1)
    return order[n_test:], order[:n_test]


def _dice_fields(segmenter, originals, translated, masks) -> dict[str, float | None]:
    if segmenter is None:
        return {"dice_agreement": None, "dice_original": None, "dice_translated": None}
    on_original, on_translated = _masks(segmenter, originals), _masks(segmenter, translated)
    with_truth = masks is not None
    return {
        "dice_agreement": float(dice_per_image(on_translated, on_original).mean()),
        "dice_original": float(dice_per_image(on_original, masks > 0.5).mean()) if with_truth else None,
        "dice_translated": float(dice_per_image(on_translated, masks > 0.5).mean()) if with_truth else None,
    }
