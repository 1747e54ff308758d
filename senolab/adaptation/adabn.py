"""AdaBN: re-estimate BatchNorm statistics on the target site before inference.

Li, Wang, Shi, Liu & Hou, "Revisiting Batch Normalization For Practical Domain
Adaptation", ICLR Workshop 2017 (Pattern Recognition 2018). Training is plain ERM; at
inference every BatchNorm layer's running mean and variance are replaced by those of the
unlabelled target images, so each layer normalises target features with target
statistics. Nothing else changes: weights, affine parameters and other buffers stay.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from tqdm.auto import tqdm

from senolab.adaptation.base import AdaptationMethod, register_method, to_model_device

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def tracked_batch_norms(model: nn.Module) -> list[nn.Module]:
    """The BatchNorm layers of ``model`` that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, BATCH_NORMS) and m.track_running_stats]


@torch.no_grad()
def recompute_batch_norm_statistics(model: nn.Module, batches, max_batches: int | None = None) -> nn.Module:
    """A copy of ``model`` (in eval mode) whose BatchNorm running statistics are the
    cumulative average over ``batches`` (batch dicts, moved to the model's device)."""
    adapted = copy.deepcopy(model).eval()
    norms = tracked_batch_norms(adapted)
    if not norms:
        raise ValueError(f"AdaBN needs BatchNorm layers with running statistics; {type(model).__name__} has none")
    momenta = [bn.momentum for bn in norms]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: every target batch counts equally
        bn.train()  # only the norms: dropout and the rest stay in eval mode
    seen = 0
    for batch in tqdm(batches, desc="AdaBN target statistics", leave=False, total=_length(batches, max_batches)):
        if max_batches is not None and seen >= max_batches:
            break
        adapted(to_model_device(batch, adapted))
        seen += 1
    if seen == 0:
        raise ValueError("AdaBN: the target loader yielded no batch")
    for bn, momentum in zip(norms, momenta):
        bn.momentum = momentum
        bn.eval()
    return adapted


def _length(batches, max_batches: int | None) -> int | None:
    try:
        n = len(batches)
    except TypeError:
        return max_batches
    return n if max_batches is None else min(n, max_batches)


@register_method("adabn")
class AdaBN(AdaptationMethod):
    """ERM training; target BatchNorm statistics at inference (Li et al. 2017)."""

    transductive = True
    trains_as = "erm"

    def __init__(self, max_batches: int | None = None):
        super().__init__()
        self.max_batches = max_batches

    def _adapt_for_inference(self, model, target_loader):
        return recompute_batch_norm_statistics(model, target_loader, self.max_batches)
