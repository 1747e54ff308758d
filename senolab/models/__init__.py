"""Image encoders, task heads, the multi-task model, its losses and loss balancers.

Registries: :data:`ENCODERS` (``unet``, ``vit``, ``hybrid``, ``timm``), :data:`HEADS` (``cls``,
``seg``, ``box``), :data:`BALANCERS` (``fixed``, ``uncertainty``, ``gradnorm``, ``dwa``).
Each is complete as soon as its module is imported; ``transformers`` is imported only
when a ``vit`` encoder is built, ``timm`` only when a ``timm`` encoder is.
"""
from senolab import lazy_package

__all__ = lazy_package(__name__, exports={
    "encoders": ["ENCODERS", "Encoder", "EncoderOutput", "build_encoder", "load_encoder_checkpoint"],
    "heads": ["HEADS", "box_from_params"],
    "multitask": ["DEFAULT_HEADS", "MultiTaskModel", "build_model"],
    "losses": ["LossConfig", "multitask_losses"],
    "balancers": ["BALANCERS", "Balancer"],
}, registries={
    "encoders": ["unet", "vit", "hybrid", "timm_encoder"],
})
