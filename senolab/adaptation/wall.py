"""The label wall: target batches reach adaptation methods without anything outcome-like.

Every path by which a method sees target data (the training-step hook, the ``prepare``
and ``adapt_for_inference`` loaders) goes through :func:`strip_labels`, which returns a
:class:`TargetBatch`: a dict that holds no label key and raises :class:`TargetLabelAccess`
when one is asked for. A method that tries to read a target label therefore fails loudly
instead of silently receiving a default from ``batch.get("label", ...)``.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping

# Keys of the batch contract that carry the answer (docs/contracts.md#batch), and prefixes that catch
# variants such as "labels", "mask_lesion" or any "has_*" availability flag.
LABEL_KEYS = frozenset({"label", "mask", "bbox", "has_label", "has_mask", "has_bbox"})
LABEL_PREFIXES = ("label", "mask", "bbox", "has_")


class TargetLabelAccess(KeyError):
    """Raised when code reads a label key from a target batch."""


def is_label_key(key: Any) -> bool:
    """True for the keys that describe the outcome (labels, masks, boxes, their flags)."""
    return isinstance(key, str) and (key in LABEL_KEYS or key.startswith(LABEL_PREFIXES))


class TargetBatch(dict):
    """An unlabelled target batch: building it with a label key, or reading one, raises.

    Use :func:`strip_labels` to make one from a full batch.
    """

    def __init__(self, items: Mapping[str, Any] = (), /, **more: Any):
        super().__init__(items, **more)
        leaked = sorted(key for key in self if is_label_key(key))
        if leaked:
            raise TargetLabelAccess(f"a TargetBatch cannot hold label keys {leaked}; use strip_labels(batch)")

    def __getitem__(self, key):
        _refuse_label(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        _refuse_label(key)
        return super().get(key, default)

    def pop(self, key, *default):
        _refuse_label(key)
        return super().pop(key, *default)

    def __setitem__(self, key, value):
        if is_label_key(key):
            raise TargetLabelAccess(f"cannot put label key {key!r} into a target batch")
        super().__setitem__(key, value)

    def setdefault(self, key, default=None):
        if key not in self:
            self[key] = default
        return self[key]

    def update(self, *args, **kwargs):
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def copy(self) -> "TargetBatch":
        return TargetBatch(self)

    def replace(self, **items: Any) -> "TargetBatch":
        """A copy with some entries replaced (e.g. ``image=`` after harmonisation)."""
        out = self.copy()
        out.update(items)
        return out


def _refuse_label(key: Any) -> None:
    if is_label_key(key):
        raise TargetLabelAccess(
            f"target batch key {key!r} is a label: target labels never reach training or model selection"
        )


def strip_labels(batch: Mapping[str, Any]) -> TargetBatch:
    """The batch without its label keys, as a :class:`TargetBatch` (idempotent)."""
    if isinstance(batch, TargetBatch):
        return batch
    if not isinstance(batch, Mapping):
        raise TypeError(f"a target batch must be a dict of the batch contract, got {type(batch).__name__}")
    return TargetBatch({key: value for key, value in batch.items() if not is_label_key(key)})


class Unlabelled:
    """An iterable over a loader's batches with their labels stripped (re-iterable)."""

    def __init__(self, loader: Iterable[Mapping[str, Any]]):
        self.loader = loader.loader if isinstance(loader, Unlabelled) else loader

    def __iter__(self) -> Iterator[TargetBatch]:
        return (strip_labels(batch) for batch in self.loader)

    def __len__(self) -> int:
        return len(self.loader)
