"""The run directory: the complete, MLflow-independent record of a study.

Layout::

    <run>/config.yaml                    the study config
    <run>/runs.json                      manifest: study, run id, tags, tracking state, and
                                         per method the parent/child run records for MLflow
    <run>/summary.json, results.csv      the evaluation of all methods (written by the study)
    <run>/methods/<unit>/summary.json    that unit's aggregates (DESIGN.md shape); a unit
                                         is a method, or <target>/<method>/seed<k> in a
                                         study with targets and seeds (:func:`unit_path`)
    <run>/methods/<unit>/predictions.parquet
    <run>/methods/<unit>/sites/<site>/predictions.parquet
    <run>/methods/<unit>/figures/...     ROC, reliability, attribution figures and tables
                                         (any sub-folder: MLflow gets the same tree)
    <run>/methods/<unit>/model/model.pt  state_dict + config (torch.load weights_only)
    <run>/mlflow.db, <run>/mlartifacts/  the embedded MLflow store (default tracking)

The root is kept absolute (as given, symlinks not resolved), so a relative ``--out``
means the same folder whatever the working directory does later; paths handed to the
methods below may be absolute or relative to the working directory.

Every method recorded is pushed to MLflow straight away (the embedded store unless a
tracking URI was given). If that fails (server down, disk full) the study goes on: the
failure is warned about and flagged in ``runs.json`` (``tracking.state = "failed"``), no
further uploads are tried, and ``senolab sync <run>`` uploads the run later without
duplicating what already arrived. :meth:`RunDir.finish` syncs once more, so a run killed
during an upload and started again leaves MLflow complete (runs missing or left RUNNING
are written again; complete ones are skipped).
"""
from __future__ import annotations

import json
import os
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
import yaml
from torch import nn
from tqdm.auto import tqdm

from senolab.checkpoint import save_checkpoint
from senolab.evaluation.report import json_safe
from senolab.tracking.mirror import MlflowMirror, PushCounts, normalise_tracking_uri, ui_command
from senolab.tracking.provenance import git_commit
from senolab.tracking.records import Artifact, MethodRecord, flatten_params, method_record, site_tags_from_predictions, slug

MANIFEST = "runs.json"
CONFIG = "config.yaml"
FORMAT = 1
OK, FAILED, OFF = "ok", "failed", "off"


class TrackingUnavailable(UserWarning):
    """MLflow could not be written; the run directory is complete and can be synced later."""


class RunDir:
    """A study's run directory. Make one with :meth:`create`, reopen it with :meth:`open`."""

    def __init__(self, root: Path, manifest: dict[str, Any], config: dict[str, Any]):
        self.root = Path(root).absolute()
        self.manifest = manifest
        self.config = config

    # ------------------------------------------------------------------ life cycle
    @classmethod
    def create(cls, root: str | Path, study: str, config: Mapping[str, Any], *, tracking_uri: str | None = None,
               track: bool = True, data_fingerprint: str = "unknown",
               tags: Mapping[str, str] | None = None) -> "RunDir":
        """A new run directory for ``study`` (the MLflow experiment name).

        ``tracking_uri``: an MLflow server (``http://host:5000``) or store; None: the
        embedded SQLite store in the directory. ``track=False`` records locally only (a
        later ``senolab sync`` uploads). Every MLflow run is tagged with ``git_commit``,
        ``data_fingerprint`` (see :func:`senolab.tracking.provenance.table_fingerprint`)
        and ``tags``.
        """
        root = Path(root).absolute()
        tracking_uri = normalise_tracking_uri(tracking_uri)
        if (root / MANIFEST).exists():
            raise FileExistsError(f"{root} already holds a run ({MANIFEST}); open it with RunDir.open or choose another --out")
        root.mkdir(parents=True, exist_ok=True)
        run_id = f"{slug(study)}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        now = time.time()
        manifest = {
            "format": FORMAT,
            "study": study,
            "run_id": run_id,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(now)),
            "created_ms": int(now * 1000),
            "status": "running",
            "tags": {"study": study, "senolab.run_id": run_id, "git_commit": git_commit(),
                     "data_fingerprint": data_fingerprint, **(tags or {})},
            "tracking": {"uri": tracking_uri, "state": OK if track else OFF, "error": None},
            "methods": [],
        }
        (root / CONFIG).write_text(yaml.safe_dump(dict(config), sort_keys=False))
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
            raise ValueError(f"{path}: manifest format {manifest.get('format')!r}, expected {FORMAT}")
        config = yaml.safe_load((root / CONFIG).read_text()) if (root / CONFIG).exists() else {}
        return cls(root, manifest, config or {})

    def finish(self, echo: bool = True) -> str:
        """Mark the study finished and say where to look at it (printed when ``echo``).

        Unless tracking is off or has failed in this run, every recorded method is synced
        once more: that repairs what an earlier, killed run left half uploaded."""
        if self.tracking["state"] == OK and self.manifest["methods"]:
            try:
                self.sync(progress=False)
            except Exception:  # noqa: BLE001 - flagged in the manifest and said in the message
                warnings.warn(TrackingUnavailable(f"MLflow upload failed: {self.tracking['error']}"), stacklevel=2)
        self.manifest["status"] = "finished"
        self._save()
        message = self.tracking_message()
        if echo:
            print(message)
        return message

    def tracking_message(self) -> str:
        tracking = self.tracking
        if tracking["state"] == OK and tracking["uri"] is None:
            return f"MLflow (embedded store): {ui_command(self.root)}"
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

    def methods(self) -> list[MethodRecord]:
        return [MethodRecord.from_dict(m) for m in self.manifest["methods"]]

    def is_logged(self, unit: str) -> bool:
        """Whether ``unit`` (see :func:`unit_path`) is recorded already: a re-run logs nothing twice."""
        key = self._unit_key(unit)
        return any(record.parent.key == key for record in self.methods())

    def method_dir(self, unit: str) -> Path:
        """``methods/<unit>/``: where a unit's files (figures, model...) belong."""
        path = self.root / "methods" / unit_path(unit)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def use_tracking_uri(self, tracking_uri: str | None) -> None:
        """Send this run's records to ``tracking_uri`` from now on (a user's ``--tracking-uri``
        given when an existing run folder is opened again); :meth:`finish` uploads what the
        new store lacks."""
        tracking_uri = normalise_tracking_uri(tracking_uri)
        if tracking_uri != self.tracking["uri"] or self.tracking["state"] == FAILED:
            self.manifest["tracking"] = {"uri": tracking_uri, "state": OK, "error": None}
            self._save()

    # ------------------------------------------------------------------ writing
    def write_predictions(self, table: pd.DataFrame) -> Path:
        """``predictions.parquet``: the per-case predictions of every method."""
        path = self.root / "predictions.parquet"
        table.to_parquet(path, index=False)
        return path

    def write_model(self, unit: str, model: nn.Module, config: Mapping[str, Any]) -> Path:
        """``methods/<unit>/model/model.pt``: the state_dict and the config that builds the model."""
        return save_checkpoint(self.method_dir(unit) / "model" / "model.pt", model=model.state_dict(),
                               config=dict(config))

    def log_method(self, method: str, aggregates: Mapping[str, Any], predictions: pd.DataFrame, *,
                   transductive: bool, params: Mapping[str, Any] | None = None, files: Sequence[str | Path] = (),
                   site_files: Mapping[str, Sequence[str | Path]] | None = None, target: str | None = None,
                   seed: int | None = None) -> MethodRecord:
        """Write a finished method's results and record (and push) its MLflow runs.

        ``target`` and ``seed``, in a study that has them, make the unit
        ``<target>/<method>/seed<k>``: its folder, its MLflow key and tags, so every
        (target, method, seed) is logged once and never overwrites another.

        ``aggregates``: the method's entry of the evaluation (``{site: {metric: {value,
        ci}}, "worst_site": ...}``); ``predictions``: its per-case rows (with ``site``,
        and ``cohort``/``scanner`` for the tags); ``params``: the method's own options
        (logged as ``method.<name>`` next to the flattened study config); ``files``
        (figures, attribution tables: files in the run directory) go to the parent run,
        ``site_files[site]`` to that site's child, each in MLflow under its folder
        relative to :meth:`method_dir` (``figures/roc.png``); a model saved with
        :meth:`write_model` goes to the parent.
        """
        unit = unit_name(method, target, seed)
        folder = self.method_dir(unit)
        summary = folder / "summary.json"
        content = json_safe({"config": self.config, "aggregates": {method: aggregates}})
        summary.write_text(json.dumps(content, indent=1, allow_nan=False) + "\n")
        whole = folder / "predictions.parquet"
        predictions.to_parquet(whole, index=False)
        site_artifacts: dict[str, list[Artifact]] = {}
        for site, rows in predictions.groupby("site", sort=True):
            path = folder / "sites" / slug(site) / "predictions.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            rows.to_parquet(path, index=False)
            site_artifacts[str(site)] = [Artifact(self._relative(path)), Artifact(self._relative(summary))]
        for site, paths in (site_files or {}).items():
            site_artifacts.setdefault(site, []).extend(self._method_file(unit, p) for p in paths)
        artifacts = [Artifact(self._relative(summary)), Artifact(self._relative(whole)),
                     *(self._method_file(unit, p) for p in files)]
        if (folder / "model").is_dir():
            artifacts.append(Artifact(self._relative(folder / "model")))
        unit_tags = {"target_site": target} if target is not None else {}
        if seed is not None:
            unit_tags["seed"] = str(seed)
        record = method_record(
            self.run_id, method, aggregates, unit=unit,
            params={**flatten_params(self.config), **flatten_params({"method": {"name": method, **(params or {})}})},
            tags={"transductive": str(bool(transductive)).lower(), **unit_tags},
            site_tags=site_tags_from_predictions(predictions),
            artifacts=artifacts, site_artifacts=site_artifacts,
        )
        self.record(record)
        return record

    def record(self, method: MethodRecord) -> None:
        """Add a method's run records to the manifest, then push them unless tracking is off or failed."""
        known = {key for m in self.methods() for key in m.keys()}
        clash = sorted(known & set(method.keys()))
        if clash:
            raise ValueError(f"{self.root}: runs {clash} are already recorded; each method is logged once per run")
        for record in [method.parent, *method.children]:
            for artifact in record.artifacts:
                if not (self.root / artifact.path).exists():
                    raise FileNotFoundError(f"artifact {artifact.path} of run {record.key} is not in {self.root}")
        self.manifest["methods"].append(method.to_dict())
        self._save()
        if self.tracking["state"] == OK:
            self._push_live(method)

    # ------------------------------------------------------------------ MLflow
    def sync(self, tracking_uri: str | None = None, progress: bool = True) -> PushCounts:
        """Upload every recorded method, creating only the runs MLflow does not have yet.

        ``tracking_uri``: where to (default: the run's own tracking URI, or its embedded
        store). Raises what MLflow raised if the upload fails; the manifest says so.
        """
        target = normalise_tracking_uri(tracking_uri) if tracking_uri is not None else self.tracking["uri"]
        counts = PushCounts()
        try:
            mirror = self._mirror(target)
            for method in tqdm(self.methods(), desc="sync to MLflow", unit="method", disable=not progress):
                counts.add(self._push(mirror, method))
        except Exception as err:
            # A failed upload elsewhere says nothing about the folder's own store: only a
            # failure of that store is flagged, and X never becomes the default by failing.
            if target == self.tracking["uri"]:
                self._flag_failure(err, target)
            raise
        self.manifest["tracking"] = {"uri": target, "state": OK, "error": None,
                                     "synced": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self._save()
        return counts

    def _push_live(self, method: MethodRecord) -> None:
        try:
            self._push(self._mirror(self.tracking["uri"]), method)
        except Exception as err:  # noqa: BLE001 - any backend failure (HTTP, SQL, disk) must not stop the study
            self._flag_failure(err, self.tracking["uri"])
            warnings.warn(TrackingUnavailable(
                f"MLflow upload failed at {method.parent.key}: {self.tracking['error']}. The study goes on and is "
                f"recorded in {self.root}; upload it later with: senolab sync {self.root}"
            ), stacklevel=3)

    def _mirror(self, uri: str | None) -> MlflowMirror:
        return MlflowMirror.for_run_dir(self.root, self.study, uri)

    def _push(self, mirror: MlflowMirror, method: MethodRecord) -> PushCounts:
        return mirror.push(method, self.root, self.manifest["tags"], self.manifest["created_ms"])

    def _flag_failure(self, err: Exception, uri: str | None) -> None:
        text = f"{type(err).__name__}: {err}"
        self.manifest["tracking"] = {"uri": uri, "state": FAILED, "error": text[:500]}
        self._save()

    # ------------------------------------------------------------------ files
    def _unit_key(self, unit: str) -> str:
        return f"{self.run_id}/{unit_path(unit).as_posix()}"

    def _method_file(self, unit: str, path: str | Path) -> Artifact:
        """An artifact whose MLflow folder mirrors its place under the unit's folder."""
        relative = self._relative(path)
        method_prefix = self._relative(self.method_dir(unit)) + "/"
        inner = relative.removeprefix(method_prefix) if relative.startswith(method_prefix) else Path(relative).name
        folder = Path(inner).parent.as_posix()
        return Artifact(relative, "" if folder == "." else folder)

    def _relative(self, path: str | Path) -> str:
        # Relative paths are the working directory's, like every other path a user gives;
        # both sides resolved, so a root reached through a symlink or '..' still matches.
        try:
            return Path(path).resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            raise ValueError(f"{path} is outside the run directory {self.root}; a run directory must be self-contained") from None

    def _save(self) -> None:
        # Atomic: a study killed while writing keeps the previous manifest.
        path = self.root / MANIFEST
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.manifest, indent=1) + "\n")
        os.replace(tmp, path)


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
