"""The run-folder convention every runner follows (train, study, fusion ablation, main job).

- **Config**: :func:`claim_folder` records the config a folder was started with. Started
  again on that folder, a runner compares: the same config resumes; a changed one is
  refused with the differing keys named, before any work, because the finished parts
  would otherwise be reported under settings they never had.
- **Done**: a unit of work (a training run, a study's (target, method, seed), an
  ablation's (fold, variant)) is finished when its folder holds ``done.json``
  (:func:`mark_done`, written last and atomically, with what the runner needs to report
  the unit again); :func:`done_record` reads it back, so a rerun skips the unit.
- **Resume**: a unit without ``done.json`` is redone; the trainer resumes it from its
  ``last.pt`` where one was left.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from senolab.errors import InputError
from senolab.tracking.records import flatten_params

SHOWN = 8  # differing keys named in the message; the rest are counted
DONE = "done.json"


class ConfigChanged(InputError):
    """A run folder holds results of another configuration than the one given now."""


def claim_folder(folder: str | Path, config: Mapping[str, Any], record: str = "config.yaml", *,
                 ignore: Iterable[str] = (), command: str = "") -> None:
    """Write ``config`` to ``folder/record``, or check it equals what is there already.

    ``ignore``: dotted keys that do not change results (e.g. a tracking URI). ``command``
    names what the user ran, for the message. Raises :class:`ConfigChanged`.
    """
    path = Path(folder) / record
    if path.is_file():
        changed = differences(_read(path), config, set(ignore))
        if changed:
            raise ConfigChanged(_message(path, changed, command))
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(_plain(config), sort_keys=False))


def differences(before: Mapping[str, Any], now: Mapping[str, Any], ignore: set[str] = frozenset()) -> list[str]:
    """``key: old -> new`` for every dotted key whose value differs (absent shown as '-')."""
    old, new = flatten_params(_plain(before)), flatten_params(_plain(now))
    keys = sorted((set(old) | set(new)) - set(ignore))
    return [f"{k}: {old.get(k, '-')} -> {new.get(k, '-')}" for k in keys if old.get(k) != new.get(k)]


def _plain(config: Mapping[str, Any]) -> dict:
    # YAML and JSON agree on plain types: tuples become lists, paths strings, as when read back
    return json.loads(json.dumps(dict(config), default=str))


def _read(path: Path) -> dict:
    try:
        loaded = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigChanged(f"{path}: the recorded config cannot be read ({err}); "
                            "choose another output folder") from None
    return loaded if isinstance(loaded, dict) else {}


def _message(path: Path, changed: list[str], command: str) -> str:
    shown = "; ".join(changed[:SHOWN]) + (f"; and {len(changed) - SHOWN} more" if len(changed) > SHOWN else "")
    again = f" ({command})" if command else ""
    return (f"{path.parent} holds results made with another configuration{again}: {shown}. "
            f"Resuming would report them under the new settings: give another --out, or delete that folder")


def mark_done(folder: str | Path, record: Mapping[str, Any]) -> Path:
    """Mark the unit in ``folder`` finished, with ``record`` (plain JSON data)."""
    path = Path(folder) / DONE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_plain(record), indent=1) + "\n")
    os.replace(tmp, path)  # atomic: a unit killed while marking stays unfinished
    return path


def done_record(folder: str | Path) -> dict | None:
    """The record of a finished unit, or None while it is not done."""
    path = Path(folder) / DONE
    return json.loads(path.read_text()) if path.is_file() else None
