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
from senolab import lazy_package

__all__ = lazy_package(__name__, exports={
    "checks": ["pointing_game", "randomisation_check", "topk_stability"],
    "figures": ["cohort_case_grids", "mean_abs_by_cohort", "tabular_bar_chart"],
    "forward": ["READOUTS"],
    "graph": ["GraphAttributions", "graph_attributions"],
    "image": ["EXPLAINERS", "ImageExplanations", "attribute_image", "explain_images"],
    "tabular": ["FeatureGroups", "feature_ablation", "tabular_groups", "token_integrated_gradients"],
})
