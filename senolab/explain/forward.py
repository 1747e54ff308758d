"""A dict-returning senolab model seen by Captum as a function of tensors to a tensor.

senolab models take the batch dict and return the output dict of docs/contracts.md#model-outputs. Captum wants
``forward(*inputs, *additional_forward_args) -> Tensor``. :class:`BatchForward` rebuilds
the batch from the attributed tensors (``inputs``) and the other batch tensors (passed as
Captum's ``additional_forward_args``, which Captum repeats alongside the inputs when it
expands the batch for integration steps or perturbations), calls the model and reads one
output out with a registered readout.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from senolab.registry import Registry

@dataclass(frozen=True)
class Readout:
    """Which number of the model output an attribution explains.

    ``per_class``: the readout is (B, C) and Captum's ``target`` picks the class;
    otherwise it is one number per case (B,).
    """

    name: str
    read: Callable[[Mapping[str, torch.Tensor]], torch.Tensor]
    per_class: bool


READOUTS: Registry[Readout] = Registry("attribution readout")


def _output(outputs: Mapping[str, torch.Tensor], key: str, readout: str) -> torch.Tensor:
    if key not in outputs:
        raise KeyError(
            f"readout {readout!r} needs the model output {key!r}; the model returned {sorted(outputs)}"
        )
    return outputs[key]


def _class_logits(outputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return _output(outputs, "logits", "classification")


def _summed_lesion_logit(outputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    # Summing the lesion logit over the image explains "what makes the model see more lesion".
    return _output(outputs, "seg_logits", "segmentation").flatten(1).sum(1)


READOUTS.register("classification")(Readout("classification", _class_logits, per_class=True))
READOUTS.register("segmentation")(Readout("segmentation", _summed_lesion_logit, per_class=False))


@dataclass
class CaptumCall:
    """The forward module and the arguments of one Captum ``attribute`` call."""

    forward: "BatchForward"
    inputs: tuple[torch.Tensor, ...]
    additional_forward_args: tuple[torch.Tensor, ...]
    batch_size: int


class BatchForward(nn.Module):
    """``readout(model(batch))`` as a function of the tensors Captum passes.

    ``forward(*tensors)`` takes the attributed entries (``input_keys``) then the context
    entries (``context_keys``) in that order, casts each back to the dtype the batch had
    (attributed boolean/integer entries travel as float so perturbation arithmetic works)
    and calls the model on the rebuilt batch.
    """

    def __init__(self, model: nn.Module, readout: str, input_keys: Sequence[str],
                 context_keys: Sequence[str], dtypes: Mapping[str, torch.dtype]):
        super().__init__()
        self.model = model
        self.readout = READOUTS.get(readout)
        self.keys = [*input_keys, *context_keys]
        self.dtypes = dict(dtypes)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        if len(tensors) != len(self.keys):
            raise ValueError(f"expected tensors for {self.keys}, got {len(tensors)} tensors")
        batch = {k: t if t.dtype == self.dtypes[k] else t.to(self.dtypes[k]) for k, t in zip(self.keys, tensors)}
        return self.readout.read(self.model(batch))


def captum_call(model: nn.Module, batch: Mapping[str, object], input_keys: Sequence[str],
                readout: str = "classification") -> CaptumCall:
    """Split ``batch`` into attributed inputs (as float) and context tensors for Captum.

    Context tensors are every other tensor entry with the batch's first dimension; other
    entries (``case_id`` lists) do not reach the model during attribution.
    """
    missing = [k for k in input_keys if k not in batch]
    if missing:
        raise KeyError(f"attribution inputs {missing} are not in the batch (it has {sorted(batch)})")
    inputs = [batch[k] for k in input_keys]
    for key, value in zip(input_keys, inputs):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"batch[{key!r}] must be a tensor to be attributed, got {type(value).__name__}")
    size = inputs[0].shape[0]
    context_keys = [
        k for k, v in batch.items()
        if k not in input_keys and isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == size
    ]
    dtypes = {k: batch[k].dtype for k in [*input_keys, *context_keys]}
    forward = BatchForward(model, readout, input_keys, context_keys, dtypes)
    return CaptumCall(
        forward=forward,
        # Float copies: perturbation arithmetic needs floats, and Captum switches on
        # requires_grad, which must not touch the caller's batch.
        inputs=tuple(t.detach().to(torch.float32, copy=True).requires_grad_() for t in inputs),
        additional_forward_args=tuple(batch[k] for k in context_keys),
        batch_size=size,
    )


@contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for the duration of an attribution, then the model's previous mode.

    Perturbation and path methods run many altered copies of a case in one batch; in
    training mode BatchNorm would mix their statistics and dropout would add noise.
    """
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def predicted_classes(model: nn.Module, batch: Mapping[str, object]) -> torch.Tensor:
    """The arg-max class of every case: the default class an explanation is about."""
    with torch.no_grad(), evaluation_mode(model):
        logits = _class_logits(model(batch))
    return logits.argmax(dim=1)


def resolve_target(model: nn.Module, batch: Mapping[str, object], readout: str,
                   target: int | torch.Tensor | None) -> int | torch.Tensor | None:
    """Captum's ``target``: the given class(es), else the predicted class; none for scalars."""
    if not READOUTS.get(readout).per_class:
        if target is not None:
            raise ValueError(f"readout {readout!r} gives one number per case; do not pass a target")
        return None
    return predicted_classes(model, batch) if target is None else target
