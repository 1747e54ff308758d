"""The MLflow fan-out: replay run-directory records into an MLflow tracking store.

Every MLflow run carries the tag ``senolab.key`` (a stable key from the run directory)
and, once fully written, ``senolab.complete = true``. Pushing looks each key up before
creating anything: a complete run is skipped, an incomplete one (an upload cut off half
way) is written again in place, a missing one is created. So pushing the same records
twice, or after a failure, never duplicates a run.

The embedded default needs no server: a SQLite store inside the run directory with the
artifacts next to it. Look at it with::

    mlflow ui --backend-store-uri sqlite:///<absolute run dir>/mlflow.db

(four slashes in total before an absolute path: ``sqlite:////home/me/run/mlflow.db``).
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

from senolab._optional import require
from senolab.tracking.records import RunRecord, epoch_metrics

KEY_TAG = "senolab.key"
COMPLETE_TAG = "senolab.complete"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EMBEDDED_DB = "mlflow.db"
EMBEDDED_ARTIFACTS = "mlartifacts"

# A study must not hang on a dead server: few retries, short timeout. The local run
# directory keeps everything and `senolab sync` uploads it later. A user's own settings
# of these variables win.
FAIL_FAST_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}


def embedded_uri(run_dir: str | Path) -> str:
    """The SQLite tracking URI of the run directory's own store."""
    return f"sqlite:///{Path(run_dir).resolve() / EMBEDDED_DB}"


def normalise_tracking_uri(uri: str | None) -> str | None:
    """A tracking URI that means the same store from any working directory.

    A relative SQLite or file store (``sqlite:///mlflow.db``, ``./mlruns``,
    ``file:mlruns``) is made absolute against the current folder, as the user meant it
    when typing it; server and other URIs are kept as they are."""
    if uri is None:
        return None
    uri = str(uri)
    if uri.startswith("sqlite:///"):
        path = uri.removeprefix("sqlite:///")
        return uri if path.startswith("/") or path == ":memory:" else f"sqlite:///{Path(path).resolve()}"
    if uri.startswith("file:"):
        path = uri.removeprefix("file://") if uri.startswith("file://") else uri.removeprefix("file:")
        return Path(path).resolve().as_uri()
    if "://" not in uri:  # a plain folder: MLflow reads it as a file store
        return Path(uri).resolve().as_uri()
    return uri


def ui_command(run_dir: str | Path) -> str:
    """The command that opens MLflow's UI on a run directory's embedded store."""
    return f"mlflow ui --backend-store-uri {embedded_uri(run_dir)}"


@dataclass
class PushCounts:
    """What a push did: runs ``created``, incomplete runs ``resumed``, complete ones ``skipped``."""

    created: int = 0
    resumed: int = 0
    skipped: int = 0

    def count(self, state: str) -> None:
        """Count one run by what :meth:`MlflowMirror.push` said of it."""
        if state == "created":
            self.created += 1
        elif state == "incomplete":
            self.resumed += 1
        else:
            self.skipped += 1


class MlflowMirror:
    """Writes :class:`RunRecord` s into one experiment of one tracking store, live or replayed.

    ``artifact_location``: where a newly created experiment keeps artifacts (the
    embedded store sets it inside the run directory; a server decides for itself).
    """

    def __init__(self, tracking_uri: str, experiment: str, artifact_location: str | None = None):
        self.mlflow = require("mlflow")
        self.tracking_uri = tracking_uri
        self.client = self.mlflow.tracking.MlflowClient(tracking_uri=tracking_uri)
        self.experiment_name = experiment
        self.artifact_location = artifact_location
        self._experiment_id: str | None = None

    @classmethod
    def for_run_dir(cls, run_dir: str | Path, experiment: str, tracking_uri: str | None) -> "MlflowMirror":
        """The mirror of a run directory: ``tracking_uri``, or its embedded store when None."""
        if tracking_uri is not None:
            return cls(tracking_uri, experiment)
        root = Path(run_dir).resolve()
        return cls(embedded_uri(root), experiment, (root / EMBEDDED_ARTIFACTS).as_uri())

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            self._experiment_id = self._ensure_experiment()
        return self._experiment_id

    def _ensure_experiment(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment_name)
        if found is None:
            # tagged as model training, so MLflow's UI opens its training view (not the GenAI one)
            return self.client.create_experiment(self.experiment_name, artifact_location=self.artifact_location,
                                                 tags={EXPERIMENT_KIND_TAG: "custom_model_development"})
        if found.lifecycle_stage == "deleted":
            self.client.restore_experiment(found.experiment_id)
        return found.experiment_id

    def push(self, record: RunRecord, root: Path, common_tags: Mapping[str, str], timestamp_ms: int) -> str:
        """Write one run idempotently (its parent must have been pushed first); files are
        read from ``root``. Returns "created", "incomplete" (written again in place) or
        "complete" (left alone).

        Final metrics are stamped ``timestamp_ms`` (one fixed time per run directory) and
        history points their own ``time_ms``, so writing an incomplete run again repeats
        the same points instead of adding new ones.
        """
        with fail_fast():
            run_id, state = self._find_or_create(record)
            if state != "complete":
                self._write(run_id, record, root, common_tags, timestamp_ms)
        return state

    def start(self, record: RunRecord, common_tags: Mapping[str, str]) -> str:
        """Open ``record``'s run for live logging (found again if it exists); its MLflow id."""
        with fail_fast():
            run_id, _ = self._find_or_create(record)
            self._log_tags(run_id, {**common_tags, **record.tags})
        return run_id

    def log_epoch(self, run_id: str, row: Mapping[str, object]) -> None:
        """One history row as step-numbered metric points, while the run trains."""
        step, timestamp, values = epoch_metrics(row)
        metrics = [self.mlflow.entities.Metric(k, v, timestamp, step) for k, v in values.items()]
        with fail_fast():
            self.client.log_batch(run_id, metrics=metrics)

    def find(self, key: str):
        """The active MLflow run tagged with ``key`` (the oldest if several), or None."""
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{KEY_TAG}` = '{key}'", max_results=10,
            order_by=["attributes.start_time ASC"],
        )
        return runs[0] if runs else None

    def _find_or_create(self, record: RunRecord) -> tuple[str, str]:
        existing = self.find(record.key)
        if existing is not None:
            complete = existing.data.tags.get(COMPLETE_TAG) == "true"
            return existing.info.run_id, "complete" if complete else "incomplete"
        tags = {KEY_TAG: record.key}
        if record.parent is not None:
            parent = self.find(record.parent)
            if parent is None:
                raise LookupError(f"parent run {record.parent} of {record.key} is not in MLflow; push it first")
            tags["mlflow.parentRunId"] = parent.info.run_id
        run = self.client.create_run(self.experiment_id, run_name=record.name, tags=tags, start_time=record.start_ms)
        return run.info.run_id, "created"

    def _write(self, run_id: str, record: RunRecord, root: Path, common_tags: Mapping[str, str],
               timestamp_ms: int) -> None:
        entities = self.mlflow.entities
        validation = self.mlflow.utils.validation
        params = [entities.Param(k, _clip(v, validation.MAX_PARAM_VAL_LENGTH)) for k, v in record.params.items()]
        metrics = [entities.Metric(k, v, record.end_ms or timestamp_ms, 0) for k, v in record.metrics.items()]
        metrics += self._history(record, root)
        for chunk in _chunks(params, validation.MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(run_id, params=chunk)
        self._log_tags(run_id, {**common_tags, **record.tags})
        for chunk in _chunks(metrics, validation.MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=chunk)
        if record.datasets:
            self.client.log_inputs(run_id, datasets=[self._dataset_input(d) for d in record.datasets])
        for artifact in record.artifacts:
            self._log_artifact(run_id, root / artifact.path, artifact.folder)
        self.client.set_tag(run_id, COMPLETE_TAG, "true")
        self.client.set_terminated(run_id, "FINISHED", end_time=record.end_ms)

    def _dataset_input(self, entry: Mapping[str, object]):
        """A part of the data as MLflow's Dataset (name, digest, source) with its role as context."""
        import json

        entities = self.mlflow.entities
        dataset = entities.Dataset(name=str(entry["name"]), digest=str(entry["digest"]), source_type="local",
                                   source=json.dumps({"uri": str(entry["source"])}),
                                   profile=json.dumps({"num_rows": entry.get("n_cases")}))
        return entities.DatasetInput(dataset, tags=[entities.InputTag("mlflow.data.context", str(entry["context"]))])

    def _log_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        limit = self.mlflow.utils.validation.MAX_TAG_VAL_LENGTH
        run_tags = [self.mlflow.entities.RunTag(k, _clip(str(v), limit)) for k, v in tags.items()]
        for chunk in _chunks(run_tags, self.mlflow.utils.validation.MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(run_id, tags=chunk)

    def _history(self, record: RunRecord, root: Path) -> list:
        """The per-epoch points of the run folder's history.csv (as logged live)."""
        if record.history is None or not (root / record.history).is_file():
            return []
        import pandas as pd

        points = []
        for row in pd.read_csv(root / record.history).to_dict("records"):
            step, timestamp, values = epoch_metrics(row)
            points += [self.mlflow.entities.Metric(k, v, timestamp, step) for k, v in values.items()]
        return points

    def _log_artifact(self, run_id: str, local: Path, folder: str) -> None:
        if not local.exists():
            raise FileNotFoundError(f"artifact {local} is recorded in the run directory but missing")
        if local.is_dir():
            self.client.log_artifacts(run_id, str(local), "/".join(p for p in (folder, local.name) if p))
        else:
            self.client.log_artifact(run_id, str(local), folder or None)


def _clip(value: str, limit: int) -> str:
    # The full value stays in the run directory's config.yaml; MLflow refuses longer ones.
    marker = "...[truncated]"
    return value if len(value) <= limit else value[: limit - len(marker)] + marker


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@contextmanager
def fail_fast() -> Iterator[None]:
    """Temporarily set :data:`FAIL_FAST_ENV` (where the user has not set them)."""
    added = [name for name in FAIL_FAST_ENV if name not in os.environ]
    os.environ.update({name: FAIL_FAST_ENV[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)
