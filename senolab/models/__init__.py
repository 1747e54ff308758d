"""Image encoders, task heads, the multi-task model, its losses and loss balancers.

Registries: :data:`ENCODERS` (``unet``, ``vit``, ``hybrid``), :data:`HEADS` (``cls``,
``seg``, ``box``), :data:`BALANCERS` (``fixed``, ``uncertainty``, ``gradnorm``, ``dwa``).
Importing this package registers them all; ``transformers`` is imported only when a
``vit`` encoder is built.
"""
from senolab.models.encoders import ENCODERS, Encoder, EncoderOutput, build_encoder, load_encoder_checkpoint
from senolab.models import unet, vit, hybrid  # noqa: F401  (register the encoders)
from senolab.models.heads import HEADS, box_from_params
from senolab.models.multitask import DEFAULT_HEADS, MultiTaskModel, build_model
from senolab.models.losses import LossConfig, multitask_losses
from senolab.models.balancers import BALANCERS, Balancer

__all__ = [
    "BALANCERS", "Balancer", "DEFAULT_HEADS", "ENCODERS", "Encoder", "EncoderOutput", "HEADS",
    "LossConfig", "MultiTaskModel", "box_from_params", "build_encoder", "build_model",
    "load_encoder_checkpoint", "multitask_losses",
]
