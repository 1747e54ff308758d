"""Domain adaptation across institutions: loss hooks on the training step, AdaBN,
intensity harmonisation, CycleGAN translation and its quality measures.

``METHODS`` maps a name to a method class; each class says whether it is transductive
(uses unlabelled target images). See :mod:`senolab.adaptation.base` for how the engine
drives a method and :mod:`senolab.adaptation.wall` for how target labels are kept out.
"""
from senolab.adaptation import adabn, alignment, dann, entropy, harmonise, self_training  # noqa: F401  (registration)
from senolab.adaptation.base import METHODS, AdaptationMethod, AdaptationStep
from senolab.adaptation.cyclegan import CycleGAN, save_translation_examples
from senolab.adaptation.quality import TranslationQuality, translation_quality
from senolab.adaptation.wall import TargetBatch, TargetLabelAccess, Unlabelled, strip_labels

__all__ = [
    "METHODS",
    "AdaptationMethod",
    "AdaptationStep",
    "CycleGAN",
    "TargetBatch",
    "TargetLabelAccess",
    "TranslationQuality",
    "Unlabelled",
    "save_translation_examples",
    "strip_labels",
    "translation_quality",
]
