"""The fusion seam of :class:`senolab.models.MultiTaskModel` and the registry of fusion modules.

A fusion module is called as ``fusion(encoder_output, batch)`` and returns the encoder
output with its ``embedding`` replaced by the fused one (``embedding_dim`` wide), which
every head then reads. It is built from the image embedding width, the
:class:`~senolab.fusion.tabular.TabularInputs` it may read, and the number of classes:
``build_fusion("cross_attention", image_dim=256, inputs=TabularInputs(fields), num_classes=2)``.
"""
from __future__ import annotations

import inspect
from dataclasses import replace
from typing import Mapping, Sequence

import torch
from torch import nn

from senolab.fusion.tabular import TabularEncoder, TabularInputs, TabularTransformer, Tokens
from senolab.models.encoders import EncoderOutput
from senolab.registry import Registry

FUSIONS: Registry = Registry("fusion")


class Fusion(nn.Module):
    """Base of the registered fusion modules.

    Subclasses set ``embedding_dim`` and implement :meth:`fuse`. ``transductive`` is True
    for a module whose prediction for one case depends on other evaluation cases (it is
    reported as such in results and is never a default).
    """

    embedding_dim: int
    transductive: bool = False

    def forward(self, encoded: EncoderOutput, batch: Mapping) -> EncoderOutput:
        return replace(encoded, embedding=self.fuse(encoded, batch))

    def fuse(self, encoded: EncoderOutput, batch: Mapping) -> torch.Tensor:
        raise NotImplementedError


class TabularBranch(nn.Module):
    """Tabular tokens (metadata and radiomics) and their transformer [CLS] summary (``dim`` wide).

    Options: ``dim``, ``depth`` and ``heads`` of the tabular transformer, ``dropout``,
    ``radiomics_mode`` (``classes``: a token per feature class, or ``mlp``), and
    ``modality_dropout`` / ``field_dropout`` (see :class:`TabularEncoder`).
    """

    def __init__(self, inputs: TabularInputs, dim: int = 64, depth: int = 2, heads: int = 4, dropout: float = 0.1,
                 radiomics_mode: str = "classes", modality_dropout: float = 0.0, field_dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"fusion option dim ({dim}) must be divisible by heads ({heads})")
        self.dim, self.heads, self.dropout = dim, heads, dropout
        self.encoder = TabularEncoder(inputs, dim, radiomics_mode, modality_dropout, field_dropout)
        self.summary = TabularTransformer(dim, depth, heads, dropout)

    def tokens(self, batch: Mapping, rows: int, device: torch.device) -> Tokens:
        return self.encoder(batch, rows, device)

    def forward(self, batch: Mapping, rows: int, device: torch.device) -> tuple[torch.Tensor, Tokens]:
        """The (B, dim) summary and the tokens it summarises."""
        tokens = self.tokens(batch, rows, device)
        return self.summary(tokens), tokens


def require_tabular(name: str, inputs: TabularInputs) -> None:
    if inputs.empty:
        raise ValueError(
            f"fusion {name!r} needs tabular inputs (metadata fields or radiomics features) and was given none; "
            "use 'image_only' for a model of the image alone"
        )


def build_fusion(name: str, image_dim: int, inputs: TabularInputs = TabularInputs(), num_classes: int = 2,
                 **options) -> Fusion:
    """Build the registered fusion ``name`` for an encoder of ``image_dim`` and these inputs."""
    factory = FUSIONS.get(name)
    unknown = sorted(set(options) - set(fusion_options(factory)))
    if unknown:
        raise TypeError(f"fusion {name!r}: unknown options {unknown}; known: {fusion_options(factory)}")
    return factory(image_dim=image_dim, inputs=inputs, num_classes=num_classes, **options)


def fusion_options(factory) -> list[str]:
    """The options a fusion factory takes: its own, plus :class:`TabularBranch`'s if it passes them on."""
    own = inspect.signature(factory).parameters
    names = {n for n, p in own.items() if p.kind is not p.VAR_KEYWORD}
    if any(p.kind is p.VAR_KEYWORD for p in own.values()):
        names |= set(inspect.signature(TabularBranch).parameters) - {"inputs"}
    return sorted(names - {"image_dim", "inputs", "num_classes"})


MODALITIES = ("metadata", "radiomics")


def fusion_for_data(name: str, image_dim: int, data, modalities: Sequence[str] = MODALITIES, **options) -> Fusion:
    """The fusion ``name`` for prepared data (:class:`senolab.engine.data.PreparedData`).

    ``modalities`` (a fusion option in configs) chooses the tabular inputs among
    ``metadata`` and ``radiomics``; each one asked for must exist in ``data``. The number
    of classes is the data's.
    """
    unknown = sorted(set(modalities) - set(MODALITIES))
    if unknown:
        raise ValueError(f"fusion_options.modalities: unknown {unknown}; choose among {list(MODALITIES)}")
    if "metadata" in modalities and (data.metadata is None or not data.metadata.fields):
        raise ValueError("fusion_options.modalities asks for metadata, but these cohorts have no metadata inputs")
    if "radiomics" in modalities and data.radiomics is None:
        raise ValueError("fusion_options.modalities asks for radiomics, but data.radiomics (a feature table) is not set")
    inputs = TabularInputs.from_data(data, metadata="metadata" in modalities, radiomics="radiomics" in modalities)
    return build_fusion(name, image_dim, inputs, len(data.classes), **options)
