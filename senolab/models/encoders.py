"""Image encoders: the registry, the structure every encoder returns, checkpoint loading.

An encoder maps an image batch (B, C, H, W) to an :class:`EncoderOutput`. Encoders that
can segment carry their own decoder (built only when asked, so a classification-only
model does not pay for it) and return its full-resolution features for the segmentation
head. Weights start random or come from a local checkpoint file; nothing is ever fetched
from a hub.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from senolab.checkpoint import load_checkpoint
from senolab.errors import InputError
from senolab.registry import Registry

ENCODERS: Registry = Registry("encoder")


@dataclass
class EncoderOutput:
    """What an encoder hands to fusion modules and heads.

    embedding: (B, D) pooled image embedding (what the classification head reads).
    feature_map: (B, C, h, w) the deepest spatial map (the box head reads it; the
        embedding is its spatial mean, so Grad-CAM on it explains the classifier).
    tokens: (B, T, D) a token sequence, for transformer encoders (None otherwise).
    pyramid: encoder feature maps from fine to coarse, where the encoder has several
        scales (None otherwise).
    decoder_features: (B, Cd, H, W) at input resolution, for the segmentation head;
        None when the encoder was built without a decoder.
    """

    embedding: torch.Tensor
    feature_map: torch.Tensor
    tokens: torch.Tensor | None = None
    pyramid: list[torch.Tensor] | None = None
    decoder_features: torch.Tensor | None = None


class Encoder(nn.Module):
    """Base class of the registered encoders.

    Subclasses set ``embedding_dim``, ``feature_channels`` (channels of ``feature_map``),
    ``decoder_channels`` (channels of ``decoder_features``, 0 without decoder) and
    ``input_multiple`` (H and W must be multiples of it), and implement ``encode``.
    They also name two layers other parts of senolab point at:
    ``gradcam_layer`` (a module whose output is ``feature_map``, for Layer Grad-CAM) and
    ``shared_layer`` (the last layer every head depends on, for GradNorm).
    """

    embedding_dim: int
    feature_channels: int
    decoder_channels: int
    input_multiple: int

    @property
    def has_decoder(self) -> bool:
        return self.decoder_channels > 0

    @property
    def gradcam_layer(self) -> nn.Module:
        raise NotImplementedError

    @property
    def shared_layer(self) -> nn.Module:
        raise NotImplementedError

    def forward(self, image: torch.Tensor) -> EncoderOutput:
        self._check_input(image)
        return self.encode(image)

    def encode(self, image: torch.Tensor) -> EncoderOutput:
        raise NotImplementedError

    def _check_input(self, image: torch.Tensor) -> None:
        name = type(self).__name__
        if image.dim() != 4:
            raise ValueError(f"{name}: image must be (B, C, H, W); got shape {tuple(image.shape)}")
        h, w = image.shape[-2:]
        if h % self.input_multiple or w % self.input_multiple:
            raise ValueError(
                f"{name}: image height and width must be multiples of {self.input_multiple}; "
                f"got {h} x {w}"
            )


def build_encoder(name: str = "unet", /, checkpoint: str | Path | None = None, **options) -> Encoder:
    """Build the registered encoder ``name`` with ``options``; load ``checkpoint`` if given.

    ``name`` is positional-only: an encoder's own options may include a ``name`` (the
    ``timm`` encoder's model name)."""
    encoder = ENCODERS.build(name, **options)
    if checkpoint is not None:
        load_encoder_checkpoint(encoder, checkpoint)
    return encoder


def load_encoder_checkpoint(encoder: Encoder, path: str | Path) -> Encoder:
    """Load encoder weights from a local file with ``torch.load(weights_only=True)``.

    The file holds either the encoder's own ``state_dict`` or a whole model's (keys
    ``encoder.*``, optionally under a ``"model"`` key, as the training engine saves it),
    so a model trained on one task can initialise the encoder of another. Decoder weights
    are skipped when this encoder was built without a decoder. A missing file is a
    FileNotFoundError; a file torch refuses, or one that does not fit this encoder, is an
    InputError that names the file (and the keys).
    """
    path = Path(path)
    loaded = load_checkpoint(path)
    state = _encoder_state(loaded, path)
    if not encoder.has_decoder:
        state = {k: v for k, v in state.items() if not k.startswith("decoder.")}
    _check_fit(encoder, state, path)
    encoder.load_state_dict(state)
    return encoder


def _encoder_state(loaded: object, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(loaded, Mapping):
        raise InputError(f"encoder checkpoint {path}: expected a state_dict (a mapping), got {type(loaded).__name__}")
    state = loaded.get("model", loaded)
    if not isinstance(state, Mapping):
        raise InputError(f"encoder checkpoint {path}: 'model' should be a state_dict, got {type(state).__name__}")
    prefix = "encoder."
    if any(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return dict(state)


def _check_fit(encoder: Encoder, state: Mapping[str, torch.Tensor], path: Path) -> None:
    own = encoder.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    resized = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
               if k in state and state[k].shape != v.shape]
    if missing or unexpected or resized:
        raise InputError(
            f"encoder checkpoint {path} does not fit this {type(encoder).__name__}: "
            f"missing keys {_first(missing)}, unexpected keys {_first(unexpected)}, "
            f"shape mismatches (file vs encoder) {_first(resized)}"
        )


def _first(items: list[str], n: int = 5) -> str:
    return f"{items[:n]}{' ...' if len(items) > n else ''} ({len(items)})"


def spatial_mean(feature_map: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, C): the pooled embedding of every encoder."""
    return feature_map.mean(dim=(-2, -1))


class TokenGrid(nn.Module):
    """(B, T, D) tokens of an h x w grid -> (B, D, h, w) map.

    A module, not a reshape inline, so that transformer encoders have a layer whose output
    is a spatial map on the path to the embedding: Layer Grad-CAM points at it.
    """

    def forward(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        b, t, d = tokens.shape
        if t != height * width:
            raise ValueError(f"TokenGrid: {t} tokens do not fill a {height} x {width} grid")
        return tokens.transpose(1, 2).reshape(b, d, height, width)
