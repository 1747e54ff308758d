"""Attributions of the tabular inputs: clinical metadata and radiomics.

- :func:`feature_ablation`: Captum Feature Ablation where a *group* of columns is
  removed at once: one group per clinical field (a numeric field's value together with
  its missing flag, a multi-valued field's indicator columns, a categorical field's code)
  and one per radiomics feature class (``firstorder``, ``glcm``, ``shape2D``...).
  Removing means setting the columns to what the model sees when the value is absent
  (:data:`ABSENT`): a clinical field becomes missing, a standardised radiomics feature
  becomes the training mean.
- :func:`token_integrated_gradients`: Layer Integrated Gradients on the output of a
  token-embedding layer (B, T, D), summed over the embedding dimension: one number per
  token and case.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from senolab._optional import require
from senolab.explain.forward import captum_call, evaluation_mode, resolve_target
# The rule the fusion's radiomics class tokens use too, so explanation groups match them.
from senolab.radiomics.table import feature_class

# What a model sees when a tabular value is absent (docs/contracts.md#batch).
ABSENT: dict[str, float] = {"meta_num": 0.0, "meta_num_missing": 1.0, "meta_cat": 0.0, "radiomics": 0.0}
TABULAR_KEYS: tuple[str, ...] = ("meta_num", "meta_num_missing", "meta_cat", "radiomics")


@dataclass(frozen=True)
class FeatureGroups:
    """Named groups of tabular columns that are ablated together.

    ``groups``: group name -> {batch key -> column indices}. A group may span keys
    (a numeric field's ``meta_num`` column and its ``meta_num_missing`` flag).
    """

    groups: dict[str, dict[str, tuple[int, ...]]]

    @property
    def names(self) -> list[str]:
        return list(self.groups)

    @property
    def keys(self) -> list[str]:
        """The batch keys some group uses, in :data:`TABULAR_KEYS` order where known."""
        used = {k for cols in self.groups.values() for k in cols}
        return [k for k in TABULAR_KEYS if k in used] + sorted(used - set(TABULAR_KEYS))

    def masks(self, widths: Mapping[str, int]) -> dict[str, torch.Tensor]:
        """Captum feature masks: per key a (1, width) tensor of group indices.

        Every column of every used key must belong to exactly one group, so no input
        column is silently left out of the explanation.
        """
        masks = {k: torch.full((1, widths[k]), -1, dtype=torch.long) for k in self.keys}
        for index, (name, columns) in enumerate(self.groups.items()):
            for key, cols in columns.items():
                bad = [c for c in cols if not 0 <= c < widths[key]]
                if bad:
                    raise ValueError(f"feature group {name!r}: {key} has {widths[key]} columns; got columns {bad}")
                taken = [c for c in cols if masks[key][0, c] >= 0]
                if taken:
                    raise ValueError(f"feature group {name!r}: {key} columns {taken} already belong to another group")
                masks[key][0, list(cols)] = index
        for key, mask in masks.items():
            uncovered = torch.nonzero(mask[0] < 0).flatten().tolist()
            if uncovered:
                raise ValueError(f"{key} columns {uncovered} belong to no feature group; every column needs one")
        return masks


def tabular_groups(fields: Sequence, radiomics_columns: Sequence[str] = ()) -> FeatureGroups:
    """One group per clinical field and one per radiomics feature class.

    ``fields``: :class:`senolab.cohorts.tabular.FieldSpec` list (``MetadataEncoder.fields``);
    ``radiomics_columns``: the column names behind ``batch["radiomics"]``, in order.
    """
    groups: dict[str, dict[str, tuple[int, ...]]] = {}
    for field in fields:
        if field.cat_index is not None:
            groups[field.name] = {"meta_cat": (field.cat_index,)}
        else:
            cols = tuple(range(*field.num_slice))
            groups[field.name] = {"meta_num": cols, "meta_num_missing": cols}
    by_class: dict[str, list[int]] = {}
    for index, name in enumerate(radiomics_columns):
        by_class.setdefault(f"radiomics:{feature_class(name)}", []).append(index)
    groups.update({name: {"radiomics": tuple(cols)} for name, cols in by_class.items()})
    return FeatureGroups(groups)


def feature_ablation(model: nn.Module, batch: Mapping[str, object], groups: FeatureGroups,
                     readout: str = "classification", target: int | torch.Tensor | None = None,
                     absent: Mapping[str, float] = ABSENT, perturbations_per_eval: int = 8) -> pd.DataFrame:
    """Output change when each group of columns is made absent: (cases x groups) table.

    Positive values: the group pushed the explained output up. Rows are indexed by
    ``batch["case_id"]`` when present.
    """
    keys = groups.keys
    unknown = [k for k in keys if k not in absent]
    if unknown:
        raise KeyError(f"no absent value for {unknown}; pass absent={{key: value}}")
    attr = require("captum.attr")
    widths = {k: _width(batch, k) for k in keys}
    masks = groups.masks(widths)
    with evaluation_mode(model):
        target = resolve_target(model, batch, readout, target)
        call = captum_call(model, batch, keys, readout)
        ablation = attr.FeatureAblation(call.forward)
        result = ablation.attribute(
            call.inputs, baselines=tuple(float(absent[k]) for k in keys), target=target,
            additional_forward_args=call.additional_forward_args,
            feature_mask=tuple(masks[k] for k in keys), perturbations_per_eval=perturbations_per_eval,
        )
    table = np.stack([_group_value(result, keys, columns) for columns in groups.groups.values()], axis=1)
    return pd.DataFrame(table, columns=groups.names, index=_case_index(batch, table.shape[0]))


def _width(batch: Mapping[str, object], key: str) -> int:
    value = batch.get(key)
    if not isinstance(value, torch.Tensor) or value.dim() != 2:
        raise ValueError(f"batch[{key!r}] must be a (B, F) tensor for tabular attribution; got {value!r:.80}")
    return value.shape[1]


def _group_value(result: Sequence[torch.Tensor], keys: list[str], columns: Mapping[str, tuple[int, ...]]) -> np.ndarray:
    # Captum writes a group's attribution into each of its columns: read any one of them.
    key, cols = next(iter(columns.items()))
    return result[keys.index(key)][:, cols[0]].detach().cpu().numpy()


def _case_index(batch: Mapping[str, object], n: int) -> pd.Index:
    ids = batch.get("case_id")
    return pd.Index(list(ids) if ids is not None else range(n), name="case_id")


@dataclass
class TokenAttributions:
    """``values`` (B, T): attribution per token and case; ``delta`` (B,): the
    completeness gap of Integrated Gradients (small when ``n_steps`` is enough)."""

    values: torch.Tensor
    delta: torch.Tensor


def token_integrated_gradients(model: nn.Module, batch: Mapping[str, object], layer: str,
                               input_keys: Sequence[str] | None = None, readout: str = "classification",
                               target: int | torch.Tensor | None = None, absent: Mapping[str, float] = ABSENT,
                               n_steps: int = 64) -> TokenAttributions:
    """Integrated Gradients on the token embeddings made by ``model.get_submodule(layer)``.

    The path runs from the tokens of an all-absent case (every input in ``input_keys``,
    by default the tabular keys present in the batch, set to its :data:`ABSENT` value) to
    the case's tokens. The layer must output (B, T, D).
    """
    keys = list(input_keys) if input_keys is not None else [k for k in TABULAR_KEYS if k in batch]
    if not keys:
        raise ValueError(f"no tabular inputs to attribute: the batch has none of {TABULAR_KEYS}")
    attr = require("captum.attr")
    module = model.get_submodule(layer)
    with evaluation_mode(model):
        target = resolve_target(model, batch, readout, target)
        call = captum_call(model, batch, keys, readout)
        lig = attr.LayerIntegratedGradients(call.forward, module)
        baselines = tuple(torch.full_like(t, float(absent[k])) for k, t in zip(keys, call.inputs))
        values, delta = lig.attribute(
            call.inputs, baselines=baselines, target=target,
            additional_forward_args=call.additional_forward_args, n_steps=n_steps,
            return_convergence_delta=True,
        )
    if values.dim() != 3:
        raise ValueError(f"layer {layer!r} must output token embeddings (B, T, D); got shape {tuple(values.shape)}")
    return TokenAttributions(values.sum(-1).detach(), delta.detach())
