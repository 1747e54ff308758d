"""Tabular encoders: clinical metadata and radiomics as tokens of one common width.

Feature-tokeniser style (Gorishniy et al. 2021, "FT-Transformer"): every clinical field
becomes one token, ``field identity + value embedding``:

- numeric and ordinal fields: ``value * w_field`` (ordinal values are ranks in [0, 1], so
  the order of the levels is kept: a higher level moves further along ``w_field``);
- multi-valued (set) fields: the sum of one learned vector per level present;
- categorical fields: an embedding lookup.

A missing field is not imputed: its token is returned with ``missing = True`` and fusion
modules drop it from attention (key padding mask) and from pooling. Its input values are
zeroed before anything is computed, so whatever placeholder a missing value holds (even
NaN) cannot reach the output.

Radiomics features (already standardised on the training cases by data preparation)
become one token per pyradiomics feature class (``original_glcm_Contrast`` belongs to
``glcm``) or a single MLP token. A case whose radiomics row is all exact zeros is treated
as missing: that row is what data preparation writes for a case without features (a
normal image, a failed extraction), and a real standardised row is never exactly zero;
so is a row holding NaN.

The layout of the batch tensors is described by the fitted
:class:`senolab.cohorts.tabular.MetadataEncoder`'s ``fields`` and by the radiomics column
names; :class:`TabularInputs` carries both to the modules.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import nn

from senolab.cohorts.tabular import FieldSpec
from senolab.radiomics.table import feature_class
from senolab.registry import Registry

RADIOMICS_TOKENISERS: Registry = Registry("radiomics tokeniser")


@dataclass(frozen=True)
class TabularInputs:
    """Which tabular inputs a fusion module reads.

    fields: metadata fields (from ``MetadataEncoder.fields``); a subset is fine, the
        slices still index the full ``meta_num`` / ``meta_cat`` of the batch.
    radiomics_features: the radiomics column names, in the order of the batch's
        ``radiomics`` tensor (empty: radiomics not used).
    """

    fields: tuple[FieldSpec, ...] = ()
    radiomics_features: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.fields and not self.radiomics_features

    def describe(self) -> str:
        parts = []
        if self.fields:
            parts.append(f"metadata ({', '.join(f.name for f in self.fields)})")
        if self.radiomics_features:
            parts.append(f"radiomics ({len(self.radiomics_features)} features)")
        return " + ".join(parts) or "no tabular inputs"

    @classmethod
    def from_data(cls, data, metadata: bool = True, radiomics: bool = True) -> "TabularInputs":
        """The inputs of a :class:`senolab.engine.data.PreparedData` (either may be switched off)."""
        fields = tuple(data.metadata.fields) if metadata and data.metadata is not None else ()
        features = tuple(data.radiomics.columns) if radiomics and data.radiomics is not None else ()
        return cls(fields, features)


@dataclass
class Tokens:
    """(B, T, D) tokens with a (B, T) bool ``missing`` mask (True: leave this token out)."""

    tokens: torch.Tensor
    missing: torch.Tensor

    @staticmethod
    def cat(parts: Sequence["Tokens"], batch: int, dim: int, device) -> "Tokens":
        if not parts:
            return Tokens(torch.zeros(batch, 0, dim, device=device), torch.zeros(batch, 0, dtype=torch.bool, device=device))
        return Tokens(torch.cat([p.tokens for p in parts], 1), torch.cat([p.missing for p in parts], 1))


def batch_tensor(batch: Mapping, key: str, rows: int, device, dtype) -> torch.Tensor:
    """``batch[key]`` as (rows, F); a batch without it (a cohort lacking that modality) is (rows, 0)."""
    value = batch.get(key)
    if value is None:
        return torch.zeros(rows, 0, device=device, dtype=dtype)
    if value.dim() != 2 or value.shape[0] != rows:
        raise ValueError(f"batch {key!r} must be ({rows}, F); got shape {tuple(value.shape)}")
    return value.to(device)


class MetadataTokeniser(nn.Module):
    """One token per clinical field, driven by the metadata encoder's ``FieldSpec`` list.

    Input: the batch's ``meta_num`` (B, Fn), ``meta_num_missing`` (B, Fn), ``meta_cat``
    (B, Fc). A batch whose metadata tensors are zero-wide (a cohort without metadata) has
    every field missing. Output: :class:`Tokens` with one token per field, in field order.
    """

    def __init__(self, fields: Sequence[FieldSpec], dim: int):
        super().__init__()
        self.fields = tuple(fields)
        self.dim = dim
        vector_fields = [f for f in self.fields if f.num_slice is not None]
        lookup_fields = [f for f in self.fields if f.cat_index is not None]
        columns = [c for f in vector_fields for c in range(*f.num_slice)]
        owners = [i for i, f in enumerate(vector_fields) for _ in range(*f.num_slice)]
        self.register_buffer("num_columns", torch.tensor(columns, dtype=torch.long), persistent=False)
        self.register_buffer("num_owner", torch.tensor(owners, dtype=torch.long), persistent=False)
        self.n_vector, self.num_width = len(vector_fields), max((f.num_slice[1] for f in vector_fields), default=0)
        # value * w for numeric / ordinal columns, a level vector for each 0/1 column of a set
        self.value_weight = nn.Parameter(torch.randn(len(columns), dim) * dim**-0.5)
        sizes = [len(f.levels) for f in lookup_fields]
        offsets = torch.tensor([0, *sizes[:-1]], dtype=torch.long).cumsum(0) if sizes else torch.zeros(0, dtype=torch.long)
        self.register_buffer("cat_columns", torch.tensor([f.cat_index for f in lookup_fields], dtype=torch.long),
                             persistent=False)
        self.register_buffer("cat_offsets", offsets, persistent=False)
        self.register_buffer("cat_sizes", torch.tensor(sizes, dtype=torch.long), persistent=False)
        self.cat_width = max((f.cat_index + 1 for f in lookup_fields), default=0)
        self.level_embedding = nn.Embedding(max(1, sum(sizes)), dim)
        nn.init.normal_(self.level_embedding.weight, std=dim**-0.5)
        self.identity = nn.Parameter(torch.randn(len(self.fields), dim) * dim**-0.5)
        # tokens are computed vectors-first, lookups-second; this puts them back in field order
        order = [self.fields.index(f) for f in (*vector_fields, *lookup_fields)]
        self.register_buffer("field_order", torch.argsort(torch.tensor(order, dtype=torch.long)), persistent=False)

    def forward(self, batch: Mapping, rows: int) -> Tokens:
        device = self.identity.device
        vec_tokens, vec_missing = self._vector_tokens(batch, rows, device)
        cat_tokens, cat_missing = self._lookup_tokens(batch, rows, device)
        tokens = torch.cat([vec_tokens, cat_tokens], 1)[:, self.field_order]
        missing = torch.cat([vec_missing, cat_missing], 1)[:, self.field_order]
        tokens = torch.where(missing[..., None], torch.zeros_like(tokens), tokens) + self.identity
        return Tokens(tokens, missing)

    def _vector_tokens(self, batch: Mapping, rows: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        values = batch_tensor(batch, "meta_num", rows, device, self.value_weight.dtype)
        flags = batch_tensor(batch, "meta_num_missing", rows, device, torch.bool)
        if values.shape[1] == 0:  # no metadata in this cohort: every field missing
            return (torch.zeros(rows, self.n_vector, self.dim, device=device),
                    torch.ones(rows, self.n_vector, dtype=torch.bool, device=device))
        if values.shape[1] < self.num_width or flags.shape != values.shape:
            raise ValueError(
                f"batch 'meta_num' / 'meta_num_missing' must be (B, >= {self.num_width}) and alike; got "
                f"{tuple(values.shape)} and {tuple(flags.shape)} (was the metadata encoder fitted on other fields?)"
            )
        x, gone = values[:, self.num_columns], flags[:, self.num_columns].bool()
        x = torch.where(gone, torch.zeros_like(x), x)  # a missing value never reaches the network
        contrib = x[..., None] * self.value_weight  # (B, columns, D)
        tokens = torch.zeros(rows, self.n_vector, self.dim, device=device, dtype=x.dtype).index_add(1, self.num_owner, contrib)
        missing_count = torch.zeros(rows, self.n_vector, device=device).index_add(1, self.num_owner, gone.float())
        return tokens, missing_count > 0

    def _lookup_tokens(self, batch: Mapping, rows: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.cat_columns)
        codes = batch_tensor(batch, "meta_cat", rows, device, torch.long)
        if codes.shape[1] == 0:
            codes = torch.zeros(rows, self.cat_width, dtype=torch.long, device=device)
        if codes.shape[1] < self.cat_width:
            raise ValueError(f"batch 'meta_cat' must be (B, >= {self.cat_width}); got {tuple(codes.shape)}")
        codes = codes[:, self.cat_columns].long()
        if n and ((codes < 0) | (codes > self.cat_sizes)).any():
            raise ValueError(f"batch 'meta_cat' holds codes outside 0..levels per field {self.cat_sizes.tolist()}")
        missing = codes == 0
        index = self.cat_offsets + (codes - 1).clamp_min(0)
        return self.level_embedding(index), missing


def radiomics_present(values: torch.Tensor) -> torch.Tensor:
    """(B,) True where a case has radiomics features: a finite row that is not all zeros (module docstring)."""
    return torch.isfinite(values).all(1) & (values != 0).any(1)


@RADIOMICS_TOKENISERS.register("classes")
class ClassTokeniser(nn.Module):
    """One token per feature class: a linear map of the class's standardised features."""

    def __init__(self, features: Sequence[str], dim: int):
        super().__init__()
        self.classes = tuple(sorted({feature_class(f) for f in features}))
        self.n_tokens = len(self.classes)
        members = [[i for i, f in enumerate(features) if feature_class(f) == c] for c in self.classes]
        for i, columns in enumerate(members):
            self.register_buffer(f"columns_{i}", torch.tensor(columns, dtype=torch.long), persistent=False)
        self.project = nn.ModuleList(nn.Linear(len(columns), dim) for columns in members)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        return torch.stack([proj(values[:, getattr(self, f"columns_{i}")]) for i, proj in enumerate(self.project)], 1)


@RADIOMICS_TOKENISERS.register("mlp")
class MLPTokeniser(nn.Module):
    """A single token: a two-layer MLP of all standardised features."""

    n_tokens = 1

    def __init__(self, features: Sequence[str], dim: int, hidden: int = 128, dropout: float = 0.1):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(len(features), hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        return self.mlp(values)[:, None]


class RadiomicsTokeniser(nn.Module):
    """Radiomics (B, R) -> :class:`Tokens`; a case without features has its tokens missing."""

    def __init__(self, features: Sequence[str], dim: int, mode: str = "classes"):
        super().__init__()
        self.features = tuple(features)
        self.tokenise = RADIOMICS_TOKENISERS.build(mode, self.features, dim)
        self.identity = nn.Parameter(torch.randn(self.tokenise.n_tokens, dim) * dim**-0.5)

    def forward(self, batch: Mapping, rows: int) -> Tokens:
        device = self.identity.device
        values = batch_tensor(batch, "radiomics", rows, device, self.identity.dtype)
        n_tokens = self.identity.shape[0]
        if values.shape[1] == 0:
            values = torch.zeros(rows, len(self.features), device=device, dtype=self.identity.dtype)
        if values.shape[1] != len(self.features):
            raise ValueError(
                f"batch 'radiomics' has {values.shape[1]} features; this model was built for {len(self.features)}"
            )
        absent = ~radiomics_present(values)
        # zeroed, not only masked: a NaN times a zero gradient is still a NaN weight gradient
        values = torch.where(absent[:, None], torch.zeros_like(values), values)
        tokens = self.tokenise(values)
        tokens = torch.where(absent[:, None, None], torch.zeros_like(tokens), tokens) + self.identity
        return Tokens(tokens, absent[:, None].expand(rows, n_tokens))


class TabularEncoder(nn.Module):
    """Metadata and radiomics tokens side by side, with optional dropout of inputs in training.

    modality_dropout: per training case, the probability of dropping all its metadata
        tokens (and, independently, all its radiomics tokens), so the model learns to
        predict without them (a cohort without metadata at test time).
    field_dropout: per training case and token, the probability of dropping that token
        (partial metadata at test time).
    """

    def __init__(self, inputs: TabularInputs, dim: int, radiomics_mode: str = "classes",
                 modality_dropout: float = 0.0, field_dropout: float = 0.0):
        super().__init__()
        for name, p in (("modality_dropout", modality_dropout), ("field_dropout", field_dropout)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must lie in [0, 1); got {p}")
        self.inputs, self.dim = inputs, dim
        self.metadata = MetadataTokeniser(inputs.fields, dim) if inputs.fields else None
        self.radiomics = RadiomicsTokeniser(inputs.radiomics_features, dim, radiomics_mode) if inputs.radiomics_features else None
        self.modality_dropout, self.field_dropout = modality_dropout, field_dropout

    def forward(self, batch: Mapping, rows: int, device: torch.device) -> Tokens:
        parts = [m(batch, rows) for m in (self.metadata, self.radiomics) if m is not None]
        if self.training:
            parts = [self._dropped(p) for p in parts]
        return Tokens.cat(parts, rows, self.dim, device)

    def _dropped(self, part: Tokens) -> Tokens:
        missing = part.missing
        if self.modality_dropout:
            missing = missing | (torch.rand(missing.shape[0], 1, device=missing.device) < self.modality_dropout)
        if self.field_dropout:
            missing = missing | (torch.rand(missing.shape, device=missing.device) < self.field_dropout)
        return Tokens(part.tokens, missing)


class TabularTransformer(nn.Module):
    """A [CLS] token and the tabular tokens through a transformer; returns the [CLS] output.

    Missing tokens are key-padded out. [CLS] is never missing, so a case without any
    tabular input still gets a (constant) summary rather than a NaN.
    """

    def __init__(self, dim: int, depth: int = 2, heads: int = 4, dropout: float = 0.1):
        super().__init__()
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, depth, norm=nn.LayerNorm(dim), enable_nested_tensor=False)

    def forward(self, tokens: Tokens) -> torch.Tensor:
        rows = tokens.tokens.shape[0]
        x = torch.cat([self.cls.expand(rows, -1, -1), tokens.tokens], 1)
        pad = torch.cat([torch.zeros(rows, 1, dtype=torch.bool, device=x.device), tokens.missing], 1)
        return self.transformer(x, src_key_padding_mask=pad)[:, 0]
