"""The run directory: the complete, MLflow-independent record of one command's work.

Every command that trains or evaluates (``senolab train``, ``study``, ``fusion ablate``,
``run``) keeps one in its output folder::

    <run>/config.yaml                 the config (resumed only with the same one)
    <run>/runs.json                   manifest: command, run id, tags, tracking state, and
                                      the MLflow records: the command's own (parent) run
                                      and one child per unit of work
    <run>/...                         the runner's files (history.csv, predictions,
                                      summary.json, figures, model/): records name them
                                      by their path relative to <run>
    <run>/mlflow.db, <run>/mlartifacts/  the embedded MLflow store (default tracking)

A unit is ``<target>/<method>/seed<k>`` in a study, ``<method>`` elsewhere
(:func:`unit_name`). While a unit trains, :meth:`RunDir.live` is a trainer callback that
writes its epochs to MLflow as they happen; :meth:`RunDir.log_unit` then records the
unit's final metrics, files and model. The parent run is closed by :meth:`RunDir.finish`.

Tracking never stops the work: if MLflow fails (server down, disk full) the failure is
warned about and flagged in ``runs.json`` (``tracking.state = "failed"``), no further
uploads are tried, and ``senolab sync <run>`` uploads the run later without duplicating
what already arrived (history included: its points carry their own times and steps).
:meth:`RunDir.finish` syncs once more, so a run killed during an upload and started again
leaves MLflow complete.

The root is kept absolute (as given, symlinks not resolved), so a relative ``--out``
means the same folder whatever the working directory does later; paths handed to the
methods below may be absolute or relative to the working directory.
"""
from __future__ import annotations

import json
import os
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml
from tqdm.auto import tqdm

from senolab.tracking.mirror import MlflowMirror, PushCounts, normalise_tracking_uri, ui_command
from senolab.tracking.provenance import git_commit
from senolab.tracking.records import Artifact, RunRecord, flatten_params, slug, unit_display_name

MANIFEST = "runs.json"
CONFIG = "config.yaml"
FORMAT = 2
OK, FAILED, OFF = "ok", "failed", "off"


class TrackingUnavailable(UserWarning):
    """MLflow could not be written; the run directory is complete and can be synced later."""


def now_ms() -> int:
    return int(time.time() * 1000)


class RunDir:
    """A command's run directory. Make one with :meth:`create`, reopen it with :meth:`open`,
    or :meth:`open_or_create` as a resumable runner does."""

    def __init__(self, root: Path, manifest: dict[str, Any], config: dict[str, Any]):
        self.root = Path(root).absolute()
        self.manifest = manifest
        self.config = config
        self._mirrors: dict[str | None, MlflowMirror] = {}

    # ------------------------------------------------------------------ life cycle
    @classmethod
    def create(cls, root: str | Path, study: str, config: Mapping[str, Any], *, tracking_uri: str | None = None,
               track: bool = True, data_fingerprint: str = "unknown", tags: Mapping[str, str] | None = None,
               command: str = "study") -> "RunDir":
        """A new run directory for ``study`` (the MLflow experiment name).

        ``tracking_uri``: an MLflow server (``http://host:5000``) or store; None: the
        embedded SQLite store in the directory. ``track=False`` records locally only (a
        later ``senolab sync`` uploads). Every MLflow run is tagged with ``git_commit``,
        ``data_fingerprint`` (see :func:`senolab.tracking.provenance.table_fingerprint`),
        ``senolab.command`` and ``tags``.
        """
        root = Path(root).absolute()
        if (root / MANIFEST).exists():
            raise FileExistsError(f"{root} already holds a run ({MANIFEST}); open it with RunDir.open or choose another --out")
        root.mkdir(parents=True, exist_ok=True)
        run_id = f"{slug(study)}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        created = now_ms()
        parent = RunRecord(key=run_id, name=f"{command}: {study}", params=flatten_params(dict(config)),
                           tags={"senolab.role": "parent"}, start_ms=created)
        manifest = {
            "format": FORMAT,
            "study": study,
            "run_id": run_id,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(created / 1000)),
            "created_ms": created,
            "status": "running",
            "tags": {"study": study, "senolab.run_id": run_id, "senolab.command": command, "git_commit": git_commit(),
                     "data_fingerprint": data_fingerprint, **(tags or {})},
            "tracking": {"uri": normalise_tracking_uri(tracking_uri), "state": OK if track else OFF, "error": None},
            "parent": parent.to_dict(),
            "runs": [],
        }
        if not (root / CONFIG).exists():
            (root / CONFIG).write_text(yaml.safe_dump(json.loads(json.dumps(dict(config), default=str)),
                                                      sort_keys=False))
        run = cls(root, manifest, dict(config))
        run._save()
        return run

    @classmethod
    def open(cls, root: str | Path) -> "RunDir":
        """An existing run directory (finished or not)."""
        root = Path(root).absolute()
        path = root / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{root} is not a senolab run directory: no {MANIFEST}")
        try:
            manifest = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{path}: manifest format {manifest.get('format')!r}, expected {FORMAT} "
                             f"(written by another senolab version; run the command into a new folder)")
        config = yaml.safe_load((root / CONFIG).read_text()) if (root / CONFIG).exists() else {}
        return cls(root, manifest, config or {})

    @classmethod
    def open_or_create(cls, root: str | Path, study: str, config: Mapping[str, Any], *,
                       tracking_uri: str | None = None, track: bool = True, data_fingerprint: str = "unknown",
                       tags: Mapping[str, str] | None = None, command: str = "study") -> "RunDir":
        """The run directory at ``root``, reopened if a run was started there (its tracking
        sent to ``tracking_uri`` from now on when one is given), else created."""
        if (Path(root) / MANIFEST).exists():
            run = cls.open(root)
            if track and tracking_uri is not None:
                run.use_tracking_uri(tracking_uri)
            return run
        return cls.create(root, study, config, tracking_uri=tracking_uri, track=track,
                          data_fingerprint=data_fingerprint, tags=tags, command=command)

    def finish(self, metrics: Mapping[str, float] | None = None, files: Sequence[str | Path] = (),
               echo: bool = True) -> str:
        """Close the command's own run with its headline ``metrics`` and ``files`` (e.g. the
        study's results table), sync what MLflow lacks (a killed earlier run's half-done
        upload included), and say where to look (printed when ``echo``)."""
        parent = self.parent
        parent.end_ms = now_ms()
        parent.metrics.update(metrics or {})
        parent.artifacts = [self._artifact(path) for path in files]
        self.manifest["parent"] = parent.to_dict()
        self.manifest["status"] = "finished"
        self._save()
        if self.tracking["state"] == OK:
            try:
                self.sync(progress=False)
            except Exception:  # noqa: BLE001 - flagged in the manifest and said in the message
                warnings.warn(TrackingUnavailable(f"MLflow upload failed: {self.tracking['error']}"), stacklevel=2)
        message = self.tracking_message()
        if echo:
            print(message)
        return message

    def tracking_message(self) -> str:
        tracking = self.tracking
        if tracking["state"] == OK and tracking["uri"] is None:
            # the page's workflowType opens MLflow's model-training view (a fresh browser opens GenAI's)
            page = (f", then open http://127.0.0.1:5000/#/experiments/{tracking['experiment_id']}"
                    "/runs?workflowType=machine_learning" if tracking.get("experiment_id") else "")
            return f"MLflow (embedded store): {ui_command(self.root)}{page}"
        if tracking["state"] == OK:
            return f"MLflow: experiment {self.study!r} at {tracking['uri']}"
        why = "was off" if tracking["state"] == OFF else f"failed ({tracking['error']})"
        return (f"MLflow upload {why}; the run is complete in {self.root}. "
                f"Upload it with: senolab sync {self.root} [--tracking-uri URI]")

    # ------------------------------------------------------------------ properties
    @property
    def run_id(self) -> str:
        return self.manifest["run_id"]

    @property
    def study(self) -> str:
        return self.manifest["study"]

    @property
    def tracking(self) -> dict[str, Any]:
        return self.manifest["tracking"]

    @property
    def parent(self) -> RunRecord:
        return RunRecord.from_dict(self.manifest["parent"])

    def runs(self) -> list[RunRecord]:
        """The recorded units' runs, in the order they finished."""
        return [RunRecord.from_dict(r) for r in self.manifest["runs"]]

    def unit_key(self, unit: str) -> str:
        return f"{self.run_id}/{unit_path(unit).as_posix()}"

    def is_logged(self, unit: str) -> bool:
        """Whether ``unit`` is recorded already: a re-run logs nothing twice."""
        key = self.unit_key(unit)
        return any(record.key == key for record in self.runs())

    def use_tracking_uri(self, tracking_uri: str | None) -> None:
        """Send this run's records to ``tracking_uri`` from now on (a user's ``--tracking-uri``
        given when an existing run folder is opened again); :meth:`finish` uploads what the
        new store lacks."""
        tracking_uri = normalise_tracking_uri(tracking_uri)
        if tracking_uri != self.tracking["uri"] or self.tracking["state"] == FAILED:
            self.manifest["tracking"] = {"uri": tracking_uri, "state": OK, "error": None}
            self._save()

    # ------------------------------------------------------------------ units
    def live(self, unit: str, *, tags: Mapping[str, str] | None = None) -> "LiveRun":
        """A trainer callback that writes ``unit``'s epochs to MLflow while it trains."""
        return LiveRun(self, self._unit_record(unit, tags or {}))

    def log_unit(self, unit: str, *, metrics: Mapping[str, float], tags: Mapping[str, str] | None = None,
                 params: Mapping[str, Any] | None = None, files: Sequence[str | Path | tuple[str | Path, str]] = (),
                 history: str | Path | None = None, start_ms: int | None = None,
                 folder: str | Path | None = None, datasets: Sequence[Mapping[str, Any]] = ()) -> RunRecord:
        """Record a finished unit and push it: final ``metrics``, ``tags``, ``params`` (the
        unit's own options, next to the command's config), ``files`` (paths, or (path,
        MLflow folder) pairs; a folder such as an MLflow ``model/`` goes up whole) and its
        ``history.csv``, all inside the run directory. Files under the unit's ``folder``
        keep their place below it in MLflow (``figures/roc.png``). ``datasets``: the parts of
        the data it used (:func:`senolab.tracking.provenance.part_datasets`), for MLflow's
        Dataset column."""
        record = self._unit_record(unit, tags or {})
        record.params = {**flatten_params(self.config), **flatten_params(dict(params or {}))}
        record.metrics = dict(metrics)
        record.artifacts = [self._artifact(*f) if isinstance(f, tuple) else self._artifact(f, _place(f, folder))
                            for f in files]
        record.history = self._relative(history) if history is not None else None
        record.datasets = [dict(d) for d in datasets]
        record.start_ms, record.end_ms = start_ms or now_ms(), now_ms()
        if self.is_logged(unit):
            raise ValueError(f"{self.root}: {unit} is already recorded; each unit is logged once per run")
        self.manifest["runs"].append(record.to_dict())
        self._save()
        if self.tracking["state"] == OK:
            self._guarded(lambda mirror: (self._push_parent(mirror), self._push(mirror, record)))
        return record

    def _unit_record(self, unit: str, tags: Mapping[str, str]) -> RunRecord:
        return RunRecord(key=self.unit_key(unit), name=unit_display_name(unit), parent=self.run_id,
                         tags={"senolab.unit": unit, **tags})

    # ------------------------------------------------------------------ MLflow
    def sync(self, tracking_uri: str | None = None, progress: bool = True) -> PushCounts:
        """Upload the parent and every recorded unit, creating only what MLflow lacks.

        ``tracking_uri``: where to (default: the run's own tracking URI, or its embedded
        store). Raises what MLflow raised if the upload fails; a failure of the folder's own
        store is flagged in the manifest, one elsewhere changes nothing here.
        """
        target = normalise_tracking_uri(tracking_uri) if tracking_uri is not None else self.tracking["uri"]
        counts = PushCounts()
        try:
            mirror = self._mirror(target)
            counts.count(self._push_parent(mirror))
            for record in tqdm(self.runs(), desc="sync to MLflow", unit="run", disable=not progress):
                counts.count(self._push(mirror, record))
        except Exception as err:
            if target == self.tracking["uri"]:
                self._flag_failure(err, target)
            raise
        self.manifest["tracking"] = {"uri": target, "state": OK, "error": None, "experiment_id": mirror.experiment_id,
                                     "synced": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self._save()
        return counts

    def _push_parent(self, mirror: MlflowMirror) -> str:
        """The parent complete once the command finished; open (RUNNING) before."""
        parent = self.parent
        if self.manifest["status"] == "finished":
            return self._push(mirror, parent)
        mirror.start(parent, self.manifest["tags"])
        return "incomplete"

    def _push(self, mirror: MlflowMirror, record: RunRecord) -> str:
        return mirror.push(record, self.root, self.manifest["tags"], self.manifest["created_ms"])

    def _guarded(self, work) -> Any:
        """Run ``work(mirror)`` on this run's store; a failure flags tracking and warns, never raises."""
        try:
            return work(self._mirror(self.tracking["uri"]))
        except Exception as err:  # noqa: BLE001 - any backend failure (HTTP, SQL, disk) must not stop the work
            self._flag_failure(err, self.tracking["uri"])
            warnings.warn(TrackingUnavailable(
                f"MLflow upload failed: {self.tracking['error']}. The work goes on and is recorded in "
                f"{self.root}; upload it later with: senolab sync {self.root}"), stacklevel=3)
            return None

    def _mirror(self, uri: str | None) -> MlflowMirror:
        if uri not in self._mirrors:
            self._mirrors[uri] = MlflowMirror.for_run_dir(self.root, self.study, uri)
        return self._mirrors[uri]

    def _flag_failure(self, err: Exception, uri: str | None) -> None:
        text = f"{type(err).__name__}: {err}"
        self.manifest["tracking"] = {"uri": uri, "state": FAILED, "error": text[:500]}
        self._save()

    # ------------------------------------------------------------------ files
    def _artifact(self, path: str | Path, folder: str | None = None) -> Artifact:
        """A file or folder of the run directory; by default it goes to the top of the
        MLflow run (a folder under its own name)."""
        relative = self._relative(path)
        if not (self.root / relative).exists():
            raise FileNotFoundError(f"artifact {relative} is not in {self.root}")
        return Artifact(relative, folder or "")

    def _relative(self, path: str | Path) -> str:
        # Relative paths are the working directory's, like every other path a user gives;
        # both sides resolved, so a root reached through a symlink or '..' still matches.
        try:
            return Path(path).resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            raise ValueError(f"{path} is outside the run directory {self.root}; a run directory must be self-contained") from None

    def _save(self) -> None:
        # Atomic: a run killed while writing keeps the previous manifest.
        path = self.root / MANIFEST
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.manifest, indent=1) + "\n")
        os.replace(tmp, path)


class LiveRun:
    """Trainer callback: opens the unit's MLflow run when training starts (found again when
    a killed run resumes) and logs each epoch's row as it is written to history.csv."""

    def __init__(self, run_dir: RunDir, record: RunRecord):
        self.run_dir, self.record = run_dir, record
        self.start_ms: int | None = None
        self._run_id: str | None = None

    def on_fit_start(self, trainer) -> None:
        self.start_ms = now_ms()
        self.record.start_ms = self.start_ms
        if self.run_dir.tracking["state"] == OK:
            self._run_id = self.run_dir._guarded(
                lambda mirror: (self.run_dir._push_parent(mirror), mirror.start(self.record, self.run_dir.manifest["tags"]))[1])

    def on_epoch_end(self, trainer, row: Mapping[str, Any]) -> None:
        if self._run_id is not None and self.run_dir.tracking["state"] == OK:
            self.run_dir._guarded(lambda mirror: mirror.log_epoch(self._run_id, row))


def _place(path: str | Path, folder: str | Path | None) -> str | None:
    """The MLflow folder of ``path``: its parent's place below ``folder`` (None: the top)."""
    if folder is None:
        return None
    try:
        inner = Path(path).resolve().parent.relative_to(Path(folder).resolve())
    except ValueError:
        return None
    return None if inner == Path(".") else inner.as_posix()


def unit_name(method: str, target: str | None = None, seed: int | None = None) -> str:
    """The name of what is logged once: ``method``, or ``<target>/<method>/seed<k>``."""
    parts = [target] if target is not None else []
    parts.append(method)
    if seed is not None:
        parts.append(f"seed{seed}")
    return "/".join(parts)


def unit_path(unit: str) -> Path:
    """A unit name as a relative folder, each part made safe for file names."""
    return Path(*(slug(part) for part in unit.split("/")))
