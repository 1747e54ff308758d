"""Entropy minimisation on unlabelled target predictions.

Grandvalet & Bengio, "Semi-supervised Learning by Entropy Minimization", NIPS 2004;
used for domain adaptation by Long et al. (RTN, NIPS 2016) for classification and by
Vu et al. (ADVENT, CVPR 2019) pixel-wise for segmentation. Confident target predictions
push decision boundaries into low-density regions of the target site.
"""
from __future__ import annotations

from typing import ClassVar, Mapping

import torch
from torch.nn import functional as F

from senolab.adaptation.base import AdaptationMethod, register_method


def prediction_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of softmax(logits) per sample: (B,C) -> (B,)."""
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"class logits must be (B,C) with C >= 2, got {tuple(logits.shape)}")
    log_p = F.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(1)


def pixel_entropy(seg_logits: torch.Tensor) -> torch.Tensor:
    """Binary entropy (nats) of sigmoid(seg_logits) per pixel, same shape as the input."""
    p = torch.sigmoid(seg_logits)
    return -(p * F.logsigmoid(seg_logits) + (1 - p) * F.logsigmoid(-seg_logits))


def head_outputs(outputs: Mapping[str, torch.Tensor], method: str) -> dict[str, torch.Tensor]:
    """The prediction heads a target-prediction method works on: ``cls`` and/or ``seg``."""
    heads = {short: outputs[key] for short, key in (("cls", "logits"), ("seg", "seg_logits")) if key in outputs}
    if not heads:
        raise KeyError(f"adaptation method {method!r} needs the model output 'logits' or 'seg_logits'; "
                       f"the model returned {sorted(outputs)}")
    return heads


@register_method("entropy")
class EntropyMinimisation(AdaptationMethod):
    """Mean prediction entropy on the target batch, per head, weighted by ``weight``."""

    transductive = True
    needs_target = True
    target_forward = True
    loss_names: ClassVar[tuple[str, ...]] = ("entropy_cls", "entropy_seg")

    def __init__(self, weight: float = 0.1):
        super().__init__()
        self.weight = float(weight)

    def _losses(self, model, source_batch, source_out, target_batch, target_out, step, total_steps):
        entropy = {"cls": prediction_entropy, "seg": pixel_entropy}
        return {f"entropy_{head}": self.weight * entropy[head](out).mean()
                for head, out in head_outputs(target_out, self.name).items()}
