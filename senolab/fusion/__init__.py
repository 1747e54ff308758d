"""Fusion of images with clinical metadata and radiomics (the ablation study that compares
them is a runner: :mod:`senolab.runners.ablation`).

Registry :data:`FUSIONS`: ``image_only``, ``tabular_only``, ``concat``, ``decision``,
``cross_attention``, ``graph`` (torch-geometric, imported when a graph is built). Build one
with :func:`build_fusion` and hand it to :class:`senolab.models.MultiTaskModel`.
"""
from senolab import lazy_package

__all__ = lazy_package(__name__, exports={
    "base": ["FUSIONS", "MODALITIES", "Fusion", "build_fusion", "fusion_for_data", "fusion_options"],
    "tabular": ["MetadataTokeniser", "RadiomicsTokeniser", "TabularEncoder", "TabularInputs", "Tokens"],
    "graph": ["refresh_population"],
}, registries={
    "base": ["late", "cross_attention", "graph"],
})
