"""Federated methods: each source site is a client that trains on its own cases; only
parameters and aggregate scalar metrics travel (:mod:`senolab.federated`).

At the level of one training step they are ERM (FedProx adds its proximal term), so each
client runs the engine's own training step on its own batches. What differs is what the
server does with the clients' parameters, and which parameters stay at the site:

- ``fedavg``: McMahan, Moore, Ramage, Hampson & Agüera y Arcas, "Communication-Efficient
  Learning of Deep Networks from Decentralized Data", AISTATS 2017. The server averages
  the clients' parameters weighted by their training cases.
- ``fedprox``: Li, Sahu, Zaheer, Sanjabi, Talwalkar & Smith, "Federated Optimization in
  Heterogeneous Networks", MLSys 2020. FedAvg plus ``mu/2 ||w - w_global||^2`` in each
  client's loss, which keeps a site's update near the round's global model.
- ``fedbn``: Li, Jiang, Zhang, Kamp & Dou, "FedBN: Federated Learning on Non-IID Features
  via Local Batch Normalization", ICLR 2021. BatchNorm parameters and statistics never
  leave a client; the rest is averaged. At an unseen site the model needs some BatchNorm:
  plain ``fedbn`` uses the clients' BatchNorm averaged once at the end (weighted by their
  training cases, the only time they travel), ``fedbn_adabn`` recomputes the statistics
  on the unlabelled target images (AdaBN; transductive).
- ``fedadam``: Reddi, Charles, Zaheer, Garrett, Rush, Konečný, Kumar & McMahan, "Adaptive
  Federated Optimization", ICLR 2021. The average update is a pseudo-gradient for an Adam
  step on the server (beta1 0.9, beta2 0.99, tau 1e-3 as in the paper; the server learning
  rate is tuned per task there, 1e-2 here).
- ``local``: each source site alone (one model per site, ``local_<site>``), the baseline
  a site has without any collaboration; trained by the same client code, with no
  aggregation.

Options shared by all: ``rounds`` (default: the study's ``train.epochs`` / ``local_epochs``,
so every client sees its data as often as pooled ERM does), ``local_epochs`` (E=1, FedAvg's
most communication-hungry and most stable setting), ``fraction_fit`` (C=1: with a handful
of hospitals every site takes part in every round, the cross-silo setting), and optional
``dp: {noise_multiplier, clipping_norm}`` (central differential privacy with client-side
fixed clipping, Flower's DifferentialPrivacyClientSideFixedClipping).
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch
from torch import nn

from senolab.adaptation.adabn import AdaBN, BATCH_NORMS
from senolab.adaptation.base import AdaptationMethod, register_method


class FederatedMethod(AdaptationMethod):
    """A federated method: ERM at every client step, aggregated by ``strategy``."""

    federated = True
    strategy: ClassVar[str] = "fedavg"  # senolab.federated.server.STRATEGIES
    keeps_norms_local: ClassVar[bool] = False  # FedBN: BatchNorm stays at each client

    def __init__(self, rounds: int | None = None, local_epochs: int = 1, fraction_fit: float = 1.0,
                 dp: Mapping[str, float] | None = None, site: str | None = None):
        super().__init__()
        if rounds is not None and rounds < 1:
            raise ValueError(f"{self.name}: rounds must be >= 1, got {rounds}")
        if local_epochs < 1:
            raise ValueError(f"{self.name}: local_epochs must be >= 1, got {local_epochs}")
        if not 0 < fraction_fit <= 1:
            raise ValueError(f"{self.name}: fraction_fit must be in (0, 1], got {fraction_fit}")
        unknown = sorted(set(dp or {}) - {"noise_multiplier", "clipping_norm"})
        if unknown:
            raise ValueError(f"{self.name}: dp takes noise_multiplier and clipping_norm, not {unknown}")
        if dp is not None and not {"noise_multiplier", "clipping_norm"} <= set(dp):
            raise ValueError(f"{self.name}: dp needs both noise_multiplier and clipping_norm, got {dict(dp)}")
        self.rounds, self.local_epochs, self.fraction_fit = rounds, local_epochs, fraction_fit
        self.dp = dict(dp) if dp is not None else None
        self.site = site  # local-only training: the one site that trains

    def server_options(self) -> dict[str, Any]:
        """The server optimiser's options (FedAdam's), passed to the strategy."""
        return {}

    def is_local_key(self, key: str, model: nn.Module) -> bool:
        """Whether the state entry ``key`` of ``model`` stays at the client (never sent)."""
        return self.keeps_norms_local and key.rsplit(".", 1)[0] in batch_norm_names(model)

    def begin_round(self, model: nn.Module) -> None:
        """Called by a client after it loaded the round's global model, before it trains."""


def batch_norm_names(model: nn.Module) -> set[str]:
    return {name for name, module in model.named_modules() if isinstance(module, BATCH_NORMS)}


@register_method("fedavg")
class FedAvg(FederatedMethod):
    """Federated averaging (McMahan et al., AISTATS 2017)."""


@register_method("fedprox")
class FedProx(FederatedMethod):
    """FedAvg with a proximal term ``mu/2 ||w - w_global||^2`` in each client's loss (Li et
    al., MLSys 2020; ``proximal_mu`` 0.01, in the middle of the paper's {0.001, 0.01, 0.1, 1})."""

    loss_names = ("proximal",)

    def __init__(self, proximal_mu: float = 0.01, **options):
        super().__init__(**options)
        if proximal_mu < 0:
            raise ValueError(f"fedprox: proximal_mu must be >= 0, got {proximal_mu}")
        self.proximal_mu = proximal_mu
        self._anchor: list[tuple[nn.Parameter, torch.Tensor]] = []  # not a buffer: never saved or sent

    def begin_round(self, model):
        self._anchor = [(p, p.detach().clone()) for p in model.parameters() if p.requires_grad]

    def _losses(self, model, source_batch, source_out, target_batch, target_out, step, total_steps):
        if not self._anchor:  # outside a federation (one training run): the start is the global model
            self.begin_round(model)
        squared = sum(((p - anchor) ** 2).sum() for p, anchor in self._anchor)
        return {"proximal": 0.5 * self.proximal_mu * squared}


@register_method("fedbn")
class FedBN(FederatedMethod):
    """FedAvg with BatchNorm kept at each client (Li et al., ICLR 2021). At an unseen site:
    the clients' BatchNorm averaged once at the end (see ``fedbn_adabn`` for the target's own)."""

    keeps_norms_local = True


@register_method("fedbn_adabn")
class FedBNAdaBN(AdaBN):
    """FedBN's trained model with the unseen target's BatchNorm statistics recomputed from
    its unlabelled images (AdaBN on FedBN; transductive). Trains as ``fedbn``."""

    trains_as = "fedbn"


@register_method("fedadam")
class FedAdam(FederatedMethod):
    """FedAvg's mean update as the pseudo-gradient of a server Adam step (Reddi et al., ICLR 2021)."""

    strategy = "fedadam"

    def __init__(self, server_lr: float = 1e-2, beta_1: float = 0.9, beta_2: float = 0.99, tau: float = 1e-3,
                 **options):
        super().__init__(**options)
        if server_lr <= 0 or tau <= 0:
            raise ValueError(f"fedadam: server_lr and tau must be > 0, got {server_lr}, {tau}")
        self.server_lr, self.beta_1, self.beta_2, self.tau = server_lr, beta_1, beta_2, tau

    def server_options(self):
        return {"eta": self.server_lr, "beta_1": self.beta_1, "beta_2": self.beta_2, "tau": self.tau}


@register_method("local")
class LocalOnly(FederatedMethod):
    """One source site alone: the same client training, no aggregation. A study entry
    becomes one run per source site (``local_<site>``), each tested at the unseen target."""

    @classmethod
    def study_entries(cls, sources):
        return [(site, {"site": site}) for site in sources]
