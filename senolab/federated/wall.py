"""The data wall of a federation: a site's cases never leave it.

Like the label wall (:mod:`senolab.adaptation.wall`), it is enforced where the data could
pass, not trusted to the methods. Every message a client receives, and every reply it
sends, goes through :func:`data_wall_mod` (the outermost Flower mod of the ClientApp,
so it sees the reply after every other mod); the server checks each reply again with
:func:`check_reply` before aggregating it.

- A server message may only be one of the federation's actions (``train``, ``evaluate``,
  ``query.local_norms``), carry at most one array record (the global model's arrays: names
  and shapes of the model) and one config record whose keys are on :data:`CONFIG_KEYS`.
  Anything else (another action, a config key asking for images, a metric record) is
  refused with :class:`DataWallViolation`.
- A reply may only carry the model's arrays the action allows (``train``: the shared
  arrays, the ones received; ``evaluate``: none; ``query.local_norms``: the site's
  BatchNorm entries, FedBN's one release at the end) with the model's shapes, and one
  metric record of scalar numbers whose keys are on :data:`METRIC_KEYS` (or start with
  one of :data:`METRIC_PREFIXES`). No config record, no lists, no strings, no bytes.
"""
from __future__ import annotations

from typing import Mapping

from senolab.errors import InputError

TRAIN, EVALUATE, LOCAL_NORMS = "train", "evaluate", "query.local_norms"
ACTIONS = (TRAIN, EVALUATE, LOCAL_NORMS)
ARRAYS, CONFIG, METRICS = "arrays", "config", "metrics"  # the record names (Flower's strategy defaults)
# what a server may send besides arrays: the round, the training plan (model, loss, train
# sections and method: no data) and DP's clipping norm (flwr's KEY_CLIPPING_NORM)
CONFIG_KEYS = frozenset({"server-round", "plan", "clipping_norm"})
# what a client may report: its case counts, its training losses and its validation scores
METRIC_KEYS = frozenset({"num-examples", "partition-id", "loss", "val_auc", "val_dice", "val_score"})
METRIC_PREFIXES = ("loss_",)


class DataWallViolation(InputError):
    """A message would move something other than parameters and aggregate metrics."""


def check_instruction(message_type: str, content, shapes: Mapping[str, tuple[int, ...]] | None) -> None:
    """Refuse a server message that asks for anything beyond the federation's actions,
    the model's arrays and the allowed config keys. ``shapes``: the model's arrays (None:
    check all but the arrays)."""
    if message_type not in ACTIONS:
        raise DataWallViolation(f"data wall: the server asked for {message_type!r}; a client only answers "
                                f"{list(ACTIONS)}")
    if content.metric_records:
        raise DataWallViolation("data wall: a server message carries no metric record")
    _only_records(content.config_records, {CONFIG}, "config", "server message")
    for record in content.config_records.values():
        extra = sorted(set(record.keys()) - CONFIG_KEYS)
        if extra:
            raise DataWallViolation(f"data wall: the server asked for config keys {extra}; allowed: "
                                    f"{sorted(CONFIG_KEYS)}")
    _only_records(content.array_records, {ARRAYS}, "array", "server message")
    for record in content.array_records.values() if shapes is not None else ():
        _arrays_of_model(record, shapes, set(shapes), "server message")


def check_reply(message_type: str, content, shapes: Mapping[str, tuple[int, ...]], expected: set[str]) -> None:
    """Refuse a reply that carries anything beyond ``expected`` model arrays (with the
    model's ``shapes``) and scalar metrics on the allowlist."""
    if content.config_records:
        raise DataWallViolation(f"data wall: a {message_type} reply carries no config record, found "
                                f"{sorted(content.config_records)}")
    _only_records(content.array_records, {ARRAYS} if expected else set(), "array", f"{message_type} reply")
    for record in content.array_records.values():
        _arrays_of_model(record, shapes, expected, f"{message_type} reply")
        missing = sorted(expected - set(record.keys()))
        if missing:
            raise DataWallViolation(f"data wall: the {message_type} reply lacks model arrays {missing[:5]}")
    _only_records(content.metric_records, {METRICS}, "metric", f"{message_type} reply")
    for record in content.metric_records.values():
        for key, value in record.items():
            if key not in METRIC_KEYS and not key.startswith(METRIC_PREFIXES):
                raise DataWallViolation(f"data wall: metric {key!r} is not an aggregate metric a client may "
                                        f"report; allowed: {sorted(METRIC_KEYS)} and {list(METRIC_PREFIXES)}*")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise DataWallViolation(f"data wall: metric {key!r} must be one number, got {type(value).__name__}")


def _only_records(records, allowed: set[str], kind: str, where: str) -> None:
    extra = sorted(set(records) - allowed)
    if extra:
        raise DataWallViolation(f"data wall: the {where} carries {kind} records {extra}; allowed: {sorted(allowed)}")


def _arrays_of_model(record, shapes: Mapping[str, tuple[int, ...]], allowed: set[str], where: str) -> None:
    """Every array of ``record`` is one of the model's ``allowed`` entries, with its shape."""
    for key, array in record.items():
        if key not in allowed:
            raise DataWallViolation(f"data wall: the {where} carries array {key!r}, which is not one of the model's "
                                    f"parameters it may carry")
        if tuple(array.shape) != tuple(shapes[key]):
            raise DataWallViolation(f"data wall: array {key!r} of the {where} has shape {tuple(array.shape)}; the "
                                    f"model's is {tuple(shapes[key])}")
