"""Loss balancers on a toy two-task problem whose losses are 1000x apart."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from senolab.models import BALANCERS

TASKS = ("small", "large")
SCALE = 1000.0


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class ToyTwoTask(nn.Module):
    """A shared layer and two regression heads; the 'large' loss is scaled 1000x.

    'small' regresses a linear target (easy: its loss falls fast); 'large' a noisy,
    nonlinear one (its loss falls slower).
    """

    def __init__(self, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        self.shared = nn.Linear(8, 32)
        self.heads = nn.ModuleDict({t: nn.Linear(32, 1) for t in TASKS})
        self.x = torch.randn(256, 8, generator=gen)
        self.targets = {
            "small": self.x @ torch.randn(8, 1, generator=gen),
            "large": torch.sin(3 * self.x[:, :1]) * self.x[:, 1:2] + 0.5 * torch.randn(256, 1, generator=gen),
        }

    def losses(self) -> dict[str, torch.Tensor]:
        hidden = torch.tanh(self.shared(self.x))
        mse = {t: nn.functional.mse_loss(self.heads[t](hidden), self.targets[t]) for t in TASKS}
        return {"small": mse["small"], "large": SCALE * mse["large"]}

    def weighted_grad_norms(self, weights: dict[str, float]) -> dict[str, float]:
        losses = self.losses()
        norms = {}
        for t in TASKS:
            (grad,) = torch.autograd.grad(losses[t], self.shared.weight, retain_graph=True)
            norms[t] = weights[t] * grad.norm().item()
        return norms


def train(balancer, steps: int, lr: float = 0.01, epoch_length: int | None = None) -> ToyTwoTask:
    """SGD on the toy problem with the balancer's combined loss; returns the trained toy."""
    toy = ToyTwoTask()
    optimiser = torch.optim.Adam([*toy.parameters(), *balancer.parameters()], lr=lr)
    epoch_sums = {t: 0.0 for t in TASKS}
    for step in range(1, steps + 1):
        losses = toy.losses()
        total = balancer.combine(losses, [toy.shared.weight])
        optimiser.zero_grad()
        total.backward()
        optimiser.step()
        for t in TASKS:
            epoch_sums[t] += losses[t].item()
        if epoch_length and step % epoch_length == 0:
            balancer.end_epoch({t: s / epoch_length for t, s in epoch_sums.items()})
            epoch_sums = {t: 0.0 for t in TASKS}
    return toy


def test_registry_has_the_four_methods():
    assert BALANCERS.names() == ["dwa", "fixed", "gradnorm", "uncertainty"]


def test_fixed_weights_stay_put():
    balancer = BALANCERS.build("fixed", tasks=TASKS, weights={"large": 0.001})
    losses = {"small": torch.tensor(2.0), "large": torch.tensor(3000.0)}
    assert balancer.combine(losses).item() == pytest.approx(2.0 + 3.0)
    train(balancer, steps=20, epoch_length=5)
    assert balancer.weights() == pytest.approx({"small": 1.0, "large": 0.001})
    assert list(balancer.parameters()) == []
    with pytest.raises(KeyError, match="unknown tasks \\['sgement'\\]"):
        BALANCERS.build("fixed", tasks=TASKS, weights={"sgement": 1.0})


def test_uncertainty_gives_the_large_loss_the_small_weight():
    balancer = BALANCERS.build("uncertainty", tasks=TASKS)
    assert balancer.weights() == pytest.approx({"small": 1.0, "large": 1.0})
    assert len(list(balancer.parameters())) == 1
    toy = train(balancer, steps=300, lr=0.05)
    weights, losses = balancer.weights(), toy.losses()
    assert weights["large"] < weights["small"] / 50
    # At the optimum exp(-s_i) = 1 / L_i, so weighted losses end up of the same order.
    weighted = {t: weights[t] * losses[t].item() for t in TASKS}
    assert 0.1 < weighted["large"] / weighted["small"] < 10


def test_gradnorm_moves_gradient_norm_ratio_toward_one():
    balancer = BALANCERS.build("gradnorm", tasks=TASKS, alpha=1.5, lr=0.025)
    before = ToyTwoTask().weighted_grad_norms(balancer.weights())
    toy = train(balancer, steps=300)
    after = toy.weighted_grad_norms(balancer.weights())
    log_ratio_before = abs(math.log(before["large"] / before["small"]))
    log_ratio_after = abs(math.log(after["large"] / after["small"]))
    assert log_ratio_before > math.log(30)
    assert log_ratio_after < 0.25 * log_ratio_before
    weights = balancer.weights()
    assert weights["large"] < weights["small"]
    assert sum(weights.values()) == pytest.approx(len(TASKS), rel=1e-5)


def test_gradnorm_does_not_move_during_validation_and_needs_shared_params():
    balancer = BALANCERS.build("gradnorm", tasks=TASKS)
    toy = ToyTwoTask()
    with torch.no_grad():
        balancer.combine(toy.losses())
    assert balancer.weights() == pytest.approx({"small": 1.0, "large": 1.0})
    with pytest.raises(ValueError, match="shared_params"):
        balancer.combine(toy.losses())


def test_dwa_favours_the_task_whose_loss_falls_slower():
    balancer = BALANCERS.build("dwa", tasks=TASKS, temperature=2.0)
    balancer.end_epoch({"small": 1.0, "large": 1000.0})
    assert balancer.weights() == pytest.approx({"small": 1.0, "large": 1.0})  # needs two epochs
    train(balancer, steps=60, lr=0.01, epoch_length=20)
    weights = balancer.weights()
    assert weights["large"] > weights["small"]
    assert sum(weights.values()) == pytest.approx(len(TASKS))
    # Hand-computed: ratios 0.5 (small) and 0.9 (large), T = 2.
    balancer.end_epoch({"small": 2.0, "large": 1000.0})
    balancer.end_epoch({"small": 1.0, "large": 900.0})
    e_small, e_large = math.exp(0.5 / 2), math.exp(0.9 / 2)
    assert balancer.weights() == pytest.approx(
        {"small": 2 * e_small / (e_small + e_large), "large": 2 * e_large / (e_small + e_large)}
    )


@pytest.mark.parametrize("name", ["fixed", "uncertainty", "gradnorm", "dwa"])
def test_state_round_trips_for_resume(name, tmp_path):
    balancer = BALANCERS.build(name, tasks=TASKS)
    train(balancer, steps=30, epoch_length=10)
    torch.save(balancer.state_dict(), tmp_path / "balancer.pt")
    resumed = BALANCERS.build(name, tasks=TASKS)
    resumed.load_state_dict(torch.load(tmp_path / "balancer.pt", weights_only=True))
    assert resumed.weights() == balancer.weights()


@pytest.mark.parametrize("name", ["fixed", "uncertainty", "gradnorm", "dwa"])
def test_combine_rejects_unknown_or_no_tasks(name):
    balancer = BALANCERS.build(name, tasks=TASKS)
    with pytest.raises(KeyError, match="unknown tasks \\['box'\\]"):
        balancer.combine({"box": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="no task loss"):
        balancer.combine({})


def test_a_task_absent_from_the_batch_is_left_alone():
    balancer = BALANCERS.build("uncertainty", tasks=TASKS)
    toy = ToyTwoTask()
    total = balancer.combine({"small": toy.losses()["small"]})
    total.backward()
    assert balancer.log_vars.grad[TASKS.index("large")] == 0
