"""Evaluation: metrics, patient-bootstrap intervals, DeLong's test, per-site reports.

Start from :func:`evaluate` on a per-case prediction table; see :mod:`.report` for the
table's columns and the ``summary.json`` / ``results.csv`` it writes, :mod:`.segmentation`
for the policy on lesion-free images, :mod:`.classification` for metric definitions.
Plots live in :mod:`senolab.evaluation.plots` (imported on demand: matplotlib).
"""
from senolab.evaluation.bootstrap import Interval, bootstrap
from senolab.evaluation.classification import classification_metrics, reliability_table
from senolab.evaluation.delong import DeLongResult, delong_covariance, delong_test, structural_components
from senolab.evaluation.metrics import METRICS, CaseArrays, Metric, register_metric
from senolab.evaluation.report import POOLED, Evaluation, compare_methods, evaluate, load_summary
from senolab.evaluation.segmentation import (
    FP_MIN_AREA_PX,
    LESION_FREE_POLICY,
    box_iou,
    dice,
    hd95,
    iou,
    segmentation_case_metrics,
)

__all__ = [
    "METRICS",
    "POOLED",
    "CaseArrays",
    "DeLongResult",
    "Evaluation",
    "FP_MIN_AREA_PX",
    "Interval",
    "LESION_FREE_POLICY",
    "Metric",
    "bootstrap",
    "box_iou",
    "classification_metrics",
    "compare_methods",
    "delong_covariance",
    "delong_test",
    "dice",
    "evaluate",
    "hd95",
    "iou",
    "load_summary",
    "register_metric",
    "reliability_table",
    "segmentation_case_metrics",
    "structural_components",
]
