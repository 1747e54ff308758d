"""The training loop: plain PyTorch, every step visible.

AdamW with linear warm-up then cosine decay (over the epochs, or over the time budget when
that runs out first), for a pretrained encoder optionally frozen for some epochs and at a
lower (layer-wise decayed) learning rate than the heads, gradient clipping, early stopping on a
validation score, a checkpoint every epoch that stores the config and resumes exactly,
per-task loss weights logged every epoch (``history.csv`` in the run folder, rewritten
after each epoch, so a run in progress can be watched), and a progress bar with loss and metrics.

Callbacks watch the loop without the loop knowing them (MONAI's handlers are the model):
any object with some of ``on_fit_start(trainer)``, ``on_epoch_end(trainer, row)`` and
``on_fit_end(trainer, result)`` is called at those points, in the order given. MLflow's
live tracking is one (:class:`senolab.tracking.LiveRun`); the engine never imports it.
Each history row carries ``time_ms``, the wall-clock time it was written, so a replay of
``history.csv`` gives the same metric points as the live run did.

Reproducibility on CPU: the shuffling generator, the augmentation draw and the global
torch RNG are all re-seeded from (seed, epoch) at the start of each epoch, so a run
resumed from an epoch checkpoint replays the same batches and dropout masks as one that
never stopped.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from senolab.adaptation import METHODS, AdaptationMethod
from senolab.checkpoint import load_checkpoint, save_checkpoint
from senolab.engine.config import ExperimentConfig
from senolab.engine.data import PreparedData
from senolab.engine.predict import predict, validation_score
from senolab.models import BALANCERS, MultiTaskModel, build_model, multitask_losses


# A config's head flag (a field of HeadsConfig) -> the head it enables (a name in
# senolab.models.HEADS) and that head's options, sized from the data; adding a head is one
# entry. tests/test_registries.py keeps the flags equal to HeadsConfig's fields.
HEADS_BY_FLAG = {
    "classification": ("cls", lambda data: {"num_classes": len(data.classes)}),
    "segmentation": ("seg", lambda data: {}),
    "bbox": ("box", lambda data: {}),
}


def model_from_config(config: ExperimentConfig, data: PreparedData, initial_weights: bool = True) -> nn.Module:
    """The multi-task model a config describes, sized for the data's classes and inputs.

    ``initial_weights=False`` builds the architecture only, without reading ``model.checkpoint``
    or an encoder's ``pretrained`` weights: for a model whose trained weights are loaded
    next (a packaged model), so a moved weights file or a machine without internet (for
    ``pretrained: true``) does not matter."""
    heads = {head: options(data) for flag, (head, options) in HEADS_BY_FLAG.items()
             if getattr(config.model.heads, flag)}
    encoder_options, checkpoint = config.model.encoder_options, config.model.checkpoint
    if not initial_weights:
        encoder_options, checkpoint = {k: v for k, v in encoder_options.items() if k != "pretrained"}, None
    model = build_model(config.model.encoder, heads, encoder_options, checkpoint)
    if config.model.fusion is None:
        return model
    from senolab.fusion import fusion_for_data

    # the fusion is sized from the encoder's embedding and the data's tabular inputs
    fusion = fusion_for_data(config.model.fusion, model.encoder.embedding_dim, data, **config.model.fusion_options)
    return MultiTaskModel(model.encoder, heads, fusion)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def warmup_cosine(step: int, progress: float, warmup_steps: int, total_steps: int) -> float:
    """Multiplier of the base learning rate: linear warm-up over ``warmup_steps``, then a
    cosine decay that reaches zero when ``progress`` (0..1, see :meth:`Trainer.progress`) does."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    warmup = warmup_steps / total_steps
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, (progress - warmup) / max(1e-9, 1.0 - warmup)))))


def backbone_parameters(model: MultiTaskModel) -> list[nn.Parameter]:
    """The encoder's parameters outside its decoder: what a pretrained encoder brings (every
    registered encoder names its segmentation decoder ``decoder``)."""
    return [p for name, p in model.encoder.named_parameters() if not name.startswith("decoder.")]


def parameter_groups(model: MultiTaskModel, others: Sequence[nn.Module], train) -> list[dict]:
    """AdamW's parameter groups, each with an ``lr_scale`` on the scheduled learning rate.

    Without fine-tuning options, one group of everything (as it always was). Otherwise the
    heads, decoder, fusion, method and balancer first, at ``lr``; then the backbone at
    ``lr * encoder_lr_scale``, split by the encoder's layers when ``layer_decay`` is set
    (timm's grouping: deeper layers keep more of the rate). Group 0 is always at ``lr``.
    """
    everything = [*model.parameters(), *(p for module in others for p in module.parameters())]
    if not train.fine_tuning:
        return [{"params": everything, "lr_scale": 1.0}]
    backbone = {id(p) for p in backbone_parameters(model)}
    groups = [{"params": [p for p in everything if id(p) not in backbone], "lr_scale": 1.0}]
    if train.layer_decay is not None:
        layered = model.encoder.layer_decay_groups(train.weight_decay, train.layer_decay)
        groups += [{**group, "lr_scale": group["lr_scale"] * train.encoder_lr_scale} for group in layered]
    else:
        groups.append({"params": backbone_parameters(model), "lr_scale": train.encoder_lr_scale})
    return groups


def freeze_backbone(model: MultiTaskModel, frozen: bool) -> None:
    """No gradient for the backbone while ``frozen`` (AdamW then leaves it as it is)."""
    for parameter in backbone_parameters(model):
        parameter.requires_grad_(not frozen)


@dataclass
class TrainResult:
    model: nn.Module
    method: AdaptationMethod
    history: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    best_score: float = float("-inf")
    stopped_early: bool = False


class Trainer:
    """Trains one multi-task model (optionally with a domain-adaptation method)."""

    def __init__(self, config: ExperimentConfig, data: PreparedData, out_dir: str | Path,
                 method: str = "erm", method_options: dict | None = None, target_part: str | None = None,
                 selection=None, callbacks: Sequence[object] = ()):
        self.config, self.data, self.out_dir = config, data, Path(out_dir)
        self.callbacks = list(callbacks)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.selection = selection  # callable(trainer) -> extra validation metrics
        self.device = pick_device(config.train.device)
        seed_everything(config.train.seed)
        self.model = model_from_config(config, data).to(self.device)
        self.balancer = BALANCERS.build(config.loss.balancer, tasks=self.model.tasks, **config.loss.balancer_options)
        self.loss_config = config.loss  # the models' own LossConfig: every YAML loss option reaches the loss
        self.method = METHODS.build(method, **(method_options or {}))
        self.target_part = target_part  # e.g. "test" for unlabelled target-site images
        self.train_loader = data.loader("train", config.train.batch_size, shuffle=True, seed=config.train.seed,
                                        num_workers=config.train.num_workers)
        self.target_loader = None
        if self.method.needs_target or self.method.transductive:
            if target_part is None:
                raise ValueError(f"method {method!r} needs unlabelled target images: give target_part")
            self.target_loader = data.loader(target_part, config.train.batch_size, shuffle=True,
                                             seed=config.train.seed + 7, labelled=False,
                                             num_workers=config.train.num_workers)
        self.method.prepare(self.model, self.train_loader, self.target_loader)
        self.method.to(self.device)
        self.optimizer = torch.optim.AdamW(parameter_groups(self.model, [self.method, self.balancer], config.train),
                                           lr=config.train.lr, weight_decay=config.train.weight_decay)
        steps_per_epoch = max(1, len(self.train_loader))
        self.total_steps = steps_per_epoch * config.train.epochs
        self.warmup_steps = int(config.train.warmup_epochs * steps_per_epoch)

    # --------------------------------------------------------------------------- loop
    def fit(self, resume: bool = True, progress: bool = True, until_epoch: int | None = None) -> TrainResult:
        """Train from ``last.pt`` if there is one (``resume``); ``until_epoch`` stops after that many
        epochs in all, as a killed run would, so a later call resumes from there."""
        cfg = self.config.train
        result = TrainResult(self.model, self.method)
        start_epoch, bad_epochs, step, elapsed = 0, 0, 0, 0.0
        last = self.out_dir / "last.pt"
        if resume and last.exists():
            start_epoch, bad_epochs, step, elapsed = self._restore(load_checkpoint(last, self.device), result)
        self._notify("on_fit_start", self)
        for epoch in range(start_epoch, min(cfg.epochs, until_epoch or cfg.epochs)):
            if self.out_of_time(elapsed):  # a run resumed after its budget was spent
                break
            began = time.perf_counter()
            self._seed_epoch(epoch)
            freeze_backbone(self.model, epoch < cfg.freeze_encoder_epochs)
            train_losses, step = self._train_epoch(epoch, step, elapsed, progress)
            train_seconds = time.perf_counter() - began  # without validation: for training throughput
            metrics = self._validate()
            elapsed += time.perf_counter() - began
            row = {"epoch": epoch, **train_losses, **metrics, "lr": self.optimizer.param_groups[0]["lr"],
                   **{f"weight_{k}": v for k, v in self.balancer.weights().items()}, "seconds": elapsed,
                   "train_seconds": train_seconds, "time_ms": int(time.time() * 1000)}
            result.history.append(row)
            pd.DataFrame(result.history).to_csv(self.out_dir / "history.csv", index=False)
            self._notify("on_epoch_end", self, row)
            self.balancer.end_epoch({t: train_losses[f"loss_{t}"] for t in self.model.tasks if f"loss_{t}" in train_losses})
            score = metrics[cfg.early_stopping.metric]
            if score > result.best_score:
                result.best_score, result.best_epoch, bad_epochs = score, epoch, 0
                save_checkpoint(self.out_dir / "best.pt", model=self.model.state_dict(),
                                method=self.method.state_dict(), epoch=epoch, score=score,
                                config=self.config.model_dump())
            else:
                bad_epochs += 1
            out_of_time = self.out_of_time(elapsed)
            result.stopped_early = bad_epochs >= cfg.early_stopping.patience
            self._save_last(epoch, bad_epochs, step, elapsed, result)
            if progress:
                tqdm.write(_format_row(row))
            if result.stopped_early or out_of_time:
                break
        best = load_checkpoint(self.out_dir / "best.pt", self.device)
        self.model.load_state_dict(best["model"])
        self.method.load_state_dict(best["method"])
        self._notify("on_fit_end", self, result)
        return result

    def _notify(self, event: str, *args) -> None:
        for callback in self.callbacks:
            handler = getattr(callback, event, None)
            if handler is not None:
                handler(*args)

    def _seed_epoch(self, epoch: int) -> None:
        seed = self.config.train.seed * 100_003 + epoch
        torch.manual_seed(seed)
        self.train_loader.generator.manual_seed(seed)
        self.train_loader.dataset.set_epoch(epoch)
        if self.target_loader is not None:
            self.target_loader.generator.manual_seed(seed + 1)
            self.target_loader.dataset.set_epoch(epoch)

    def out_of_time(self, spent: float) -> bool:
        return self.config.train.time_budget_s is not None and spent >= self.config.train.time_budget_s

    def progress(self, step: int, spent: float) -> float:
        """How far through the run (0..1): by steps, or by the time budget if that runs out first.

        The learning-rate decay and the methods' schedules (DANN's lambda) follow it, so a
        run cut by its time budget still anneals instead of stopping at a high learning rate
        ("budgeted training", Li, Yumer & Ramanan, ICLR 2020).
        """
        budget = self.config.train.time_budget_s
        by_steps = step / self.total_steps
        return min(1.0, max(by_steps, spent / budget)) if budget else by_steps

    def _train_epoch(self, epoch: int, step: int, spent_before: float, progress: bool) -> tuple[dict, int]:
        """One pass over the training loader, cut short when the time budget is spent."""
        began = time.perf_counter()
        self.model.train()
        self.method.train()
        # per key: a task absent from a batch (no case could contribute) is not averaged in
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        target_iter = iter(self.target_loader) if self.target_loader is not None else None
        bar = tqdm(self.train_loader, desc=f"epoch {epoch + 1}/{self.config.train.epochs}", leave=False,
                   disable=not progress, unit="batch")
        for batch in bar:
            batch = _to_device(batch, self.device)
            target = None
            if target_iter is not None:
                target, target_iter = _next_cycling(target_iter, self.target_loader)
                target = _to_device(target, self.device)
            position = self.progress(step, spent_before + time.perf_counter() - began)
            for group in self.optimizer.param_groups:
                group["lr"] = (self.config.train.lr * group.get("lr_scale", 1.0)
                               * warmup_cosine(step, position, self.warmup_steps, self.total_steps))
            out = self.method(self.model, batch, target, round(position * self.total_steps), self.total_steps)
            task_losses = multitask_losses(out.source_out, batch, self.loss_config)
            total = self.balancer.combine(task_losses, self.model.shared_parameters())
            total = total + sum(out.losses.values(), torch.zeros((), device=self.device))
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            if self.config.train.grad_clip:
                params = [p for group in self.optimizer.param_groups for p in group["params"]]
                nn.utils.clip_grad_norm_(params, self.config.train.grad_clip)
            self.optimizer.step()
            step += 1
            logged = {"loss": total.item(), **{f"loss_{k}": v.item() for k, v in task_losses.items()},
                      **{f"loss_{k}": v.item() for k, v in out.losses.items()}}
            for k, v in logged.items():
                sums[k] = sums.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + 1
            bar.set_postfix(loss=f"{logged['loss']:.3f}")
            if self.out_of_time(spent_before + time.perf_counter() - began):
                break
        return {k: v / counts[k] for k, v in sums.items()}, step

    def _validate(self) -> dict:
        """The model-selection score; by default on source validation cases only.

        ``selection`` may replace it with an unsupervised score on the unlabelled target
        (the study runner's ``target_entropy``); target labels are never read here.
        """
        loader = self.data.loader("val", self.config.train.batch_size)
        table = predict(self.model, loader, self.data, self.device,
                        harmonise=lambda b: self.method.harmonise(b, "source"))
        metrics = validation_score(table, self.model.tasks)
        if self.selection is not None:
            metrics.update(self.selection(self))
        return metrics

    # ----------------------------------------------------------------- checkpointing
    def _save_last(self, epoch: int, bad_epochs: int, step: int, elapsed: float, result: TrainResult) -> None:
        save_checkpoint(
            self.out_dir / "last.pt", model=self.model.state_dict(), method=self.method.state_dict(),
            optimizer=self.optimizer.state_dict(),
            balancer=self.balancer.state_dict(), epoch=epoch, bad_epochs=bad_epochs, step=step, elapsed=elapsed,
            best_epoch=result.best_epoch, best_score=result.best_score, history=result.history,
            config=self.config.model_dump(),
        )

    def _restore(self, state: dict, result: TrainResult) -> tuple[int, int, int, float]:
        self.model.load_state_dict(state["model"])
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.balancer.load_state_dict(state["balancer"])
        result.history = list(state["history"])
        result.best_epoch, result.best_score = state["best_epoch"], state["best_score"]
        return state["epoch"] + 1, state["bad_epochs"], state["step"], state["elapsed"]


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _next_cycling(iterator, loader):
    try:
        return next(iterator), iterator
    except StopIteration:
        iterator = iter(loader)
        return next(iterator), iterator


def _format_row(row: dict) -> str:
    keys = [k for k in row if k.startswith(("loss", "val_", "weight_"))]
    return f"epoch {row['epoch'] + 1}: " + ", ".join(f"{k}={row[k]:.4g}" for k in keys)
