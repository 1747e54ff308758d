"""The self-supervised training loop: plain PyTorch, like the engine's Trainer.

Per step: a batch of images (label-free by construction, and passed through the label
wall), ``n_views`` augmented views of it, the method's loss, AdamW with linear warm-up
then cosine decay (over the epochs, or over the time budget when that runs out first),
and the method's ``after_step`` (momentum updates). Per epoch: the mean loss, images per
second, every ``monitor_every`` epochs (and the last) the k-NN monitor on the labelled
validation part, a row in ``history.csv`` and ``last.pt`` (everything needed to resume:
the method with its encoder, the optimiser, the step, the time spent, the history).

Callbacks follow the engine's protocol (``on_fit_start(loop)``, ``on_epoch_end(loop,
row)``, ``on_fit_end(loop, result)``), so :class:`senolab.tracking.LiveRun` logs the
epochs to MLflow while it runs. Every epoch re-seeds the shuffling and the views from
(seed, epoch): a run resumed from ``last.pt`` replays what one that never stopped would.
"""
from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from senolab.adaptation.wall import strip_labels
from senolab.checkpoint import load_checkpoint, save_checkpoint
from senolab.models.encoders import build_encoder
from senolab.pretrain.methods import SSL_METHODS, SSLMethod
from senolab.pretrain.monitor import KnnMonitor
from senolab.pretrain.views import UltrasoundViews

LAST = "last.pt"
HISTORY = "history.csv"


def learning_rate_factor(step: int, progress: float, warmup_steps: int) -> float:
    """Linear warm-up over ``warmup_steps``, then a cosine decay to 0 as ``progress`` reaches 1."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))


@dataclass
class PretrainResult:
    method: SSLMethod
    history: list[dict] = field(default_factory=list)

    @property
    def encoder(self):
        return self.method.encoder


class Pretrainer:
    """Pretrains ``encoder`` (a registered encoder name and its options) with ``options``
    (a PretrainOptions of the config) on the images of ``pool``; ``monitor`` (optional)
    measures the embedding on labelled cases the loop never trains on."""

    def __init__(self, encoder: str, encoder_options: dict[str, Any], options, pool: Dataset, out_dir: str | Path,
                 image_size: int, monitor: KnnMonitor | None = None, callbacks: Sequence[object] = ()):
        if len(pool) < 2:
            raise ValueError(f"self-supervised pretraining needs at least 2 images; the pool has {len(pool)}")
        self.options, self.out_dir, self.monitor = options, Path(out_dir), monitor
        self.callbacks = list(callbacks)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.device = torch.device("cuda" if options.device == "auto" and torch.cuda.is_available()
                                   else "cpu" if options.device == "auto" else options.device)
        torch.manual_seed(options.seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        backbone = build_encoder(encoder, decoder=False, **dict(encoder_options))
        self.method = _build_method(options.method, backbone, image_size, options.method_options).to(self.device)
        self.views = UltrasoundViews(options.crop_scale, image_size)
        self.generator = torch.Generator()
        # drop_last: a last batch of one image has no negative and breaks BatchNorm
        self.loader = DataLoader(pool, batch_size=min(options.batch_size, len(pool)), shuffle=True, drop_last=True,
                                 generator=self.generator)
        trainable = [p for p in self.method.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=options.lr, weight_decay=options.weight_decay)
        self.total_steps = max(1, len(self.loader) * options.epochs)
        self.warmup_steps = options.warmup_epochs * len(self.loader)

    # ------------------------------------------------------------------ loop
    def fit(self, resume: bool = True, progress: bool = True, until_epoch: int | None = None) -> PretrainResult:
        """Pretrain from ``last.pt`` if there is one; ``until_epoch`` stops after that many
        epochs in all (as a killed run would), so a later call resumes from there."""
        opts = self.options
        result = PretrainResult(self.method)
        start, step, elapsed = 0, 0, 0.0
        if resume and (self.out_dir / LAST).exists():
            start, step, elapsed = self._restore(load_checkpoint(self.out_dir / LAST, self.device), result)
        cpu = result.history[-1]["cpu_seconds"] if result.history else 0.0
        self._notify("on_fit_start", self)
        for epoch in range(start, min(opts.epochs, until_epoch or opts.epochs)):
            if self._out_of_time(elapsed):
                break
            began, cpu_began = time.perf_counter(), time.process_time()
            self._seed_epoch(epoch)
            loss, images, step = self._train_epoch(epoch, step, elapsed, progress)
            train_seconds = time.perf_counter() - began
            elapsed += train_seconds
            last = epoch + 1 == opts.epochs or self._out_of_time(elapsed)
            row = {"epoch": epoch, "loss": loss, "lr": self.optimizer.param_groups[0]["lr"],
                   "images_per_s": images / max(train_seconds, 1e-9), "seconds": elapsed,
                   "train_seconds": train_seconds}
            if self.monitor is not None and ((epoch + 1) % opts.monitor_every == 0 or last):
                row.update(self._monitor())
            cpu += time.process_time() - cpu_began  # every thread of this process: the cost in CPU time
            row["cpu_seconds"] = cpu
            row["time_ms"] = int(time.time() * 1000)
            result.history.append(row)
            pd.DataFrame(result.history).to_csv(self.out_dir / HISTORY, index=False)
            self._notify("on_epoch_end", self, row)
            self._save_last(epoch, step, elapsed, result)
            if progress:
                tqdm.write(f"pretrain epoch {epoch + 1}: " + ", ".join(
                    f"{k}={v:.4g}" for k, v in row.items() if k in ("loss", "knn_acc", "knn_auc", "images_per_s")))
            if last:
                break
        self._notify("on_fit_end", self, result)
        return result

    def encoder_state(self) -> dict[str, torch.Tensor]:
        """The pretrained weights, by timm's own names: what ``pretrained: PATH`` loads."""
        return {k: v.detach().cpu().contiguous() for k, v in self.method.encoder.backbone.state_dict().items()}

    def _train_epoch(self, epoch: int, step: int, spent_before: float, progress: bool) -> tuple[float, int, int]:
        self.method.train()
        began, total, batches, images = time.perf_counter(), 0.0, 0, 0
        bar = tqdm(self.loader, desc=f"pretrain {epoch + 1}/{self.options.epochs}", leave=False,
                   disable=not progress, unit="batch")
        for batch in bar:
            images_only = strip_labels(batch)["image"]  # the label wall, on a batch that never had labels
            views = [self.views(images_only).to(self.device) for _ in range(self.method.n_views)]
            position = self._progress(step, spent_before + time.perf_counter() - began)
            for group in self.optimizer.param_groups:
                group["lr"] = self.options.lr * learning_rate_factor(step, position, self.warmup_steps)
            loss = self.method.loss(views)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.method.after_step(position)
            step, batches, images = step + 1, batches + 1, images + len(images_only)
            total += loss.item()
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if self._out_of_time(spent_before + time.perf_counter() - began):
                break
        return total / max(batches, 1), images, step

    def _monitor(self) -> dict[str, float]:
        self.method.eval()
        try:
            return self.monitor(self.method.embed, self.device)
        finally:
            self.method.train()

    def _progress(self, step: int, spent: float) -> float:
        budget = self.options.time_budget_s
        by_steps = step / self.total_steps
        return min(1.0, max(by_steps, spent / budget)) if budget else by_steps

    def _out_of_time(self, spent: float) -> bool:
        return self.options.time_budget_s is not None and spent >= self.options.time_budget_s

    def _seed_epoch(self, epoch: int) -> None:
        seed = self.options.seed * 100_003 + epoch
        torch.manual_seed(seed)
        self.generator.manual_seed(seed)

    def _notify(self, event: str, *args) -> None:
        for callback in self.callbacks:
            handler = getattr(callback, event, None)
            if handler is not None:
                handler(*args)

    # ------------------------------------------------------------------ checkpoints
    def _save_last(self, epoch: int, step: int, elapsed: float, result: PretrainResult) -> None:
        save_checkpoint(self.out_dir / LAST, method=self.method.state_dict(), optimizer=self.optimizer.state_dict(),
                        epoch=epoch, step=step, elapsed=elapsed, history=result.history)

    def _restore(self, state: dict, result: PretrainResult) -> tuple[int, int, float]:
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        result.history = list(state["history"])
        return state["epoch"] + 1, state["step"], state["elapsed"]


def _build_method(name: str, encoder, image_size: int, options: dict) -> SSLMethod:
    cls = SSL_METHODS.get(name)
    extra = {"image_size": image_size} if "image_size" in inspect.signature(cls).parameters else {}
    return cls(encoder, **extra, **dict(options))
