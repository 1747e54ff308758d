"""DANN: a domain classifier on the embedding, trained through a gradient reversal layer.

Ganin & Lempitsky, "Unsupervised Domain Adaptation by Backpropagation", ICML 2015, and
Ganin et al., "Domain-Adversarial Training of Neural Networks", JMLR 2016. The classifier
learns to tell source (0) from target (1) embeddings; the reversal layer hands the
encoder the negated, scaled gradient, so the encoder learns to make the sites
indistinguishable. The scale follows the paper's schedule ``2 / (1 + exp(-10 p)) - 1``
over training progress ``p`` in [0, 1], which keeps the noisy early domain signal small.
"""
from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from senolab.adaptation.base import AdaptationMethod, register_method, require_output, to_model_device


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.scale * grad, None


def reverse_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity forward; the backward pass multiplies the gradient by ``-scale``."""
    return _ReverseGradient.apply(x, float(scale))


def ganin_lambda(step: int, total_steps: int, gamma: float = 10.0) -> float:
    """The DANN schedule ``2 / (1 + exp(-gamma p)) - 1`` with ``p = step / total_steps``."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    progress = min(max(step / total_steps, 0.0), 1.0)
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


class DomainClassifier(nn.Sequential):
    """Two hidden ReLU layers to one logit: source (0) versus target (1)."""

    def __init__(self, in_features: int, hidden: int = 256):
        super().__init__(
            nn.Linear(in_features, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, 1),
        )


@register_method("dann")
class DANN(AdaptationMethod):
    """Domain-adversarial training (Ganin et al. 2016) on the model's embedding.

    The domain classifier is built in :meth:`prepare` (its input size is the embedding
    size of the model) and is one of this module's parameters: the engine optimises it
    together with the model.
    """

    transductive = True
    needs_target = True
    target_forward = True
    loss_names: ClassVar[tuple[str, ...]] = ("dann",)

    def __init__(self, weight: float = 1.0, hidden: int = 256, gamma: float = 10.0):
        super().__init__()
        self.weight, self.hidden, self.gamma = float(weight), int(hidden), float(gamma)
        self.classifier: DomainClassifier | None = None

    def _prepare(self, model, source_loader, target_loader):
        self.classifier = DomainClassifier(self._embedding_size(model, source_loader), self.hidden)

    def _embedding_size(self, model: nn.Module, source_loader) -> int:
        batch = to_model_device(next(iter(source_loader)), model)
        was_training = model.training
        model.eval()  # a dry run must not move BatchNorm statistics
        try:
            with torch.no_grad():
                embedding = require_output(model(batch), "embedding", self.name)
        finally:
            model.train(was_training)
        return int(embedding.shape[1])

    def _losses(self, model, source_batch, source_out, target_batch, target_out, step, total_steps):
        if self.classifier is None:
            raise RuntimeError("dann: call prepare(model, source_loader, target_loader) before training")
        source = require_output(source_out, "embedding", self.name)
        target = require_output(target_out, "embedding", self.name)
        features = reverse_gradient(torch.cat([source, target]), ganin_lambda(step, total_steps, self.gamma))
        domain = torch.cat([torch.zeros(len(source)), torch.ones(len(target))]).to(features)
        logits = self.classifier(features).squeeze(1)
        return {"dann": self.weight * F.binary_cross_entropy_with_logits(logits, domain)}
