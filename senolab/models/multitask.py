"""The multi-task model: one encoder, an optional fusion module, any subset of heads.

Fusion seam
-----------
A fusion module is an ``nn.Module`` with an ``embedding_dim`` attribute, called as
``fusion(encoder_output, batch) -> EncoderOutput``. It reads the image encoder's output
(embedding, tokens, pyramid) and the batch's tabular inputs (``meta_num``,
``meta_num_missing``, ``meta_cat``, ``radiomics``) and returns an :class:`EncoderOutput`
whose ``embedding`` (and ``tokens``, if it makes them) are fused; typically
``dataclasses.replace(encoder_output, embedding=fused)``. The heads are sized from
``fusion.embedding_dim`` and all read the fused output, and the model's ``embedding``
output is the fused one (what domain adaptation aligns).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from senolab.models.encoders import Encoder, build_encoder
from senolab.models.heads import HEADS

DEFAULT_HEADS: dict[str, dict] = {"cls": {"num_classes": 3}, "seg": {}, "box": {}}


class MultiTaskModel(nn.Module):
    """Encoder (+ fusion) + heads; ``model(batch)`` returns the output dict of docs/contracts.md#model-outputs.

    Parameters
    ----------
    encoder: a registered encoder (see :data:`senolab.models.ENCODERS`).
    heads: task name -> options of that head, e.g. ``{"cls": {"num_classes": 2}, "seg": {}}``
        (names: :data:`senolab.models.HEADS`).
    fusion: optional fusion module (see the module docstring for its contract).

    Output: ``embedding`` (B, D) always, ``tokens`` (B, T, D) when the encoder (or fusion)
    makes them, and ``logits`` (B, C), ``seg_logits`` (B, 1, H, W), ``bbox`` (B, 4,
    normalised xyxy) for the enabled heads (at least one).
    """

    def __init__(self, encoder: Encoder, heads: Mapping[str, Mapping | None], fusion: nn.Module | None = None):
        super().__init__()
        if not heads:
            raise ValueError(f"MultiTaskModel: no heads given; choose among {HEADS.names()}")
        self.encoder, self.fusion = encoder, fusion
        embedding_dim = fusion.embedding_dim if fusion is not None else encoder.embedding_dim
        self.heads = nn.ModuleDict(
            {name: HEADS.build(name, encoder=encoder, embedding_dim=embedding_dim, **dict(options or {}))
             for name, options in heads.items()}
        )

    @property
    def tasks(self) -> list[str]:
        """The enabled task names: the keys of the loss dict and of the balancer's weights."""
        return list(self.heads)

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters of the last layer every head depends on (GradNorm measures there)."""
        return list(self.encoder.shared_layer.parameters())

    def forward(self, batch: Mapping) -> dict[str, torch.Tensor]:
        """The output dict (docs/contracts.md#model-outputs) of a batch dict (docs/contracts.md#batch).

        The model reads ``batch["image"]``, and its fusion module the tabular entries it
        needs: one input, so the engine, adaptation methods and Captum wrappers all pass
        the batch as they have it.
        """
        if "image" not in batch:
            raise KeyError(f"the batch has no 'image' (keys: {sorted(batch)}); the model takes the batch dict")
        encoded = self.encoder(batch["image"])
        if self.fusion is not None:
            encoded = self.fusion(encoded, batch)
        out = {"embedding": encoded.embedding}
        if encoded.tokens is not None:
            out["tokens"] = encoded.tokens
        for head in self.heads.values():
            out[head.output_key] = head(encoded)
        return out


def build_model(
    encoder: str = "unet",
    heads: Mapping[str, Mapping | None] | None = None,
    encoder_options: Mapping | None = None,
    checkpoint: str | Path | None = None,
    fusion: nn.Module | None = None,
) -> MultiTaskModel:
    """Build a :class:`MultiTaskModel` by names; the encoder gets a decoder only if ``seg`` is a head.

    ``checkpoint`` is a local file of encoder weights (see ``load_encoder_checkpoint``).
    Seed torch before calling for reproducible random initialisation.
    """
    heads = dict(DEFAULT_HEADS if heads is None else heads)
    options = {"decoder": "seg" in heads, **dict(encoder_options or {})}
    return MultiTaskModel(build_encoder(encoder, checkpoint=checkpoint, **options), heads, fusion)
