"""A cross-modal transformer: image tokens and tabular tokens attend to each other.

The tabular stream starts with a learned [CLS] token followed by one token per clinical
field and per radiomics class. Each of ``depth`` layers (pre-norm, residual):

1. tabular self-attention (missing tokens key-padded out);
2. image tokens attend to the tabular stream, and the tabular stream to the image tokens
   (both from the layer's input, so neither direction sees the other's update first);
3. a feed-forward block on each stream.

The fused [CLS] output feeds the heads. [CLS] is never masked, so a case without any
tabular input still has a key to attend to and its image tokens reach [CLS] through
step 2: the image path alone, with no NaN.

Image tokens are the encoder's own where it has them (ViT, hybrid); a CNN's deepest
feature map is average-pooled to at most ``image_grid`` x ``image_grid`` and flattened into
tokens with fixed 2D sine-cosine positions.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from senolab.fusion.base import FUSIONS, Fusion, require_tabular
from senolab.fusion.tabular import TabularEncoder, TabularInputs
from senolab.models.encoders import EncoderOutput
from senolab.models.hybrid import sincos_2d


class FeedForward(nn.Sequential):
    def __init__(self, dim: int, dropout: float):
        super().__init__(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim))


class Attention(nn.Module):
    """Pre-norm multi-head attention of ``queries`` over ``keys`` (which are also the values)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.norm_q, self.norm_kv = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, padding: torch.Tensor | None = None) -> torch.Tensor:
        kv = self.norm_kv(keys)
        out, _ = self.attention(self.norm_q(queries), kv, kv, key_padding_mask=padding, need_weights=False)
        return out


class CrossModalLayer(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.tabular_self = Attention(dim, heads, dropout)
        self.image_from_tabular = Attention(dim, heads, dropout)
        self.tabular_from_image = Attention(dim, heads, dropout)
        self.image_ff, self.tabular_ff = FeedForward(dim, dropout), FeedForward(dim, dropout)

    def forward(self, image: torch.Tensor, tabular: torch.Tensor, padding: torch.Tensor):
        tabular = tabular + self.tabular_self(tabular, tabular, padding)
        image, tabular = (image + self.image_from_tabular(image, tabular, padding),
                          tabular + self.tabular_from_image(tabular, image))
        return image + self.image_ff(image), tabular + self.tabular_ff(tabular)


@FUSIONS.register("cross_attention")
class CrossAttentionFusion(Fusion):
    """Cross-modal transformer with a fused [CLS] token (see the module docstring).

    Options: ``layers`` cross-modal layers; ``image_grid`` (CNN feature maps are pooled to
    at most this many positions per side); ``dim``, ``heads``, ``dropout``; and for the
    tabular tokens ``radiomics_mode``, ``modality_dropout``, ``field_dropout`` (see
    :class:`~senolab.fusion.tabular.TabularEncoder`).
    """

    def __init__(self, image_dim: int, inputs: TabularInputs, num_classes: int = 2, layers: int = 2,
                 image_grid: int = 8, dim: int = 64, heads: int = 4, dropout: float = 0.1,
                 radiomics_mode: str = "classes", modality_dropout: float = 0.0, field_dropout: float = 0.0):
        super().__init__()
        require_tabular("cross_attention", inputs)
        if dim % heads or dim % 4:
            raise ValueError(f"cross_attention: dim ({dim}) must be divisible by heads ({heads}) and by 4")
        self.image_grid, self.dim = image_grid, dim
        self.tabular = TabularEncoder(inputs, dim, radiomics_mode, modality_dropout, field_dropout)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.image_projection = nn.Linear(image_dim, dim)
        self.layers = nn.ModuleList(CrossModalLayer(dim, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.embedding_dim = dim

    def fuse(self, encoded: EncoderOutput, batch: Mapping) -> torch.Tensor:
        rows, device = encoded.embedding.shape[0], encoded.embedding.device
        image = self.image_tokens(encoded)
        tokens = self.tabular(batch, rows, device)
        tabular = torch.cat([self.cls.expand(rows, -1, -1), tokens.tokens], 1)
        padding = torch.cat([torch.zeros(rows, 1, dtype=torch.bool, device=device), tokens.missing], 1)
        for layer in self.layers:
            image, tabular = layer(image, tabular, padding)
        return self.norm(tabular[:, 0])

    def image_tokens(self, encoded: EncoderOutput) -> torch.Tensor:
        """(B, T, dim) projected image tokens: the encoder's, or its pooled feature map's."""
        if encoded.tokens is not None:
            return self.image_projection(encoded.tokens)
        fmap = encoded.feature_map
        h, w = (min(s, self.image_grid) for s in fmap.shape[-2:])
        if (h, w) != tuple(fmap.shape[-2:]):
            fmap = F.adaptive_avg_pool2d(fmap, (h, w))
        tokens = self.image_projection(fmap.flatten(2).transpose(1, 2))
        return tokens + sincos_2d(h, w, self.dim, tokens.device, tokens.dtype)
