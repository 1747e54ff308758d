"""Baselines and late fusion: image only, tabular only, concatenated embeddings, decisions.

- ``image_only``: the encoder's embedding, untouched (the reference every variant is
  compared with).
- ``tabular_only``: the tabular transformer's [CLS] summary; the image is not used for
  classification (segmentation and box heads still read the image).
- ``concat``: late fusion of pooled embeddings, ``[image embedding, tabular summary]``.
- ``decision``: one classifier per modality; their logits are averaged (``combine:
  mean``, over the modalities a case has) or stacked for the classification head to
  weigh (``combine: stack``). Without any tabular input a case gets the image's logits.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from senolab.fusion.base import FUSIONS, Fusion, TabularBranch, require_tabular
from senolab.fusion.tabular import TabularInputs
from senolab.models.encoders import EncoderOutput


@FUSIONS.register("image_only")
class ImageOnly(Fusion):
    """The image embedding alone; tabular inputs are ignored."""

    def __init__(self, image_dim: int, inputs: TabularInputs = TabularInputs(), num_classes: int = 2):
        super().__init__()
        self.embedding_dim = image_dim

    def fuse(self, encoded: EncoderOutput, batch: Mapping) -> torch.Tensor:
        return encoded.embedding


@FUSIONS.register("tabular_only")
class TabularOnly(Fusion):
    """The tabular summary alone (metadata and/or radiomics, as ``inputs`` says)."""

    def __init__(self, image_dim: int, inputs: TabularInputs, num_classes: int = 2, **tabular):
        super().__init__()
        require_tabular("tabular_only", inputs)
        self.tabular = TabularBranch(inputs, **tabular)
        self.embedding_dim = self.tabular.dim

    def fuse(self, encoded: EncoderOutput, batch: Mapping) -> torch.Tensor:
        summary, _ = self.tabular(batch, encoded.embedding.shape[0], encoded.embedding.device)
        return summary


@FUSIONS.register("concat")
class ConcatFusion(Fusion):
    """``[image embedding, tabular summary]``: late fusion of pooled embeddings."""

    def __init__(self, image_dim: int, inputs: TabularInputs, num_classes: int = 2, **tabular):
        super().__init__()
        require_tabular("concat", inputs)
        self.tabular = TabularBranch(inputs, **tabular)
        self.embedding_dim = image_dim + self.tabular.dim

    def fuse(self, encoded: EncoderOutput, batch: Mapping) -> torch.Tensor:
        summary, _ = self.tabular(batch, encoded.embedding.shape[0], encoded.embedding.device)
        return torch.cat([encoded.embedding, summary], 1)


@FUSIONS.register("decision")
class DecisionFusion(Fusion):
    """Per-modality logits, averaged (``mean``) or stacked (``stack``) for the head."""

    COMBINES = ("mean", "stack")

    def __init__(self, image_dim: int, inputs: TabularInputs, num_classes: int = 2, combine: str = "mean",
                 **tabular):
        super().__init__()
        require_tabular("decision", inputs)
        if combine not in self.COMBINES:
            raise ValueError(f"decision fusion: combine must be one of {self.COMBINES}; got {combine!r}")
        self.combine = combine
        self.tabular = TabularBranch(inputs, **tabular)
        self.image_classifier = nn.Linear(image_dim, num_classes)
        self.tabular_classifier = nn.Linear(self.tabular.dim, num_classes)
        self.embedding_dim = num_classes * (2 if combine == "stack" else 1)

    def fuse(self, encoded: EncoderOutput, batch: Mapping) -> torch.Tensor:
        summary, tokens = self.tabular(batch, encoded.embedding.shape[0], encoded.embedding.device)
        has_tabular = (~tokens.missing).any(1, keepdim=True).to(summary.dtype)
        image_logits = self.image_classifier(encoded.embedding)
        tabular_logits = self.tabular_classifier(summary) * has_tabular
        if self.combine == "stack":
            return torch.cat([image_logits, tabular_logits], 1)
        return (image_logits + tabular_logits) / (1 + has_tabular)
