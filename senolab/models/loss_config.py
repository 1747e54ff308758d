"""The one loss configuration: what the task losses read and how they are combined.

It is the ``loss:`` section of an experiment YAML (``senolab.engine.config`` uses this class
as that section) and what :func:`senolab.models.losses.multitask_losses` takes, so every
option below is settable from YAML and reaches the loss. Kept apart from ``losses.py`` so
reading a config does not import torch.
"""
from __future__ import annotations

import importlib
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

OLD_DEFAULT_GAMMA = 2.0  # what configs recorded before focal_gamma meant "0 is cross-entropy" carry next to `ce`


class LossConfig(BaseModel):
    """Loss options.

    focal_gamma: 0 gives cross-entropy; > 0 the focal loss of Lin et al. 2017.
        ``classification: focal`` is shorthand for ``focal_gamma: 2`` (or the gamma given),
        ``classification: ce`` for ``focal_gamma: 0``.
    class_weights: per-class weights of the classification loss (length = number of classes).
    bce_weight, dice_weight: the two terms of the segmentation loss.
    l1_weight, giou_weight: the two terms of the box loss.
    balancer, balancer_options: how the per-task losses are combined (``BALANCERS``).
    """

    model_config = ConfigDict(extra="forbid")

    focal_gamma: float = Field(0.0, ge=0)
    class_weights: list[Annotated[float, Field(ge=0)]] | None = None
    bce_weight: float = Field(1.0, ge=0)
    dice_weight: float = Field(1.0, ge=0)
    l1_weight: float = Field(1.0, ge=0)
    giou_weight: float = Field(1.0, ge=0)
    balancer: str = "uncertainty"
    balancer_options: dict[str, Any] = {}

    @model_validator(mode="before")
    @classmethod
    def _classification_shorthand(cls, raw: Any) -> Any:
        if not isinstance(raw, dict) or "classification" not in raw:
            return raw
        raw = dict(raw)
        kind = raw.pop("classification")
        if kind == "focal":
            raw.setdefault("focal_gamma", 2.0)
        elif kind == "ce":
            gamma = raw.get("focal_gamma", 0.0)
            # before, `ce` ignored focal_gamma, and recorded configs hold the old default 2.0 beside it
            if isinstance(gamma, (int, float)) and gamma not in (0.0, OLD_DEFAULT_GAMMA):
                raise ValueError(f"classification 'ce' is focal_gamma 0, but focal_gamma is {gamma}: "
                                 "give one of them")
            raw["focal_gamma"] = 0.0
        else:
            raise ValueError(f"classification: {kind!r} is not 'ce' or 'focal'")
        return raw

    @field_validator("balancer")
    @classmethod
    def _known_balancer(cls, name: str) -> str:
        # imported at the first check (it imports torch), which keeps reading a config light
        return importlib.import_module("senolab.models.balancers").BALANCERS.check(name)

    @field_validator("class_weights")
    @classmethod
    def _some_weight(cls, weights: list[float] | None) -> list[float] | None:
        if weights is not None and not any(w > 0 for w in weights):
            raise ValueError("class_weights: at least one class needs a weight above 0")
        return weights
