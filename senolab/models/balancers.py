"""Loss balancers: how the per-task losses of a batch become one loss to minimise.

Every balancer is built with the task names (``BALANCERS.build(name, tasks=model.tasks,
...)``) and offers:

- ``combine(losses, shared_params=None) -> Tensor``: the total loss of a batch; ``losses``
  holds the tasks present in it (``multitask_losses`` omits tasks without contributing
  cases) and must not be empty. GradNorm needs ``shared_params``
  (``model.shared_parameters()``) and updates its weights inside ``combine`` whenever the
  losses carry a graph (not under ``torch.no_grad``, so validation never moves them).
- ``end_epoch(epoch_mean_losses)``: the epoch's mean raw loss per task (DWA uses it).
- ``weights() -> dict[str, float]``: the current per-task weights, for logging every epoch.
- ``parameters()``: learnable parameters to hand to the optimiser (uncertainty weighting).
- ``state_dict()``: everything needed to resume (they are ``nn.Module`` s).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from senolab.registry import Registry

BALANCERS: Registry = Registry("loss balancer")


class Balancer(nn.Module):
    """Base: a weighted sum ``sum_i w_i L_i`` over the tasks present; subclasses set the weights."""

    def __init__(self, tasks: Sequence[str]):
        super().__init__()
        tasks = tuple(tasks)
        if not tasks or len(set(tasks)) != len(tasks):
            raise ValueError(f"{type(self).__name__}: tasks must be distinct names, at least one; got {tasks}")
        self.tasks = tasks

    def task_weights(self) -> torch.Tensor:
        """(n_tasks,) weights in the order of ``self.tasks``."""
        raise NotImplementedError

    def combine(self, losses: Mapping[str, torch.Tensor], shared_params: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        present = self._present(losses)
        weights = self.task_weights()
        return sum(weights[self.tasks.index(name)].to(losses[name]) * losses[name] for name in present)

    def end_epoch(self, epoch_mean_losses: Mapping[str, float]) -> None:
        """Called once per epoch with the mean raw loss of each task; a no-op by default."""

    def weights(self) -> dict[str, float]:
        return dict(zip(self.tasks, self.task_weights().detach().cpu().tolist()))

    def _present(self, losses: Mapping[str, torch.Tensor]) -> list[str]:
        unknown = sorted(set(losses) - set(self.tasks))
        if unknown:
            raise KeyError(f"{type(self).__name__}: losses for unknown tasks {unknown}; tasks are {list(self.tasks)}")
        if not losses:
            raise ValueError(
                f"{type(self).__name__}: no task loss to combine (no case in the batch has a label, "
                "mask or box); skip such batches"
            )
        return [name for name in self.tasks if name in losses]


@BALANCERS.register("fixed")
class FixedWeights(Balancer):
    """Constant weights (1 for tasks not named)."""

    def __init__(self, tasks: Sequence[str], weights: Mapping[str, float] | None = None):
        super().__init__(tasks)
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(self.tasks))
        if unknown:
            raise KeyError(f"fixed balancer: weights for unknown tasks {unknown}; tasks are {list(self.tasks)}")
        self.register_buffer("fixed", torch.tensor([float(weights.get(t, 1.0)) for t in self.tasks]))

    def task_weights(self) -> torch.Tensor:
        return self.fixed


@BALANCERS.register("uncertainty")
class UncertaintyWeighting(Balancer):
    """Homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

    Learns ``s_i = log sigma_i^2`` per task and minimises ``sum_i exp(-s_i) L_i + s_i`` (the
    usual form that drops the paper's per-task factors of 1/2). At the optimum
    ``exp(-s_i) = 1 / L_i``: a task with a large loss gets a small weight. The ``s_i`` are
    parameters: give ``balancer.parameters()`` to the optimiser.
    """

    def __init__(self, tasks: Sequence[str], initial_log_variance: float = 0.0):
        super().__init__(tasks)
        self.log_vars = nn.Parameter(torch.full((len(self.tasks),), float(initial_log_variance)))

    def task_weights(self) -> torch.Tensor:
        return torch.exp(-self.log_vars)

    def combine(self, losses: Mapping[str, torch.Tensor], shared_params: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        present = self._present(losses)
        total = 0.0
        for name in present:
            s = self.log_vars[self.tasks.index(name)].to(losses[name])
            total = total + torch.exp(-s) * losses[name] + s
        return total


@BALANCERS.register("gradnorm")
class GradNorm(Balancer):
    """GradNorm (Chen, Badrinarayanan, Lee & Rabinovich, ICML 2018).

    With ``G_i = w_i ||grad_W L_i||`` at the shared layer ``W``, the relative inverse
    training rate ``r_i = (L_i / L_i(0)) / mean_j (L_j / L_j(0))`` and the target
    ``G_bar * r_i ** alpha`` (held constant), the weights descend ``sum_i |G_i - target_i|``.
    Two choices keep it stable when losses differ by orders of magnitude: the step is
    taken on ``log w_i`` (weights stay positive and span a 1000x range in a few hundred
    steps) and the objective is divided by ``G_bar`` (one learning rate suits any loss
    scale, the role Adam plays in the paper). After each step the weights are renormalised
    to sum to the number of tasks. The weights are buffers, not parameters: the training
    loss uses them as constants, as in the paper, and they move only here.
    """

    def __init__(self, tasks: Sequence[str], alpha: float = 1.5, lr: float = 0.025):
        super().__init__(tasks)
        self.alpha, self.lr = float(alpha), float(lr)
        self.register_buffer("log_weights", torch.zeros(len(self.tasks)))
        self.register_buffer("initial_losses", torch.full((len(self.tasks),), float("nan")))

    def task_weights(self) -> torch.Tensor:
        return self.log_weights.exp()

    def combine(self, losses: Mapping[str, torch.Tensor], shared_params: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        total = super().combine(losses, shared_params)
        present = self._present(losses)
        learning = torch.is_grad_enabled() and any(losses[n].requires_grad for n in present)
        if learning and len(present) > 1:
            if not shared_params:
                raise ValueError("gradnorm: combine() needs shared_params, e.g. model.shared_parameters()")
            self._step(present, losses, list(shared_params))
        return total

    def _step(self, present: list[str], losses: Mapping[str, torch.Tensor], shared: list[torch.Tensor]) -> None:
        idx = torch.tensor([self.tasks.index(n) for n in present], device=self.log_weights.device)
        norms = torch.stack([self._grad_norm(name, losses[name], shared) for name in present]).to(self.log_weights)
        current = torch.stack([losses[n].detach() for n in present]).to(self.log_weights)
        first_seen = torch.isnan(self.initial_losses[idx])
        self.initial_losses[idx] = torch.where(first_seen, current, self.initial_losses[idx])
        ratio = current / self.initial_losses[idx]
        inverse_rate = ratio / ratio.mean()
        g = self.log_weights[idx].exp() * norms
        target = g.mean() * inverse_rate**self.alpha
        # d/d(log w_i) of sum_j |G_j - target_j| / G_bar, with target and G_bar held constant.
        step = torch.sign(g - target) * g / g.mean()
        updated = self.log_weights[idx] - self.lr * step
        # Renormalise so all weights sum to the number of tasks, leaving absent tasks' alone.
        absent_sum = self.log_weights.exp().sum() - self.log_weights[idx].exp().sum()
        share = len(self.tasks) - absent_sum
        self.log_weights[idx] = updated - torch.log(updated.exp().sum() / share)

    @staticmethod
    def _grad_norm(name: str, loss: torch.Tensor, shared: list[torch.Tensor]) -> torch.Tensor:
        grads = torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True)
        squares = [g.pow(2).sum() for g in grads if g is not None]
        norm = torch.stack(squares).sum().sqrt() if squares else torch.zeros(())
        if norm == 0:
            raise ValueError(f"gradnorm: task {name!r} has no gradient at the shared parameters; pass a layer every head uses")
        return norm.detach()


@BALANCERS.register("dwa")
class DynamicWeightAverage(Balancer):
    """Dynamic weight averaging (Liu, Johns & Davison, CVPR 2019, MTAN).

    ``w_i = K softmax_i(r_i / T)`` with ``r_i = L_i(t-1) / L_i(t-2)`` the ratio of the last
    two epochs' mean losses: the task whose loss falls slowest gets the most weight.
    Weights are 1 until two epochs have been seen; a task missing from an epoch keeps
    ratio 1.
    """

    def __init__(self, tasks: Sequence[str], temperature: float = 2.0):
        super().__init__(tasks)
        if temperature <= 0:
            raise ValueError(f"dwa: temperature must be positive; got {temperature}")
        self.temperature = float(temperature)
        # Row 0: epoch t-2, row 1: epoch t-1; NaN where unknown.
        self.register_buffer("history", torch.full((2, len(self.tasks)), float("nan")))

    def end_epoch(self, epoch_mean_losses: Mapping[str, float]) -> None:
        unknown = sorted(set(epoch_mean_losses) - set(self.tasks))
        if unknown:
            raise KeyError(f"dwa: epoch losses for unknown tasks {unknown}; tasks are {list(self.tasks)}")
        latest = torch.tensor([float(epoch_mean_losses.get(t, float("nan"))) for t in self.tasks])
        self.history = torch.stack([self.history[1], latest.to(self.history)])

    def task_weights(self) -> torch.Tensor:
        ratio = self.history[1] / self.history[0]
        ratio = torch.where(torch.isfinite(ratio), ratio, torch.ones_like(ratio))
        return len(self.tasks) * torch.softmax(ratio / self.temperature, dim=0)
