"""Tracking: the run directory (source of truth) and its MLflow fan-out.

:class:`RunDir` writes everything a study produces and records, per method, one MLflow
parent run and one child run per site; :mod:`senolab.tracking.mirror` replays those
records into MLflow idempotently (embedded SQLite store by default, or a server);
``senolab sync RUN_DIR`` uploads a run whose tracking failed or was off.
MLflow is imported on first use (``senolab[tracking]``).
"""
from senolab import lazy_package

__all__ = lazy_package(__name__, exports={
    "mirror": ["MlflowMirror", "PushCounts", "embedded_uri", "ui_command"],
    "provenance": ["git_commit", "table_fingerprint"],
    "records": ["Artifact", "MethodRecord", "RunRecord", "flatten_params", "method_record"],
    "rundir": ["RunDir", "TrackingUnavailable"],
})
