"""Fusion of images with clinical metadata and radiomics, and the fusion ablation study.

Registry :data:`FUSIONS`: ``image_only``, ``tabular_only``, ``concat``, ``decision``,
``cross_attention``, ``graph`` (torch-geometric, imported when a graph is built). Build one
with :func:`build_fusion` and hand it to :class:`senolab.models.MultiTaskModel`.
"""
from senolab.fusion.base import FUSIONS, MODALITIES, Fusion, build_fusion, fusion_for_data, fusion_options
from senolab.fusion.tabular import MetadataTokeniser, RadiomicsTokeniser, TabularEncoder, TabularInputs, Tokens
from senolab.fusion import late, cross_attention, graph  # noqa: F401  (register the fusions)
from senolab.fusion.graph import refresh_population

__all__ = [
    "FUSIONS", "Fusion", "MetadataTokeniser", "RadiomicsTokeniser", "TabularEncoder", "TabularInputs", "Tokens",
    "MODALITIES", "build_fusion", "fusion_for_data", "fusion_options", "refresh_population",
]
