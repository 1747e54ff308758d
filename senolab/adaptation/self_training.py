"""FixMatch-style self-training on the target site.

Sohn et al., "FixMatch: Simplifying Semi-Supervised Learning with Consistency and
Confidence", NeurIPS 2020. For each unlabelled target image the model predicts on a
weakly augmented view; predictions above a confidence threshold become hard pseudo-
labels, and the model is trained to predict them on a strongly augmented view of the
same image. The loss is averaged over every target image (pixel), confident or not, as
in the paper, so it grows as more of the target site becomes confident.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch.nn import functional as F

from senolab.adaptation.augment import strong_augment, weak_augment
from senolab.adaptation.base import AdaptationMethod, concat_batches, register_method, split_outputs
from senolab.adaptation.entropy import head_outputs


def classification_pseudo_label_loss(weak_logits: torch.Tensor, strong_logits: torch.Tensor,
                                     threshold: float) -> torch.Tensor:
    """Cross-entropy of the strong view on the weak view's confident argmax."""
    confidence, pseudo = F.softmax(weak_logits.detach(), dim=1).max(1)
    per_image = F.cross_entropy(strong_logits, pseudo, reduction="none")
    return (per_image * (confidence >= threshold)).mean()


def segmentation_pseudo_label_loss(weak_logits: torch.Tensor, strong_logits: torch.Tensor,
                                   threshold: float) -> torch.Tensor:
    """Pixel-wise binary cross-entropy of the strong view on the weak view's confident pixels."""
    p = torch.sigmoid(weak_logits.detach())
    confident = torch.maximum(p, 1 - p) >= threshold
    per_pixel = F.binary_cross_entropy_with_logits(strong_logits, (p > 0.5).to(strong_logits), reduction="none")
    return (per_pixel * confident).mean()


PSEUDO_LABEL_LOSSES = {"cls": classification_pseudo_label_loss, "seg": segmentation_pseudo_label_loss}


@register_method("self_training")
class SelfTraining(AdaptationMethod):
    """Confidence-thresholded pseudo-labels, weak view to strong view (FixMatch).

    Works on every prediction head the model has: class logits and, pixel by pixel,
    segmentation logits (the strong view is intensity-only on top of the weak view, so
    pixels correspond). The augmentation draws of a step depend only on ``(seed, step)``,
    so a run resumed from a checkpoint draws the same views as one that never stopped.
    """

    transductive = True
    needs_target = True
    loss_names: ClassVar[tuple[str, ...]] = ("self_training_cls", "self_training_seg")

    def __init__(self, weight: float = 1.0, threshold: float = 0.95, n_ops: int = 2, seed: int = 0):
        super().__init__()
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"self_training threshold must be in (0, 1], got {threshold}")
        self.weight, self.threshold, self.n_ops, self.seed = float(weight), float(threshold), int(n_ops), int(seed)

    def _losses(self, model, source_batch, source_out, target_batch, target_out, step, total_steps):
        images = target_batch["image"]
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        weak = weak_augment(images.cpu(), generator).to(images)
        strong = strong_augment(weak.cpu(), generator, self.n_ops).to(images)
        # One forward over both views: BatchNorm sees them as one batch, as in FixMatch.
        views = model(concat_batches(target_batch.replace(image=weak), target_batch.replace(image=strong)))
        weak_out, strong_out = split_outputs(views, len(images))
        strong_heads = head_outputs(strong_out, self.name)
        return {
            f"self_training_{head}": self.weight * PSEUDO_LABEL_LOSSES[head](weak_logits, strong_heads[head], self.threshold)
            for head, weak_logits in head_outputs(weak_out, self.name).items()
        }
