"""Feature alignment: Deep CORAL and multi-kernel MMD on the model's embedding.

Both add a discrepancy between the source and target embeddings of a training step to
the task loss, so the encoder learns features whose statistics match across sites.
"""
from __future__ import annotations

from typing import ClassVar, Mapping, Sequence

import torch

from senolab.adaptation.base import AdaptationMethod, register_method, require_output


def _check_features(source: torch.Tensor, target: torch.Tensor, what: str) -> None:
    if source.ndim != 2 or target.ndim != 2 or source.shape[1] != target.shape[1]:
        raise ValueError(f"{what} needs (N,D) source and target features with the same D, "
                         f"got {tuple(source.shape)} and {tuple(target.shape)}")
    if len(source) < 2 or len(target) < 2:
        raise ValueError(f"{what} needs at least 2 samples per domain, got {len(source)} and {len(target)}")


def covariance(features: torch.Tensor) -> torch.Tensor:
    """Unbiased (N-1) covariance of (N,D) features."""
    centred = features - features.mean(0, keepdim=True)
    return centred.T @ centred / (len(features) - 1)


def coral_loss(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Deep CORAL: ||C_s - C_t||_F^2 / (4 d^2) between the feature covariances.

    Sun & Saenko, "Deep CORAL: Correlation Alignment for Deep Domain Adaptation",
    ECCV Workshops 2016, eq. (1).
    """
    _check_features(source, target, "CORAL")
    d = source.shape[1]
    return (covariance(source) - covariance(target)).pow(2).sum() / (4 * d * d)


DEFAULT_BANDWIDTHS = (0.25, 0.5, 1.0, 2.0, 4.0)


def mmd_loss(source: torch.Tensor, target: torch.Tensor,
             bandwidth_multipliers: Sequence[float] = DEFAULT_BANDWIDTHS) -> torch.Tensor:
    """Squared multi-kernel MMD with Gaussian kernels (biased V-statistic, >= 0).

    The kernel is the mean of ``exp(-||x - y||^2 / (m * s))`` over the multipliers ``m``,
    where ``s`` is the median pairwise squared distance of the pooled features (the
    median heuristic; held constant in the gradient). Long et al., "Learning Transferable
    Features with Deep Adaptation Networks" (DAN), ICML 2015; Gretton et al., "A Kernel
    Two-Sample Test", JMLR 2012.
    """
    _check_features(source, target, "MMD")
    pooled = torch.cat([source, target])
    sq_dist = torch.cdist(pooled, pooled).pow(2)
    off_diagonal = sq_dist[~torch.eye(len(pooled), dtype=torch.bool, device=pooled.device)]
    median = off_diagonal.detach().median().clamp_min(1e-12)
    kernel = sum(torch.exp(-sq_dist / (m * median)) for m in bandwidth_multipliers) / len(bandwidth_multipliers)
    n = len(source)
    return kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean()


class _EmbeddingAlignment(AdaptationMethod):
    """A discrepancy between the source and target embeddings, weighted."""

    transductive = True
    needs_target = True
    target_forward = True

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = float(weight)

    def discrepancy(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _losses(self, model, source_batch, source_out: Mapping[str, torch.Tensor], target_batch,
                target_out: Mapping[str, torch.Tensor], step, total_steps):
        source = require_output(source_out, "embedding", self.name)
        target = require_output(target_out, "embedding", self.name)
        return {self.name: self.weight * self.discrepancy(source, target)}


@register_method("coral")
class CORAL(_EmbeddingAlignment):
    """Deep CORAL (Sun & Saenko 2016): align the embedding covariances of the two sites.

    The weight is the paper's lambda and depends on the embedding's scale: with the default
    U-Net's 256-d embeddings the unweighted loss is ~1e-4 at the start of training, so the
    default of 1 barely moves the model; ``configs/study_loso.yaml`` uses 1e4, which makes it
    the size of the task loss there (the paper's rule for choosing lambda).
    """

    loss_names: ClassVar[tuple[str, ...]] = ("coral",)

    def discrepancy(self, source, target):
        return coral_loss(source, target)


@register_method("mmd")
class MMD(_EmbeddingAlignment):
    """DAN-style multi-kernel MMD (Long et al. 2015) between the embeddings of the sites.

    Only the shared embedding is aligned (DAN also aligns the task-specific layers; the
    heads of the multi-task model are too small for that to matter here).
    """

    loss_names: ClassVar[tuple[str, ...]] = ("mmd",)

    def __init__(self, weight: float = 1.0, bandwidth_multipliers: Sequence[float] = DEFAULT_BANDWIDTHS):
        super().__init__(weight)
        self.bandwidth_multipliers = tuple(float(m) for m in bandwidth_multipliers)

    def discrepancy(self, source, target):
        return mmd_loss(source, target, self.bandwidth_multipliers)
