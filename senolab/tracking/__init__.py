"""Tracking: the run directory (source of truth) and its MLflow fan-out.

:class:`RunDir` writes everything a study produces and records, per method, one MLflow
parent run and one child run per site; :mod:`senolab.tracking.mirror` replays those
records into MLflow idempotently (embedded SQLite store by default, or a server);
``senolab sync RUN_DIR`` uploads a run whose tracking failed or was off.
MLflow is imported on first use (``senolab[tracking]``).
"""
from senolab.tracking.mirror import MlflowMirror, PushCounts, embedded_uri, ui_command
from senolab.tracking.provenance import git_commit, table_fingerprint
from senolab.tracking.records import Artifact, MethodRecord, RunRecord, flatten_params, method_record
from senolab.tracking.rundir import RunDir, TrackingUnavailable

__all__ = [
    "Artifact", "MethodRecord", "MlflowMirror", "PushCounts", "RunDir", "RunRecord", "TrackingUnavailable",
    "embedded_uri", "flatten_params", "git_commit", "method_record", "table_fingerprint", "ui_command",
]
