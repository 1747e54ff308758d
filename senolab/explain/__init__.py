"""Captum explanations of senolab models and their quantitative checks.

Images: :func:`attribute_image` with a method from ``EXPLAINERS`` (integrated_gradients,
gradcam, occlusion, saliency) and a readout from ``READOUTS`` (classification,
segmentation); :func:`explain_images` over a loader. Tabular inputs:
:func:`feature_ablation` with :func:`tabular_groups`, :func:`token_integrated_gradients`.
Graphs: :func:`graph_attributions`. Checks: :func:`pointing_game`,
:func:`randomisation_check`, :func:`topk_stability`. Figures: :func:`cohort_case_grids`,
:func:`tabular_bar_chart`.

Captum and torch-geometric are imported on first use (``senolab[explain]``, ``[graph]``).
"""
from senolab.explain.checks import pointing_game, randomisation_check, topk_stability
from senolab.explain.figures import cohort_case_grids, mean_abs_by_cohort, tabular_bar_chart
from senolab.explain.forward import READOUTS
from senolab.explain.graph import GraphAttributions, graph_attributions
from senolab.explain.image import EXPLAINERS, ImageExplanations, attribute_image, explain_images
from senolab.explain.tabular import FeatureGroups, feature_ablation, tabular_groups, token_integrated_gradients

__all__ = [
    "EXPLAINERS", "READOUTS", "FeatureGroups", "GraphAttributions", "ImageExplanations", "attribute_image",
    "cohort_case_grids", "explain_images", "feature_ablation", "graph_attributions", "mean_abs_by_cohort",
    "pointing_game", "randomisation_check", "tabular_bar_chart", "tabular_groups", "token_integrated_gradients",
    "topk_stability",
]
