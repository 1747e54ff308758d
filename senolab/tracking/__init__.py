"""Tracking: the run directory (source of truth) and its MLflow fan-out.

:class:`RunDir` records a command's work: one MLflow parent run for the command and
one child run per unit (``<target>/<method>/seed<k>`` in a study), written live while it
trains (:class:`LiveRun`, a trainer callback) and replayed idempotently by
:mod:`senolab.tracking.mirror` (embedded SQLite store by default, or a server);
``senolab sync RUN_DIR`` uploads a run whose tracking failed or was off.
MLflow is imported on first use (``senolab[tracking]``).
"""
from senolab import lazy_package

__all__ = lazy_package(__name__, exports={
    "mirror": ["MlflowMirror", "PushCounts", "embedded_uri", "ui_command"],
    "provenance": ["git_commit", "table_fingerprint"],
    "records": ["Artifact", "RunRecord", "flatten_params", "unit_metrics"],
    "rundir": ["LiveRun", "RunDir", "TrackingUnavailable", "unit_name"],
})
