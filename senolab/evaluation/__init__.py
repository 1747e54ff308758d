"""Evaluation: metrics, patient-bootstrap intervals, DeLong's test, per-site reports.

Start from :func:`evaluate` on a per-case prediction table; see :mod:`.report` for the
table's columns and the ``summary.json`` / ``results.csv`` it writes, :mod:`.segmentation`
for the policy on lesion-free images, :mod:`.classification` for metric definitions.
Plots live in :mod:`senolab.evaluation.plots` (imported on demand: matplotlib).
"""
from senolab import lazy_package

__all__ = lazy_package(__name__, exports={
    "bootstrap": ["Interval", "bootstrap"],
    "classification": ["classification_metrics", "reliability_table"],
    "delong": ["DeLongResult", "delong_covariance", "delong_test", "structural_components"],
    "metrics": ["METRICS", "CaseArrays", "Metric", "register_metric"],
    "report": ["POOLED", "Evaluation", "compare_methods", "evaluate", "load_summary"],
    "segmentation": ["FP_MIN_AREA_PX", "LESION_FREE_POLICY", "box_iou", "dice", "hd95", "iou",
                     "segmentation_case_metrics"],
}, registries={
    "metrics": ["classification", "segmentation"],
})
