"""A lightweight residual U-Net for 2D grayscale ultrasound, with optional attention gates.

Shape: a contracting path of residual blocks (He et al. 2016) separated by 2x max-pooling,
a symmetric expanding path with skip connections (Ronneberger et al. 2015), and optionally
additive attention gates on the skips (Oktay et al. 2018, "Attention U-Net"), which let
the coarse decoder signal suppress speckle and shadow in the skip features. BatchNorm
throughout, so AdaBN-style adaptation can re-estimate its statistics on a target site.

The building blocks (:class:`ResBlock`, :class:`DownPath`, :class:`UpPath`) are shared
with the hybrid encoder, which replaces the deepest stage with a transformer.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from senolab.models.encoders import ENCODERS, Encoder, EncoderOutput, spatial_mean

DEFAULT_WIDTHS = (12, 24, 48, 96, 256)  # <= 2 M parameters: benchmarks/model_speed.py


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int = 3):
        super().__init__(
            nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class ResBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 projection) shortcut."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = ConvBNReLU(cin, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (
            nn.Identity() if cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn2(self.conv2(self.conv1(x))) + self.shortcut(x), inplace=True)


class AttentionGate(nn.Module):
    """Additive attention gate of Attention U-Net: weights skip pixels by a [0, 1] map.

    The gating signal ``g`` (decoder features, already upsampled to the skip's size) and
    the skip ``x`` are projected to ``inter`` channels, added, passed through ReLU and a
    1x1 conv to one channel, and squashed by a sigmoid.
    """

    def __init__(self, skip_channels: int, gate_channels: int, inter: int):
        super().__init__()
        self.theta_x = nn.Conv2d(skip_channels, inter, 1, bias=False)
        self.phi_g = nn.Conv2d(gate_channels, inter, 1, bias=True)
        self.psi = nn.Sequential(nn.Conv2d(inter, 1, 1, bias=False), nn.BatchNorm2d(1), nn.Sigmoid())

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        alpha = self.psi(F.relu(self.theta_x(x) + self.phi_g(g), inplace=True))
        return x * alpha


class DownPath(nn.Module):
    """Stem plus one residual stage per width; stage i works at 1 / 2**i resolution."""

    def __init__(self, in_channels: int, widths: Sequence[int]):
        super().__init__()
        self.stem = ConvBNReLU(in_channels, widths[0])
        stages = [ResBlock(widths[0], widths[0])]
        stages += [ResBlock(cin, cout) for cin, cout in zip(widths[:-1], widths[1:])]
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        x = self.stem(x)
        for i, stage in enumerate(self.stages):
            x = stage(F.max_pool2d(x, 2) if i else x)
            maps.append(x)
        return maps


class UpStage(nn.Module):
    """Upsample the coarse map 2x, (gate and) concatenate the skip, fuse with a ResBlock."""

    def __init__(self, coarse: int, skip: int, attention: bool):
        super().__init__()
        # A 1x1 projection before upsampling keeps the high-resolution work at `skip` width.
        self.project = ConvBNReLU(coarse, skip, kernel=1)
        self.gate = AttentionGate(skip, skip, max(skip // 2, 4)) if attention else None
        self.fuse = ResBlock(2 * skip, skip)

    def forward(self, coarse: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(self.project(coarse), size=skip.shape[-2:], mode="bilinear", align_corners=False)
        if self.gate is not None:
            skip = self.gate(skip, up)
        return self.fuse(torch.cat([skip, up], dim=1))


class UpPath(nn.Module):
    """Expanding path: from the deepest map back to full resolution (``widths[0]`` channels)."""

    def __init__(self, widths: Sequence[int], attention: bool):
        super().__init__()
        self.stages = nn.ModuleList(
            UpStage(coarse, skip, attention) for coarse, skip in zip(widths[:0:-1], widths[-2::-1])
        )

    def forward(self, deepest: torch.Tensor, skips: Sequence[torch.Tensor]) -> torch.Tensor:
        x = deepest
        for stage, skip in zip(self.stages, reversed(skips)):
            x = stage(x, skip)
        return x


@ENCODERS.register("unet")
class UNetEncoder(Encoder):
    """Residual (Attention) U-Net encoder-decoder.

    Parameters
    ----------
    in_channels: image channels (1 for grayscale ultrasound).
    widths: channels per resolution level, full resolution first; ``len(widths) - 1``
        poolings, so inputs must be multiples of ``2 ** (len(widths) - 1)``.
    attention: attention gates on the skip connections.
    decoder: build the expanding path (needed for segmentation only).
    """

    def __init__(
        self,
        in_channels: int = 1,
        widths: Sequence[int] = DEFAULT_WIDTHS,
        attention: bool = True,
        decoder: bool = True,
    ):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) < 2 or min(widths) < 1:
            raise ValueError(f"unet: widths must list at least two positive channel counts; got {widths}")
        self.down = DownPath(in_channels, widths)
        self.decoder = UpPath(widths, attention) if decoder else None
        self.embedding_dim = self.feature_channels = widths[-1]
        self.decoder_channels = widths[0] if decoder else 0
        self.input_multiple = 2 ** (len(widths) - 1)

    @property
    def gradcam_layer(self) -> nn.Module:
        return self.down.stages[-1]

    @property
    def shared_layer(self) -> nn.Module:
        return self.down.stages[-1].conv2

    def encode(self, image: torch.Tensor) -> EncoderOutput:
        pyramid = self.down(image)
        deepest = pyramid[-1]
        decoded = self.decoder(deepest, pyramid[:-1]) if self.decoder is not None else None
        return EncoderOutput(
            embedding=spatial_mean(deepest), feature_map=deepest, pyramid=pyramid, decoder_features=decoded
        )
