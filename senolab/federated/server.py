"""The server's side of a federation: rounds, aggregation, tracking, resume, selection.

The rounds are Flower's strategy (FedAvg, FedAdam, optionally wrapped for differential
privacy) driven one round at a time, so that after every round the server can

- record it: ``history.csv`` in the federation's folder (one row per round, as the trainer
  writes one per epoch: ``epoch`` = round - 1, the clients' mean training ``loss``, the
  global model's validation scores as the weighted mean of the clients' own, per-client
  ``<site>.loss`` / ``<site>.val_*``, ``bytes_sent`` / ``bytes_received`` of model arrays,
  ``seconds``, ``time_ms``), and hand the row to the trainer callbacks (MLflow, live);
- save ``last.pt`` (the global arrays, the server optimiser's state, the round, the
  history and the best round so far): a killed federation resumes after its last round;
- keep ``best.pt``, the global arrays of the round with the best validation score (source
  validation only: each client's validation cases, aggregated; no target label).

FedBN's BatchNorm stays at the clients; at the end, the server asks each client once for
its BatchNorm entries of the best round and averages them (weighted by training cases),
the model an unseen site receives (:data:`~senolab.federated.wall.LOCAL_NORMS`).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from senolab.checkpoint import load_checkpoint, save_checkpoint
from senolab.federated.wall import ARRAYS, CONFIG, LOCAL_NORMS, METRICS, check_reply
from senolab.registry import Registry

FEDERATION_FILE = "federation.json"
INITIAL_FILE = "initial.pt"
RESULT_FILE = "federated.pt"  # best round's global arrays (+ FedBN's averaged norms)


class FederationError(RuntimeError):
    """A round could not be completed (a client failed or sent what the wall refuses)."""


@dataclass
class Federation:
    """What the server needs, all of it JSON: the ``plan`` sent to the clients (model, loss
    and training sections, method and options, rounds, local epochs), the ``sites`` (index
    = a client's ``partition-id``), the method's server options, and its ``folder``."""

    plan: dict
    sites: list[str]
    folder: str
    strategy: str = "fedavg"
    server_options: dict = field(default_factory=dict)
    fraction_fit: float = 1.0
    dp: dict | None = None
    keeps_norms_local: bool = False
    time_budget_s: float | None = None
    round_timeout_s: float = 3600.0

    @property
    def rounds(self) -> int:
        return int(self.plan["rounds"])

    def save(self) -> Path:
        path = Path(self.folder) / FEDERATION_FILE
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Federation":
        return cls(**json.loads(Path(path).read_text()))


# Strategies by name (FederatedMethod.strategy): (federation, number of sites) -> a Flower strategy.
STRATEGIES: Registry[Callable] = Registry("federated strategy")


def _sampling(federation: Federation, n_sites: int) -> dict:
    per_round = max(1, math.ceil(federation.fraction_fit * n_sites))
    return {"fraction_train": federation.fraction_fit, "fraction_evaluate": 1.0, "min_train_nodes": per_round,
            "min_evaluate_nodes": n_sites, "min_available_nodes": n_sites}


@STRATEGIES.register("fedavg")
def _fedavg(federation: Federation, n_sites: int):
    from flwr.serverapp.strategy import FedAvg

    return FedAvg(**_sampling(federation, n_sites))


@STRATEGIES.register("fedadam")
def _fedadam(federation: Federation, n_sites: int):
    from flwr.serverapp.strategy import FedAdam

    return FedAdam(**_sampling(federation, n_sites), **federation.server_options)


def build_strategy(federation: Federation):
    """The method's strategy, wrapped for central DP with client-side clipping when ``dp`` is set."""
    strategy = STRATEGIES.build(federation.strategy, federation, len(federation.sites))
    if federation.dp is None:
        return strategy
    from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping

    return DifferentialPrivacyClientSideFixedClipping(
        strategy, noise_multiplier=float(federation.dp["noise_multiplier"]),
        clipping_norm=float(federation.dp["clipping_norm"]),
        num_sampled_clients=_sampling(federation, len(federation.sites))["min_train_nodes"])


def _optimiser(strategy):
    """The strategy that holds server-optimiser state (FedAdam's moments), if any."""
    inner = getattr(strategy, "strategy", strategy)  # a DP wrapper keeps the real one inside
    return inner if hasattr(inner, "m_t") else None


@dataclass
class ServerState:
    round: int = 0
    arrays: dict = field(default_factory=dict)  # name -> np.ndarray
    history: list = field(default_factory=list)
    best_round: int = 0
    best_score: float = float("-inf")
    optimiser: dict = field(default_factory=dict)


def serve(grid, federation: Federation, callbacks: Sequence[object] = (), progress: bool = False) -> ServerState:
    """Run the federation's remaining rounds on ``grid`` (Flower's), from its ``last.pt``."""
    from flwr.app import ArrayRecord, ConfigRecord

    folder = Path(federation.folder)
    initial = torch.load(folder / INITIAL_FILE, weights_only=True)
    shapes = {k: tuple(v.shape) for k, v in {**initial["shared"], **initial["local"]}.items()}
    state = _restore(folder) or ServerState(arrays={k: v.numpy() for k, v in initial["shared"].items()})
    strategy = build_strategy(federation)
    if _optimiser(strategy) is not None and state.optimiser:
        for key, value in state.optimiser.items():
            setattr(_optimiser(strategy), key, value)
    _wait_for_sites(grid, len(federation.sites), federation.round_timeout_s)  # not counted as training time
    _notify(callbacks, "on_fit_start", federation)
    spent = state.history[-1]["seconds"] if state.history else 0.0
    for round_ in range(state.round + 1, federation.rounds + 1):
        if federation.time_budget_s is not None and spent >= federation.time_budget_s:
            break
        began = time.perf_counter()
        arrays = ArrayRecord({k: _array(v) for k, v in state.arrays.items()})
        config = ConfigRecord({"plan": json.dumps(federation.plan)})
        sent = list(strategy.configure_train(round_, arrays, config, grid))
        replies = _answers(grid, sent, federation, "train", shapes, set(state.arrays))
        aggregated, _ = strategy.aggregate_train(round_, replies)
        if aggregated is None:
            raise FederationError(f"round {round_}: the strategy aggregated nothing")
        state.arrays = _as_model(_with_valid_variances({k: v.numpy() for k, v in aggregated.items()}), initial["shared"])
        arrays = ArrayRecord({k: _array(v) for k, v in state.arrays.items()})
        asked = list(strategy.configure_evaluate(round_, arrays, ConfigRecord({"plan": json.dumps(federation.plan)}),
                                                 grid))
        evaluations = _answers(grid, asked, federation, "evaluate", shapes, set())
        spent += time.perf_counter() - began
        row = _round_row(round_, federation.sites, replies, evaluations, sent + asked, spent)
        state.history.append(row)
        state.round = round_
        score = row["val_score"] if np.isfinite(row["val_score"]) else float("-inf")  # no class mix: never better
        if score > state.best_score or state.best_round == 0:
            state.best_round, state.best_score = round_, score
            save_checkpoint(folder / "best.pt", arrays=_tensors(state.arrays), round=round_, score=row["val_score"])
        optimiser = _optimiser(strategy)
        state.optimiser = ({key: getattr(optimiser, key) for key in ("m_t", "v_t")} if optimiser is not None else {})
        _save_last(folder, state)
        pd.DataFrame(state.history).to_csv(folder / "history.csv", index=False)
        _notify(callbacks, "on_epoch_end", federation, row)
        if progress:
            print(f"round {round_}/{federation.rounds}: loss={row['loss']:.4g} val_score={row['val_score']:.4g} "
                  f"sent={row['bytes_sent'] / 1e6:.2f} MB received={row['bytes_received'] / 1e6:.2f} MB", flush=True)
    if state.round == 0:
        raise FederationError("no round was completed (time_budget_s spent before the first?)")
    best = load_checkpoint(folder / "best.pt", "cpu")
    result = {"arrays": best["arrays"], "round": best["round"], "local": None}
    if federation.keeps_norms_local:
        result["local"] = _tensors(_averaged_local_norms(grid, federation, best["round"], shapes, set(initial["local"])))
    save_checkpoint(folder / RESULT_FILE, **result)
    return state


def _wait_for_sites(grid, n_sites: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while len(list(grid.get_node_ids())) < n_sites:
        if time.monotonic() > deadline:
            raise FederationError(f"{len(list(grid.get_node_ids()))} of {n_sites} sites connected within {timeout_s:.0f} s")
        time.sleep(0.2)


def _array(value: np.ndarray):
    from flwr.app import Array

    return Array(np.ascontiguousarray(value))


def _answers(grid, messages: list, federation: Federation, action: str, shapes: dict, expected: set) -> list:
    """The replies to ``messages``, each one checked by the data wall; a client's error,
    or a missing reply, stops the federation with its reason."""
    replies = list(grid.send_and_receive(messages, timeout=federation.round_timeout_s))
    if len(replies) != len(messages):
        raise FederationError(f"{action}: {len(replies)} of {len(messages)} clients answered within "
                              f"{federation.round_timeout_s:.0f} s")
    for reply in replies:
        if reply.has_error():
            raise FederationError(f"{action}: a client failed: {reply.error.reason}")
        check_reply(action, reply.content, shapes, expected)
    return replies


def _averaged_local_norms(grid, federation: Federation, round_: int, shapes: dict, local: set) -> dict:
    """FedBN at an unseen site: each client's kept BatchNorm entries of ``round_``, averaged
    weighted by its training cases (the one time they travel)."""
    from flwr.app import ConfigRecord, Message, RecordDict

    content = {"plan": json.dumps(federation.plan), "server-round": round_}
    messages = [Message(RecordDict({CONFIG: ConfigRecord(content)}), dst_node_id=node, message_type=LOCAL_NORMS)
                for node in grid.get_node_ids()]
    replies = _answers(grid, messages, federation, LOCAL_NORMS, shapes, local)
    weights = np.array([r.content[METRICS]["num-examples"] for r in replies], dtype=float)
    weights /= weights.sum()
    averaged = {k: sum(w * r.content[ARRAYS][k].numpy() for w, r in zip(weights, replies)) for k in local}
    return _with_valid_variances(averaged)  # float64; the model's load casts them


def _as_model(arrays: dict, model: dict) -> dict:
    """The arrays in the model's dtypes: FedAdam's step and DP's noise compute in float64,
    which would double every later message."""
    return {k: v.astype(model[k].numpy().dtype, copy=False) for k, v in arrays.items()}


def _with_valid_variances(arrays: dict) -> dict:
    """Running variances kept positive: a server optimiser's step or DP noise can push a
    small one below zero, which would make BatchNorm produce NaN."""
    return {k: np.maximum(v, 1e-5).astype(v.dtype) if k.endswith("running_var") else v for k, v in arrays.items()}


def _round_row(round_: int, sites: list[str], trained: list, evaluated: list, sent: list, seconds: float) -> dict:
    """The round's history row: mean losses, the global model's validation scores (the
    clients' own, weighted by their validation cases), per-client values, bytes."""
    row: dict = {"epoch": round_ - 1}
    row.update(_weighted(trained, lambda key: key.startswith("loss")))
    row.update(_weighted(evaluated, lambda key: key.startswith("val_")))
    for reply in trained + evaluated:
        metrics = reply.content[METRICS]
        site = sites[int(metrics["partition-id"])]
        row.update({f"{site}.{k}": float(v) for k, v in metrics.items() if k.startswith(("loss", "val_"))})
    row["clients"] = len(trained)
    row["bytes_sent"] = sum(m.content[ARRAYS].count_bytes() for m in sent if ARRAYS in m.content.array_records)
    row["bytes_received"] = sum(r.content[ARRAYS].count_bytes() for r in trained if ARRAYS in r.content.array_records)
    row["seconds"] = seconds
    row["time_ms"] = int(time.time() * 1000)
    return row


def _weighted(replies: list, wanted: Callable[[str], bool]) -> dict[str, float]:
    """Per metric, the mean over clients weighted by their cases, ignoring NaN (a client
    whose validation cases are all one class has no AUC)."""
    out = {}
    keys = sorted({k for r in replies for k in r.content[METRICS].keys() if wanted(k)})
    for key in keys:
        pairs = [(float(r.content[METRICS][key]), float(r.content[METRICS]["num-examples"])) for r in replies]
        pairs = [(v, w) for v, w in pairs if np.isfinite(v) and w > 0]
        out[key] = sum(v * w for v, w in pairs) / sum(w for _, w in pairs) if pairs else float("nan")
    return out


def _tensors(arrays: dict | None) -> dict | None:
    return None if arrays is None else {k: torch.from_numpy(np.asarray(v).copy()) for k, v in arrays.items()}


def _numpy(tensors: dict | None) -> dict | None:
    return None if tensors is None else {k: v.numpy() for k, v in tensors.items()}


def _save_last(folder: Path, state: ServerState) -> None:
    """``last.pt`` as tensors (checkpoints load with weights_only: no pickled numpy)."""
    saved = asdict(state)
    saved["arrays"] = _tensors(state.arrays)
    saved["optimiser"] = {key: _tensors(value) for key, value in state.optimiser.items()}
    save_checkpoint(folder / "last.pt", **saved)


def _restore(folder: Path) -> ServerState | None:
    last = folder / "last.pt"
    if not last.exists():
        return None
    saved = load_checkpoint(last, "cpu")
    state = ServerState(**{k: saved[k] for k in ServerState.__dataclass_fields__})
    state.arrays = _numpy(state.arrays)
    state.optimiser = {key: _numpy(value) for key, value in state.optimiser.items()}
    return state


def _notify(callbacks: Sequence[object], event: str, *args) -> None:
    for callback in callbacks:
        handler = getattr(callback, event, None)
        if handler is not None:
            handler(*args)
