"""The adaptation hook on the training step, and the registry of methods.

A method is an ``nn.Module`` (its own parameters, e.g. DANN's domain classifier, train
with the model). The engine drives it through four calls and nothing else::

    method = METHODS.build(name, **params)
    method.prepare(model, source_loader, target_loader)   # once, before the optimiser exists
    optimiser = Adam([*model.parameters(), *method.parameters()])
    for step in range(total_steps):
        out = method(model, source_batch, target_batch if method.needs_target else None,
                     step, total_steps)
        loss = task_loss(out.source_out, source_batch) + sum(out.losses.values())
    target_model = method.adapt_for_inference(model, target_loader)
    predictions = target_model(method.harmonise(target_batch, "target"))
    # source validation: model(method.harmonise(source_batch, "source"))

Target labels never reach a method: the public entry points pass every target batch and
loader through :func:`~senolab.adaptation.wall.strip_labels` before the method's own code
(``_prepare``, ``_losses``, ``_adapt_for_inference``) runs, so a subclass cannot opt out.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Literal, Mapping

import torch
from torch import nn

from senolab.adaptation.wall import TargetBatch, Unlabelled, strip_labels
from senolab.registry import Registry

METHODS: Registry[type["AdaptationMethod"]] = Registry("adaptation method")

Domain = Literal["source", "target"]
Batch = Mapping[str, Any]


@dataclass
class AdaptationStep:
    """What one training step of a method produced.

    ``losses`` are already weighted; the engine adds every one of them to the task loss.
    ``target_out`` is None when the method did not run the model on the target batch.
    """

    source_out: dict[str, torch.Tensor]
    target_out: dict[str, torch.Tensor] | None
    losses: dict[str, torch.Tensor] = field(default_factory=dict)


class AdaptationMethod(nn.Module):
    """Base of every method; on its own it is ERM (no extra loss, nothing adapted).

    Class attributes, read by the runner and written into every result:

    - ``name``: the registry name.
    - ``transductive``: uses unlabelled target images at training or test time.
    - ``needs_target``: the training step needs an unlabelled target batch.
    - ``target_forward``: the driver runs the model on the target batch together with the
      source batch (one forward over their concatenation, so BatchNorm sees both domains as
      one batch, as in DANN's reference implementations) and hands the split outputs over.
    - ``loss_names``: the names of the losses a step returns for a model with every head.
    - ``trains_as``: the method this one trains exactly as, differing only at inference
      (AdaBN trains as ``"erm"``), so a study reuses that method's trained model of the same
      target and seed instead of training an identical one again.
    - ``federated``: the study trains it by federated learning across the source sites
      (:mod:`senolab.federated`), each site a client whose data never leaves it; its step
      hook is then what each client runs on its own batches (FedProx's proximal term).
    """

    name: ClassVar[str]
    transductive: ClassVar[bool] = False
    needs_target: ClassVar[bool] = False
    target_forward: ClassVar[bool] = False
    loss_names: ClassVar[tuple[str, ...]] = ()
    trains_as: ClassVar[str | None] = None
    federated: ClassVar[bool] = False

    @classmethod
    def study_entries(cls, sources: list[str]) -> list[tuple[str, dict[str, Any]]]:
        """What one study entry of this method stands for at a pair with these source sites:
        (label suffix, extra options) per run. One run with nothing added, except for methods
        that train once per source site (local-only training)."""
        return [("", {})]

    # ----------------------------------------------------------------- public entry points
    def prepare(self, model: nn.Module, source_loader: Iterable[Batch], target_loader: Iterable[Batch] | None) -> None:
        """Once before training: build method modules, fit references on the data."""
        self._prepare(model, source_loader, None if target_loader is None else Unlabelled(target_loader))

    def forward(self, model: nn.Module, source_batch: Batch, target_batch: Batch | None,
                step: int, total_steps: int) -> AdaptationStep:
        """One training step: harmonise, run the model, and compute the method's losses.

        ``target_batch`` is ignored by methods that do not need one (``needs_target``).
        """
        if self.needs_target and target_batch is None:
            raise ValueError(f"adaptation method {self.name!r} needs a target batch at every training step")
        source_batch = self.harmonise(source_batch, "source")
        target = self.harmonise(strip_labels(target_batch), "target") if self.needs_target else None
        if self.target_forward and target is not None:
            joint = model(concat_batches(source_batch, target))
            source_out, target_out = split_outputs(joint, batch_size(source_batch))
        else:
            source_out, target_out = model(source_batch), None
        losses = self.step_losses(model, source_batch, source_out, target, target_out, step, total_steps)
        return AdaptationStep(source_out, target_out, losses)

    def step_losses(self, model: nn.Module, source_batch: Batch, source_out: Mapping[str, torch.Tensor],
                    target_batch: Batch | None, target_out: Mapping[str, torch.Tensor] | None,
                    step: int, total_steps: int) -> dict[str, torch.Tensor]:
        """The method's named, weighted losses for one step (docs/contracts.md#adaptation-hook)."""
        target = None if target_batch is None else strip_labels(target_batch)
        return self._losses(model, source_batch, source_out, target, target_out, step, total_steps)

    def adapt_for_inference(self, model: nn.Module, target_loader: Iterable[Batch] | None) -> nn.Module:
        """The model to evaluate on the target site; ``model`` itself is never modified.

        Without a target loader (inference on the source domain, e.g. source validation
        for model selection) there is nothing to adapt to and ``model`` comes back as is.
        """
        if target_loader is None:
            return model
        return self._adapt_for_inference(model, Unlabelled(target_loader))

    def harmonise(self, batch: Batch, domain: Domain) -> Batch:
        """The batch with its images moved to the common appearance (a copy; labels kept)."""
        if domain not in ("source", "target"):
            raise ValueError(f"domain must be 'source' or 'target', got {domain!r}")
        images = self.transform_images(batch["image"], domain)
        if images is batch["image"]:
            return batch
        return batch.replace(image=images) if isinstance(batch, TargetBatch) else {**batch, "image": images}

    # ------------------------------------------------------------- hooks for subclasses
    def _prepare(self, model: nn.Module, source_loader: Iterable[Batch], target_loader: Unlabelled | None) -> None:
        return None

    def _losses(self, model: nn.Module, source_batch: Batch, source_out: Mapping[str, torch.Tensor],
                target_batch: TargetBatch | None, target_out: Mapping[str, torch.Tensor] | None,
                step: int, total_steps: int) -> dict[str, torch.Tensor]:
        return {}

    def _adapt_for_inference(self, model: nn.Module, target_loader: Unlabelled) -> nn.Module:
        return model

    def transform_images(self, images: torch.Tensor, domain: Domain) -> torch.Tensor:
        """Input-space harmonisation of (B,1,H,W) images; identity unless overridden."""
        return images

    def extra_repr(self) -> str:
        return f"name={self.name!r}, transductive={self.transductive}"


def register_method(name: str):
    """Class decorator: register a method under ``name`` and set its ``name`` attribute."""

    def add(cls: type[AdaptationMethod]) -> type[AdaptationMethod]:
        cls.name = name
        return METHODS.register(name)(cls)

    return add


register_method("erm")(AdaptationMethod)


# ----------------------------------------------------------------------- batch helpers
def batch_size(batch: Batch) -> int:
    return int(batch["image"].shape[0])


def to_model_device(batch: Batch, model: nn.Module) -> Batch:
    """The batch's tensors on the device of ``model``'s parameters (loaders yield CPU tensors)."""
    device = next(model.parameters()).device
    moved = {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}
    return TargetBatch(moved) if isinstance(batch, TargetBatch) else moved


def concat_batches(first: Batch, second: Batch) -> dict[str, Any]:
    """One batch of both: the keys they share, concatenated along the batch dimension."""
    shared = [key for key in first if key in second]
    out: dict[str, Any] = {}
    for key in shared:
        a, b = first[key], second[key]
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            if a.shape[1:] != b.shape[1:]:
                raise ValueError(f"batch key {key!r}: source shape {tuple(a.shape)} and target shape "
                                 f"{tuple(b.shape)} differ beyond the batch dimension")
            out[key] = torch.cat([a, b.to(a.dtype)])
        elif isinstance(a, list) and isinstance(b, list):
            out[key] = a + b
    return out


def split_outputs(outputs: Mapping[str, Any], first_size: int) -> tuple[dict, dict]:
    """Split a model output dict of a concatenated batch back into its two parts."""
    first, second = {}, {}
    for key, value in outputs.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"model output {key!r} is a {type(value).__name__}; expected a batch-first tensor")
        first[key], second[key] = value[:first_size], value[first_size:]
    return first, second


def require_output(outputs: Mapping[str, torch.Tensor], key: str, method: str) -> torch.Tensor:
    """``outputs[key]`` or an error naming the method and the keys the model does return."""
    if key not in outputs:
        raise KeyError(f"adaptation method {method!r} needs the model output {key!r}; "
                       f"the model returned {sorted(outputs)}")
    return outputs[key]
