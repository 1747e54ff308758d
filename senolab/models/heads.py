"""Task heads: classification, segmentation, lesion box. Registered by task name.

A head is built from the encoder (for its channel counts) and the dimension of the
embedding it will read (the encoder's, or a fusion module's), and maps an
:class:`EncoderOutput` to one entry of the model output dict (``output_key``). The task
names (``cls``, ``seg``, ``box``) are also the keys of the loss dict and of the balancer's
per-task weights.
"""
from __future__ import annotations

import torch
from torch import nn

from senolab.models.encoders import Encoder, EncoderOutput
from senolab.registry import Registry

HEADS: Registry = Registry("head")


@HEADS.register("cls")
class ClassificationHead(nn.Module):
    """Dropout + linear layer on the (fused) embedding -> ``logits`` (B, num_classes)."""

    output_key = "logits"

    def __init__(self, encoder: Encoder, embedding_dim: int, num_classes: int = 3, dropout: float = 0.1):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"cls head: num_classes must be at least 2; got {num_classes}")
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(embedding_dim, num_classes))

    def forward(self, encoded: EncoderOutput) -> torch.Tensor:
        return self.classifier(encoded.embedding)


@HEADS.register("seg")
class SegmentationHead(nn.Module):
    """1x1 conv on the decoder features -> ``seg_logits`` (B, 1, H, W) at input resolution."""

    output_key = "seg_logits"

    def __init__(self, encoder: Encoder, embedding_dim: int):
        super().__init__()
        if not encoder.has_decoder:
            raise ValueError(
                f"seg head: the {type(encoder).__name__} was built without a decoder; "
                "build it with decoder=True (build_model does this when 'seg' is among the heads)"
            )
        self.conv = nn.Conv2d(encoder.decoder_channels, 1, kernel_size=1)

    def forward(self, encoded: EncoderOutput) -> torch.Tensor:
        return self.conv(encoded.decoder_features)


# Smallest box extent (a fraction of the image side; 0.13 px at 128 px): keeps x0 < x1 true
# in float32 where a width of 1e-9 would round away.
MIN_BOX_SIZE = 1e-3


def box_from_params(raw: torch.Tensor) -> torch.Tensor:
    """(..., 4) unconstrained -> (..., 4) normalised xyxy with 0 <= x0 < x1 <= 1, same for y.

    Per axis, ``size = MIN_BOX_SIZE + (1 - MIN_BOX_SIZE) * sigmoid(b)`` is the box extent
    and ``pos = sigmoid(a)`` where the box sits in the room left: ``x0 = pos * (1 - size)``,
    ``x1 = x0 + size``. This maps onto every valid box inside the image (of extent at least
    ``MIN_BOX_SIZE``) exactly once, so no prediction is ever inverted or out of the image,
    and the zero output is the central box of about half the image side.
    """
    pos = torch.sigmoid(raw[..., :2])
    size = MIN_BOX_SIZE + (1 - MIN_BOX_SIZE) * torch.sigmoid(raw[..., 2:])
    low = pos * (1 - size)
    return torch.cat([low, low + size], dim=-1)


@HEADS.register("box")
class BoxHead(nn.Module):
    """MLP on a ``grid`` x ``grid`` pooling of the deepest feature map -> ``bbox`` (B, 4).

    It reads the feature map, not the embedding: where the lesion is needs the spatial
    layout that global pooling (and tabular fusion) discards.
    """

    output_key = "bbox"

    def __init__(self, encoder: Encoder, embedding_dim: int, grid: int = 4, reduced: int = 32, hidden: int = 128):
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(encoder.feature_channels, reduced, 1), nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.mlp = nn.Sequential(
            nn.Flatten(), nn.Linear(reduced * grid * grid, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 4)
        )

    def forward(self, encoded: EncoderOutput) -> torch.Tensor:
        return box_from_params(self.mlp(self.pool(self.reduce(encoded.feature_map))))
