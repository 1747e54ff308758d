"""What a client does with a server message, on its own data only.

A round of training is the engine's own training step (:class:`senolab.engine.trainer.Trainer`:
the method's hook, the multi-task loss and balancer, AdamW with warm-up and cosine decay,
gradient clipping) run for ``local_epochs`` over the site's training cases, starting from
the round's global model. The learning-rate schedule spans the whole federation (rounds x
local epochs), as one centralised run's spans its epochs; the optimiser starts afresh each
round (its moments belong to the client's previous weights), the same for every method,
``local`` included, so a comparison isolates the aggregation.

The state a client keeps between rounds lives on its own disk, next to its site file
(``client_state.pt``): the entries of the model it never sends (FedBN's BatchNorm, the
BatchNorm batch counters), per round, so a resumed federation finds them again.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from senolab.adaptation import METHODS
from senolab.engine.config import ExperimentConfig
from senolab.engine.data import PreparedData

STATE_FILE = "client_state.pt"


@dataclass(frozen=True)
class Layout:
    """Which model entries travel: ``shapes`` of every floating-point entry, the ``shared``
    ones (sent both ways) and the ``local`` ones (kept by the client)."""

    shapes: dict[str, tuple[int, ...]]
    shared: frozenset[str]
    local: frozenset[str]


def model_layout(model: nn.Module, method) -> Layout:
    state = model.state_dict()
    floating = {k: tuple(v.shape) for k, v in state.items() if v.is_floating_point()}
    local = frozenset(k for k in floating if method.is_local_key(k, model))
    return Layout(floating, frozenset(floating) - local, local)


def build_trainer(plan: dict, data: PreparedData, folder: Path):
    """The engine's trainer for this client: the plan's model, loss, training options and
    method, on the site's own cases (seeded: every client and the server start alike)."""
    from senolab.engine.trainer import Trainer

    config = ExperimentConfig.model_validate(plan["experiment"])
    return Trainer(config, data, folder, method=plan["method"], method_options=plan["options"])


@dataclass
class ClientTrainer:
    """A client's trainer, kept for the federation's rounds in this process: its datasets
    keep their decoded, resized images, instead of reading every image again each round.
    Each round starts from the trainer's initial method and balancer state and a new
    optimiser, exactly as a trainer built afresh would."""

    trainer: object
    method_state: dict
    balancer_state: dict

    def start_round(self):
        from senolab.engine.trainer import parameter_groups

        trainer, train = self.trainer, self.trainer.config.train
        trainer.method.load_state_dict(self.method_state)
        trainer.balancer.load_state_dict(self.balancer_state)
        trainer.optimizer = torch.optim.AdamW(parameter_groups(trainer.model, [trainer.method, trainer.balancer], train),
                                              lr=train.lr, weight_decay=train.weight_decay)
        return trainer


@functools.lru_cache(maxsize=4)
def client_trainer(plan_text: str, site_path: str) -> ClientTrainer:
    """The trainer of this plan at this site (built once per process)."""
    from senolab.federated.site import read_site

    trainer = build_trainer(json.loads(plan_text), read_site(site_path)[1], Path(site_path).parent)
    copy = lambda module: {k: v.clone() for k, v in module.state_dict().items()}  # noqa: E731
    return ClientTrainer(trainer, copy(trainer.method), copy(trainer.balancer))


@functools.lru_cache(maxsize=4)
def plan_layout(plan_text: str, site_path: str) -> Layout:
    """The layout of a plan's model as this client builds it (on its own data)."""
    from senolab.engine.trainer import model_from_config
    from senolab.federated.site import read_site

    plan = json.loads(plan_text)
    config = ExperimentConfig.model_validate(plan["experiment"])
    method = METHODS.build(plan["method"], **plan["options"])
    model = model_from_config(config, read_site(site_path)[1], initial_weights=False)
    return model_layout(model, method)


class ClientState:
    """The entries a client never sends, per round, in its own folder."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / STATE_FILE

    def load(self) -> dict[int, dict[str, torch.Tensor]]:
        return torch.load(self.path, weights_only=True) if self.path.exists() else {}

    def at(self, round_: int) -> dict[str, torch.Tensor] | None:
        """The kept entries after ``round_`` (None before any)."""
        saved = self.load()
        earlier = [r for r in saved if r <= round_]
        return saved[max(earlier)] if earlier else None

    def save(self, round_: int, entries: dict[str, torch.Tensor]) -> None:
        saved = self.load()
        saved[round_] = {k: v.detach().cpu().clone() for k, v in entries.items()}
        tmp = self.path.with_suffix(".tmp")
        torch.save(saved, tmp)
        tmp.replace(self.path)


def load_round_model(model: nn.Module, shared: dict[str, torch.Tensor], kept: dict[str, torch.Tensor] | None) -> None:
    """``model`` with the server's shared entries and the client's own kept ones (its
    initial values before it kept any)."""
    state = model.state_dict()
    state.update({k: v.to(state[k].dtype) for k, v in shared.items()})
    state.update(kept or {})
    model.load_state_dict(state)


def train_round(trainer, round_: int, local_epochs: int) -> dict[str, float]:
    """``local_epochs`` epochs of the engine's training step; the round's mean losses."""
    steps_per_epoch = max(1, len(trainer.train_loader))
    step = (round_ - 1) * local_epochs * steps_per_epoch
    sums: dict[str, float] = {}
    for epoch in range((round_ - 1) * local_epochs, round_ * local_epochs):
        trainer._seed_epoch(epoch)  # noqa: SLF001 - the engine's own per-epoch seeding and step
        losses, step = trainer._train_epoch(epoch, step, 0.0, progress=False)  # noqa: SLF001
        for key, value in losses.items():
            sums[key] = sums.get(key, 0.0) + value / local_epochs
    return sums


def validation_metrics(model: nn.Module, data: PreparedData, method, batch_size: int, device) -> dict[str, float]:
    """The model's validation scores on the site's own validation cases (NaN where undefined,
    so every client reports the same keys)."""
    from senolab.engine.predict import predict, validation_score

    table = predict(model, data.loader("val", batch_size), data, device, harmonise=lambda b: method.harmonise(b, "source"))
    metrics = validation_score(table, model.tasks)
    expected = ["val_score"] + (["val_auc"] if "cls" in model.tasks else []) + (["val_dice"] if "seg" in model.tasks else [])
    return {key: float(metrics.get(key, np.nan)) for key in expected}


def kept_entries(model: nn.Module, layout: Layout) -> dict[str, torch.Tensor]:
    """The model's entries that stay with the client: local ones and non-float counters."""
    return {k: v for k, v in model.state_dict().items() if k not in layout.shared}
