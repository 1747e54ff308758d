"""Evaluation: metrics, patient-bootstrap intervals, DeLong's test, per-site reports.

Start from :func:`evaluate` on a per-case prediction table; see :mod:`.report` for the
table's columns and the ``summary.json`` / ``results.csv`` it writes, :mod:`.segmentation`
for the policy on lesion-free images, :mod:`.classification` for metric definitions.
Plots live in :mod:`senolab.evaluation.plots` (imported on demand: matplotlib).

Clinical use at a new site: :mod:`.operating` (thresholds chosen on source validation,
sensitivity/specificity/PPV/NPV at each site, the oracle beside), :mod:`.calibration`
(ECE, Brier, reliability, temperature scaling), :mod:`.decision` (net benefit),
:mod:`.recalibration` (k labelled target cases: kept apart, it uses target labels),
:mod:`.corruptions` (graded ultrasound corruptions for stress tests) and
:mod:`.clinical_figures` (their figures).
"""
from senolab import lazy_package

__all__ = lazy_package(__name__, exports={
    "bootstrap": ["Interval", "bootstrap"],
    "calibration": ["ECE_BINS", "fit_temperature", "reliability", "site_calibration"],
    "classification": ["classification_metrics", "reliability_table"],
    "corruptions": ["CORRUPTIONS", "SEVERITIES", "corrupt"],
    "decision": ["decision_curve", "net_benefit", "site_decision_curves", "treat_all"],
    "delong": ["DeLongResult", "delong_covariance", "delong_test", "structural_components"],
    "metrics": ["METRICS", "CaseArrays", "Metric", "register_metric"],
    "operating": ["RULES", "at_threshold", "binary_cases", "choose_thresholds", "operating_points"],
    "recalibration": ["local_recalibration"],
    "report": ["POOLED", "Evaluation", "compare_methods", "evaluate", "load_summary"],
    "segmentation": ["FP_MIN_AREA_PX", "LESION_FREE_POLICY", "box_iou", "dice", "hd95", "iou",
                     "segmentation_case_metrics"],
}, registries={
    "metrics": ["classification", "segmentation"],
})
