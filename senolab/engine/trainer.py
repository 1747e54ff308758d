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

Several devices (``train.devices``, :mod:`senolab.engine.distributed`): the training step
(model, adaptation method and loss balancer, :class:`TrainingStep`) is wrapped in DDP, each
rank trains on its share of every global batch (the same shuffled order as one device), and
rank 0 alone validates, writes the run folder and calls the callbacks; its decisions (early
stopping, the time spent) are broadcast so every rank stops at the same step. ``train.precision``: the forward pass under autocast
(bfloat16 or float16, the latter with a gradient scaler), the losses in float32.
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
from senolab.engine import distributed
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


# train.precision -> the autocast dtype of the forward pass (None: float32 throughout)
AUTOCAST = {"32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


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


class TrainingStep(nn.Module):
    """The forward half of a training step: the method runs the model on the batch (under
    autocast when ``autocast_dtype``), and the task losses, in float32, are combined with
    the method's. Returns (total, task losses, method losses).

    One module holding the model, the method and the balancer, so that on several devices
    DDP wraps all three: the gradients of a method's own parameters (DANN's domain
    classifier) and of a balancer's (uncertainty weighting) are averaged like the model's,
    and a method that runs the model twice in a step (self-training) is still one DDP forward.
    """

    def __init__(self, model: MultiTaskModel, method: AdaptationMethod, balancer: nn.Module, loss_config,
                 autocast_dtype: torch.dtype | None):
        super().__init__()
        self.model, self.method, self.balancer = model, method, balancer
        self.loss_config, self.autocast_dtype = loss_config, autocast_dtype

    def forward(self, batch: dict, target: dict | None, step: int, total_steps: int):
        device = next(self.model.parameters()).device
        with torch.autocast(device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            out = self.method(self.model, batch, target, step, total_steps)
        task_losses = multitask_losses(_float32(out.source_out), batch, self.loss_config)
        method_losses = _float32(out.losses)
        total = self.balancer.combine(task_losses, self.model.shared_parameters())
        return total + sum(method_losses.values(), torch.zeros((), device=device)), task_losses, method_losses


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
        self.main = distributed.is_main()  # rank 0 (always, on one device): validates and writes
        self.callbacks = list(callbacks) if self.main else []
        if self.main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self.selection = selection  # callable(trainer) -> extra validation metrics
        distributed.check_world(config.train)
        distributed.check_devices(config.train)  # e.g. 16-mixed or SyncBatchNorm on CPU
        self.device = distributed.local_device(pick_device(config.train.device))
        seed_everything(config.train.seed)
        self.model = model_from_config(config, data).to(self.device)
        self.balancer = BALANCERS.build(config.loss.balancer, tasks=self.model.tasks, **config.loss.balancer_options)
        self.method = METHODS.build(method, **(method_options or {}))
        self.target_part = target_part  # e.g. "test" for unlabelled target-site images
        if (self.method.needs_target or self.method.transductive) and target_part is None:
            raise ValueError(f"method {method!r} needs unlabelled target images: give target_part")
        # the method is prepared on every case (as on one device), each rank trains on its share
        whole = self._loaders((0, 1))
        self.method.prepare(self.model, *whole)
        self.train_loader, self.target_loader = whole if distributed.world_size() == 1 else self._loaders(distributed.shard())
        self.method.to(self.device)
        if distributed.world_size() > 1:
            distributed.check_replicable(self.balancer)
        self.autocast_dtype = AUTOCAST[config.train.precision]
        # the training step's forward, wrapped in DDP on several devices (sharing the parameters);
        # config.loss is the models' own LossConfig: every YAML loss option reaches the loss
        self.step = distributed.data_parallel(
            TrainingStep(self.model, self.method, self.balancer, config.loss, self.autocast_dtype),
            config.train, self.device)
        self.optimizer = torch.optim.AdamW(parameter_groups(self.model, [self.method, self.balancer], config.train),
                                           lr=config.train.lr, weight_decay=config.train.weight_decay)
        # float16 gradients underflow without loss scaling; the scaler passes everything through otherwise
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.autocast_dtype is torch.float16)
        steps_per_epoch = max(1, len(self.train_loader))
        self.total_steps = steps_per_epoch * config.train.epochs
        self.warmup_steps = int(config.train.warmup_epochs * steps_per_epoch)

    def _loaders(self, shard: tuple[int, int]):
        """The training loader and the unlabelled target loader (None if the method needs none)
        for ``shard`` (rank, world size): each rank's batch is its share of the global batch."""
        cfg = self.config.train
        batch = cfg.batch_size // shard[1]
        train = self.data.loader("train", batch, shuffle=True, seed=cfg.seed, num_workers=cfg.num_workers,
                                 shard=shard)
        if not (self.method.needs_target or self.method.transductive):
            return train, None
        target = self.data.loader(self.target_part, batch, shuffle=True, seed=cfg.seed + 7, labelled=False,
                                  num_workers=cfg.num_workers, shard=shard)
        return train, target

    # --------------------------------------------------------------------------- loop
    def fit(self, resume: bool = True, progress: bool = True, until_epoch: int | None = None) -> TrainResult:
        """Train from ``last.pt`` if there is one (``resume``); ``until_epoch`` stops after that many
        epochs in all, as a killed run would, so a later call resumes from there."""
        cfg = self.config.train
        result = TrainResult(self.model, self.method)
        start_epoch, bad_epochs, step, elapsed = 0, 0, 0, 0.0
        last = self.out_dir / "last.pt"
        # read on rank 0 and broadcast: the other ranks (maybe on other machines) need no copy of the folder
        state = distributed.broadcast_object(load_checkpoint(last) if self.main and resume and last.exists() else None)
        if state is not None:
            start_epoch, bad_epochs, step, elapsed = self._restore(state, result)
        progress = progress and self.main
        self._notify("on_fit_start", self)
        for epoch in range(start_epoch, min(cfg.epochs, until_epoch or cfg.epochs)):
            if self.out_of_time(elapsed):  # a run resumed after its budget was spent
                break
            began = time.perf_counter()
            self._seed_epoch(epoch)
            freeze_backbone(self.model, epoch < cfg.freeze_encoder_epochs)
            train_losses, step = self._train_epoch(epoch, step, elapsed, progress)
            train_seconds = time.perf_counter() - began  # without validation: for training throughput
            weights = {f"weight_{k}": v for k, v in self.balancer.weights().items()}  # those this epoch used
            self.balancer.end_epoch({t: train_losses[f"loss_{t}"] for t in self.model.tasks if f"loss_{t}" in train_losses})
            verdict = None
            if self.main:
                bad_epochs, elapsed = self._close_epoch(epoch, train_losses, weights, train_seconds, began,
                                                        (bad_epochs, step, elapsed), result, progress)
                verdict = (bad_epochs, elapsed, result.best_epoch, result.best_score, result.stopped_early)
            # every rank follows rank 0's decision, so all stop after the same epoch
            bad_epochs, elapsed, result.best_epoch, result.best_score, result.stopped_early = \
                distributed.broadcast_object(verdict)
            if result.stopped_early or self.out_of_time(elapsed):
                break
        best = distributed.broadcast_object(load_checkpoint(self.out_dir / "best.pt") if self.main else None)
        self.model.load_state_dict(best["model"])
        self.method.load_state_dict(best["method"])
        self._notify("on_fit_end", self, result)
        return result

    def _close_epoch(self, epoch: int, train_losses: dict, weights: dict, train_seconds: float, began: float,
                     counters: tuple[int, int, float], result: TrainResult, progress: bool) -> tuple[int, float]:
        """Rank 0's end of an epoch: validate, log the row (history.csv, callbacks), keep the
        best model and the checkpoint to resume from. ``counters``: (bad_epochs, step, elapsed)
        before this epoch's validation; returns the new (bad_epochs, elapsed)."""
        cfg = self.config.train
        bad_epochs, step, elapsed = counters
        metrics = self._validate()
        elapsed += time.perf_counter() - began  # this epoch's training and validation
        row = {"epoch": epoch, **train_losses, **metrics, "lr": self.optimizer.param_groups[0]["lr"], **weights,
               "seconds": elapsed, "train_seconds": train_seconds, "time_ms": int(time.time() * 1000)}
        result.history.append(row)
        pd.DataFrame(result.history).to_csv(self.out_dir / "history.csv", index=False)
        self._notify("on_epoch_end", self, row)
        score = metrics[cfg.early_stopping.metric]
        if score > result.best_score:
            result.best_score, result.best_epoch, bad_epochs = score, epoch, 0
            save_checkpoint(self.out_dir / "best.pt", model=self.model.state_dict(),
                            method=self.method.state_dict(), epoch=epoch, score=score,
                            config=self.config.model_dump())
        else:
            bad_epochs += 1
        result.stopped_early = bad_epochs >= cfg.early_stopping.patience
        self._save_last(epoch, bad_epochs, step, elapsed, result)
        if progress:
            tqdm.write(_format_row(row))
        return bad_epochs, elapsed

    def _notify(self, event: str, *args) -> None:
        for callback in self.callbacks:
            handler = getattr(callback, event, None)
            if handler is not None:
                handler(*args)

    def _seed_epoch(self, epoch: int) -> None:
        seed = self.config.train.seed * 100_003 + epoch
        # the global RNG (dropout) differs by rank, so the ranks' shares are not given the same
        # masks (rank 0 draws a 1-device run's); the loaders' order is the same on every rank
        torch.manual_seed(seed + 1_000_003 * distributed.rank())
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
        spent = spent_before
        for batch in bar:
            batch = _to_device(batch, self.device)
            target = None
            if target_iter is not None:
                target, target_iter = _next_cycling(target_iter, self.target_loader)
                target = _to_device(target, self.device)
            position = self.progress(step, spent)
            for group in self.optimizer.param_groups:
                group["lr"] = (self.config.train.lr * group.get("lr_scale", 1.0)
                               * warmup_cosine(step, position, self.warmup_steps, self.total_steps))
            total, task_losses, method_losses = self.step(batch, target, round(position * self.total_steps),
                                                          self.total_steps)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(total).backward()  # DDP averages the gradients over the ranks here
            if self.config.train.grad_clip:
                self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
                params = [p for group in self.optimizer.param_groups for p in group["params"]]
                nn.utils.clip_grad_norm_(params, self.config.train.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            step += 1
            logged = {"loss": total.item(), **{f"loss_{k}": v.item() for k, v in task_losses.items()},
                      **{f"loss_{k}": v.item() for k, v in method_losses.items()}}
            for k, v in logged.items():
                sums[k] = sums.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + 1
            bar.set_postfix(loss=f"{logged['loss']:.3f}")
            spent = self._spent(spent_before, began)
            if self.out_of_time(spent):
                break
        return _pooled_means(distributed.gather_objects((sums, counts))), step

    def _spent(self, before: float, began: float) -> float:
        """Seconds of the run so far. Under a time budget it sets the learning rate and the
        stop, so every rank takes rank 0's count (one scalar broadcast a step)."""
        spent = before + time.perf_counter() - began
        return distributed.broadcast_scalar(spent) if self.config.train.time_budget_s else spent

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
        # the model's own state_dict, never DDP's (whose keys start with "module."): any device count resumes it
        save_checkpoint(
            self.out_dir / "last.pt", model=self.model.state_dict(), method=self.method.state_dict(),
            optimizer=self.optimizer.state_dict(), scaler=self.scaler.state_dict(),
            balancer=self.balancer.state_dict(), epoch=epoch, bad_epochs=bad_epochs, step=step, elapsed=elapsed,
            best_epoch=result.best_epoch, best_score=result.best_score, history=result.history,
            config=self.config.model_dump(),
        )

    def _restore(self, state: dict, result: TrainResult) -> tuple[int, int, int, float]:
        self.model.load_state_dict(state["model"])
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.balancer.load_state_dict(state["balancer"])
        if state.get("scaler"):  # a float16 run's loss scale (empty otherwise, or in older checkpoints)
            self.scaler.load_state_dict(state["scaler"])
        result.history = list(state["history"])
        result.best_epoch, result.best_score = state["best_epoch"], state["best_score"]
        return state["epoch"] + 1, state["bad_epochs"], state["step"], state["elapsed"]


def _float32(tensors: dict) -> dict:
    """Autocast's half-precision outputs in float32, where the losses are computed."""
    return {k: v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in tensors.items()}


def _pooled_means(per_rank: list[tuple[dict, dict]]) -> dict:
    """Each logged loss's mean over the batches of every rank, from their (sums, counts)."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for rank_sums, rank_counts in per_rank:
        for k, v in rank_sums.items():
            sums[k] = sums.get(k, 0.0) + v
            counts[k] = counts.get(k, 0) + rank_counts[k]
    return {k: v / counts[k] for k, v in sums.items()}


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
