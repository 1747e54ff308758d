"""Domain adaptation across institutions: loss hooks on the training step, AdaBN,
intensity harmonisation, CycleGAN translation and its quality measures.

``METHODS`` maps a name to a method class; each class says whether it is transductive
(uses unlabelled target images). See :mod:`senolab.adaptation.base` for how the engine
drives a method and :mod:`senolab.adaptation.wall` for how target labels are kept out.
"""
from senolab import lazy_package

__all__ = lazy_package(__name__, exports={
    "base": ["METHODS", "AdaptationMethod", "AdaptationStep"],
    "cyclegan": ["CycleGAN", "save_translation_examples"],
    "quality": ["TranslationQuality", "translation_quality"],
    "wall": ["TargetBatch", "TargetLabelAccess", "Unlabelled", "strip_labels"],
}, registries={
    "base": ["adabn", "alignment", "dann", "entropy", "federated", "harmonise", "self_training"],
})
