"""Hybrid encoder: a residual CNN stem with a transformer at the bottleneck (TransUNet-like).

Chen et al. 2021 (TransUNet): convolutions extract local texture at high resolution, a
transformer relates every 1/16-resolution position to every other (global context such
as posterior shadowing far from the lesion), and a U-Net decoder with skips from the CNN
stem recovers the boundary. Here the stem and decoder are the residual U-Net's blocks and
the transformer is plain ``torch.nn`` (no optional dependency). Positions are encoded
with fixed 2D sine-cosine embeddings, so any input size that is a multiple of 16 works.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from senolab.models.encoders import ENCODERS, Encoder, EncoderOutput, TokenGrid, spatial_mean
from senolab.models.unet import DownPath, UpPath


def sincos_2d(height: int, width: int, dim: int, device=None, dtype=None) -> torch.Tensor:
    """(height * width, dim) fixed 2D sine-cosine position embeddings (MAE, He et al. 2022)."""
    if dim % 4:
        raise ValueError(f"sine-cosine position embeddings need dim divisible by 4; got {dim}")
    quarter = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter))
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device, dtype=torch.float32),
        torch.arange(width, device=device, dtype=torch.float32),
        indexing="ij",
    )
    y, x = ys.reshape(-1, 1) * omega, xs.reshape(-1, 1) * omega
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1).to(dtype or torch.float32)


@ENCODERS.register("hybrid")
class HybridEncoder(Encoder):
    """CNN stem (residual stages down to 1/8) + transformer on the 1/16 grid + U-Net decoder.

    Parameters
    ----------
    in_channels: image channels.
    widths: CNN stem channels per level, full resolution first (``len(widths) - 1``
        poolings before the 2x2 patch embedding of the transformer).
    dim, depth, heads, mlp_ratio: transformer width, layers, attention heads, MLP ratio.
    attention: attention gates on the decoder's skip connections.
    decoder: build the expanding path (needed for segmentation only).
    """

    def __init__(
        self,
        in_channels: int = 1,
        widths: Sequence[int] = (12, 24, 48, 96),
        dim: int = 192,
        depth: int = 4,
        heads: int = 3,
        mlp_ratio: float = 2.0,
        attention: bool = True,
        decoder: bool = True,
    ):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if dim % heads or dim % 4:
            raise ValueError(f"hybrid: dim must be divisible by heads ({heads}) and by 4; got {dim}")
        self.down = DownPath(in_channels, widths)
        self.patch_embed = nn.Conv2d(widths[-1], dim, kernel_size=2, stride=2)
        layer = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=int(dim * mlp_ratio), dropout=0.0,
            activation="gelu", batch_first=True, norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(layer, depth, norm=nn.LayerNorm(dim), enable_nested_tensor=False)
        self.grid = TokenGrid()
        self.decoder = UpPath((*widths, dim), attention) if decoder else None
        self.dim = dim
        self.embedding_dim = self.feature_channels = dim
        self.decoder_channels = widths[0] if decoder else 0
        self.input_multiple = 2 ** len(widths)

    @property
    def gradcam_layer(self) -> nn.Module:
        return self.grid

    @property
    def shared_layer(self) -> nn.Module:
        return self.transformer.layers[-1].linear2

    def encode(self, image: torch.Tensor) -> EncoderOutput:
        pyramid = self.down(image)
        patches = self.patch_embed(pyramid[-1])
        h, w = patches.shape[-2:]
        tokens = patches.flatten(2).transpose(1, 2)
        tokens = self.transformer(tokens + sincos_2d(h, w, self.dim, tokens.device, tokens.dtype))
        grid = self.grid(tokens, h, w)
        decoded = self.decoder(grid, pyramid) if self.decoder is not None else None
        return EncoderOutput(
            embedding=spatial_mean(grid), feature_map=grid, tokens=tokens,
            pyramid=[*pyramid, grid], decoder_features=decoded,
        )
