"""A small Vision Transformer from ``transformers`` (random init), with a light segmentation decoder.

``transformers`` is imported when the encoder is built, through
:func:`senolab._optional.require`, so ``import senolab.models`` does not need it.

The embedding is the mean of the final patch tokens, not the [CLS] token: the last
layer's patch outputs do not reach [CLS], so Grad-CAM on the patch-token grid would see no
gradient if the classifier read [CLS]. Segmentation uses progressive upsampling of the
patch-token grid (SETR-PUP, Zheng et al. 2021): one conv-BN-ReLU and a 2x bilinear
upsampling per halving of the patch size.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from senolab._optional import require
from senolab.models.encoders import ENCODERS, Encoder, EncoderOutput, TokenGrid, spatial_mean
from senolab.models.unet import ConvBNReLU


class ProgressiveUpsampler(nn.Module):
    """(B, dim, h, w) -> (B, out, h * 2**steps, w * 2**steps): halve channels, upsample 2x."""

    def __init__(self, dim: int, steps: int, min_channels: int = 16):
        super().__init__()
        channels = [dim] + [max(dim // 2 ** (i + 1), min_channels) for i in range(steps)]
        self.stages = nn.ModuleList(ConvBNReLU(cin, cout) for cin, cout in zip(channels[:-1], channels[1:]))
        self.out_channels = channels[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = F.interpolate(stage(x), scale_factor=2, mode="bilinear", align_corners=False)
        return x


@ENCODERS.register("vit")
class ViTEncoder(Encoder):
    """``transformers.ViTModel`` on grayscale images, randomly initialised.

    Parameters
    ----------
    in_channels: image channels.
    image_size: the size the position embeddings are made for; other sizes (multiples of
        ``patch_size``) interpolate them.
    patch_size: a power of two (the decoder upsamples by 2 per step).
    dim, depth, heads, mlp_ratio: transformer width, layers, attention heads, MLP ratio.
    decoder: build the segmentation decoder.
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 128,
        patch_size: int = 16,
        dim: int = 192,
        depth: int = 4,
        heads: int = 3,
        mlp_ratio: float = 4.0,
        decoder: bool = True,
    ):
        super().__init__()
        if patch_size < 2 or patch_size & (patch_size - 1):
            raise ValueError(f"vit: patch_size must be a power of two >= 2; got {patch_size}")
        transformers = require("transformers")
        config = transformers.ViTConfig(
            image_size=image_size, patch_size=patch_size, num_channels=in_channels,
            hidden_size=dim, num_hidden_layers=depth, num_attention_heads=heads,
            intermediate_size=int(dim * mlp_ratio),
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        )
        self.vit = transformers.ViTModel(config, add_pooling_layer=False)
        self.grid = TokenGrid()
        self.decoder = ProgressiveUpsampler(dim, int(math.log2(patch_size))) if decoder else None
        self.image_size, self.patch_size = image_size, patch_size
        self.embedding_dim = self.feature_channels = dim
        self.decoder_channels = self.decoder.out_channels if decoder else 0
        self.input_multiple = patch_size

    @property
    def gradcam_layer(self) -> nn.Module:
        return self.grid

    @property
    def shared_layer(self) -> nn.Module:
        # The final LayerNorm: the same name in every transformers version senolab supports.
        return self.vit.layernorm

    def encode(self, image: torch.Tensor) -> EncoderOutput:
        h, w = (s // self.patch_size for s in image.shape[-2:])
        resized = tuple(image.shape[-2:]) != (self.image_size, self.image_size)
        hidden = self.vit(pixel_values=image, interpolate_pos_encoding=resized).last_hidden_state
        tokens = hidden[:, 1:]  # drop [CLS]
        grid = self.grid(tokens, h, w)
        decoded = self.decoder(grid) if self.decoder is not None else None
        return EncoderOutput(embedding=spatial_mean(grid), feature_map=grid, tokens=tokens, decoder_features=decoded)
