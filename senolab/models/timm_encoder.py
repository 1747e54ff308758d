"""Any timm backbone as senolab's image encoder, from random weights or pretrained ones.

``encoder: timm`` with ``encoder_options: {name: resnet18 | convnext_atto | efficientnet_b0 |
vit_tiny_patch16_224 | ..., pretrained: false | true | PATH}``.

Features: timm's ``forward_intermediates`` gives every backbone's feature maps (layers the
maps do not need, such as a classifier head or a final norm after the last stage, are
pruned by timm's ``prune_intermediate_layers``, so every parameter is on a head's path):

- a CNN (ResNet, ConvNeXt, EfficientNet...) gives a pyramid of maps at strides 2 or 4 to
  32; the residual U-Net's expanding path (:class:`senolab.models.unet.UpPath`) decodes it
  from the deepest map up, one skip per level, and a last stage upsamples to the input;
- a ViT gives maps of its last ``vit_levels`` blocks, all at the patch stride (its tokens
  laid on the patch grid); they are concatenated, reduced by a 1x1 conv and upsampled
  progressively to the input (SETR-PUP, the decoder of senolab's own ``vit`` encoder).

The embedding is the spatial mean of the deepest map, as for every senolab encoder, so the
classification head, fusion and the adaptation methods read the same kind of vector.

One input channel: timm's ``in_chans=1`` (with ``pretrained: true`` timm sums the first
conv's RGB filters itself; for a local file senolab does the same with timm's
``adapt_input_conv``).

Weights: ``pretrained: true`` is timm's own download (needs the internet; the hub cache is
timm's); ``pretrained: PATH`` loads a local file: safetensors, or a torch file read with
``weights_only=True`` through :mod:`senolab.checkpoint`, holding timm's own state dict, the
encoder weights written by ``senolab pretrain``, or a senolab model checkpoint. Tensors
that do not fit are left out and reported once (printed, and in ``load_report``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from senolab._optional import require
from senolab.checkpoint import load_checkpoint
from senolab.errors import InputError
from senolab.models.encoders import ENCODERS, Encoder, EncoderOutput, spatial_mean
from senolab.models.unet import ConvBNReLU, UpPath
from senolab.models.vit import ProgressiveUpsampler

# Key prefixes under which a backbone's tensors sit in files senolab writes or meets:
# a senolab model (encoder.backbone.), an encoder (backbone.), a DDP-wrapped model (module.).
KNOWN_PREFIXES = ("encoder.backbone.", "backbone.", "module.")
# Nesting keys of checkpoint files: a trainer checkpoint ("model"), common training scripts.
NESTING_KEYS = ("model", "state_dict", "encoder")
_REPORTED: set[str] = set()  # files whose partial load was printed already in this process


@dataclass
class LoadReport:
    """What loading a weights file into a backbone did."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # backbone tensors the file lacked: left as initialised
    unused: list[str] = field(default_factory=list)  # file tensors the backbone has no place for
    mismatched: list[str] = field(default_factory=list)  # same name, another shape: left out
    adapted: list[str] = field(default_factory=list)  # first conv turned to the input's channels

    @property
    def partial(self) -> bool:
        return bool(self.missing or self.unused or self.mismatched)

    def summary(self) -> str:
        text = f"pretrained weights {self.source}: {len(self.loaded)} tensors loaded"
        if self.adapted:
            text += f", first conv adapted to the input channels ({', '.join(self.adapted)})"
        for name, keys in (("missing from the file (left random)", self.missing),
                           ("unused from the file", self.unused), ("of another shape (left out)", self.mismatched)):
            if keys:
                text += f"; {len(keys)} {name}: {_first(keys)}"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "loaded": len(self.loaded), "missing": self.missing, "unused": self.unused,
                "mismatched": self.mismatched, "adapted": self.adapted}


@ENCODERS.register("timm")
class TimmEncoder(Encoder):
    """A timm backbone with a U-Net-style decoder (CNNs) or a progressive upsampler (ViTs).

    Parameters
    ----------
    name: a timm model name (``timm.list_models()``), e.g. ``resnet18``, ``convnext_atto``,
        ``efficientnet_b0``, ``vit_tiny_patch16_224``.
    pretrained: False (random weights), True (timm's download: needs the internet), or
        the path of a local weights file (see the module docstring).
    in_channels: image channels (1 for grayscale).
    decoder: build the segmentation decoder.
    attention: attention gates on the CNN decoder's skips (as the ``unet`` encoder).
    vit_levels: how many of a ViT's last blocks feed its decoder.
    drop_path_rate: stochastic depth of the backbone (timm's option).
    model_options: any further keyword arguments of ``timm.create_model``.
    """

    def __init__(self, name: str, pretrained: bool | str = False, in_channels: int = 1, decoder: bool = True,
                 attention: bool = False, vit_levels: int = 4, drop_path_rate: float = 0.0,
                 model_options: Mapping[str, Any] | None = None):
        super().__init__()
        self.name = name
        self.backbone, self.is_vit = create_backbone(name, pretrained is True, in_channels, drop_path_rate,
                                                     model_options or {})
        n_blocks = len(self.backbone.blocks) if self.is_vit else len(self.backbone.feature_info)
        self.levels = min(vit_levels, n_blocks) if self.is_vit else n_blocks
        self.backbone.prune_intermediate_layers(self.levels, prune_norm=not self.is_vit, prune_head=True)
        info = self.backbone.feature_info[-self.levels:] if self.is_vit else self.backbone.feature_info
        channels = [int(i["num_chs"]) for i in info]
        reductions = [int(i["reduction"]) for i in info]
        self.deepest = nn.Identity()  # its output is feature_map: the layer Grad-CAM points at
        self.decoder = None
        if decoder:
            self.decoder = (VitDecoder(channels, reductions[-1]) if self.is_vit
                            else PyramidDecoder(channels, attention))
        self.embedding_dim = self.feature_channels = channels[-1]
        self.decoder_channels = self.decoder.out_channels if decoder else 0
        self.input_multiple = max(reductions)
        self.load_report: LoadReport | None = None
        if pretrained not in (False, True, None):
            self.load_report = load_backbone_weights(self.backbone, pretrained, in_channels)

    @property
    def gradcam_layer(self) -> nn.Module:
        return self.deepest

    @property
    def shared_layer(self) -> nn.Module:
        # the backbone's last layer with parameters (after pruning, on every head's path)
        return [m for m in self.backbone.modules() if next(m.parameters(recurse=False), None) is not None][-1]

    def encode(self, image: torch.Tensor) -> EncoderOutput:
        options = {"norm": True} if self.is_vit else {}
        pyramid = self.backbone.forward_intermediates(image, indices=self.levels, intermediates_only=True, **options)
        deepest = self.deepest(pyramid[-1])
        tokens = deepest.flatten(2).transpose(1, 2) if self.is_vit else None
        decoded = self.decoder(pyramid, image.shape[-2:]) if self.decoder is not None else None
        return EncoderOutput(embedding=spatial_mean(deepest), feature_map=deepest, tokens=tokens,
                             pyramid=list(pyramid), decoder_features=decoded)

    def layer_decay_groups(self, weight_decay: float, layer_decay: float) -> list[dict]:
        """The backbone's parameter groups with layer-wise LR decay (timm's own grouping:
        the blocks of a ViT, the stages of a CNN); each group carries an ``lr_scale``."""
        optim = require("timm.optim")
        return optim.param_groups_layer_decay(self.backbone, weight_decay=weight_decay, layer_decay=layer_decay,
                                              no_weight_decay_list=_no_weight_decay(self.backbone))


class PyramidDecoder(nn.Module):
    """A CNN pyramid (fine to coarse) -> features at input resolution.

    The U-Net's expanding path decodes to the finest level (stride 2 or 4); a last stage
    upsamples that to the input and refines it with one conv-BN-ReLU.
    """

    def __init__(self, channels: list[int], attention: bool, out_channels: int = 16):
        super().__init__()
        self.up = UpPath(channels, attention)
        self.full = ConvBNReLU(channels[0], out_channels)
        self.out_channels = out_channels

    def forward(self, pyramid: list[torch.Tensor], size: torch.Size) -> torch.Tensor:
        x = self.up(pyramid[-1], pyramid[:-1])
        return self.full(nn.functional.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False))


class VitDecoder(nn.Module):
    """A ViT's maps of its last blocks (all at the patch stride) -> features at input resolution."""

    def __init__(self, channels: list[int], patch: int):
        super().__init__()
        if patch & (patch - 1):
            raise ValueError(f"timm ViT: the decoder upsamples by 2 per step, so the patch size must be a power "
                             f"of two; got {patch}")
        self.reduce = ConvBNReLU(sum(channels), channels[-1], kernel=1)
        self.upsample = ProgressiveUpsampler(channels[-1], int(math.log2(patch)))
        self.out_channels = self.upsample.out_channels

    def forward(self, pyramid: list[torch.Tensor], size: torch.Size) -> torch.Tensor:
        return self.upsample(self.reduce(torch.cat(list(pyramid), dim=1)))


def create_backbone(name: str, download: bool, in_channels: int, drop_path_rate: float,
                    model_options: Mapping[str, Any]) -> tuple[nn.Module, bool]:
    """``timm.create_model`` without a classifier; ViTs take any input size (multiple of the
    patch). Returns the model and whether it is a ViT (single-stride features)."""
    timm = require("timm")
    if not timm.is_model(name.split(".")[0]):  # a name may carry a pretrained tag: resnet18.a1_in1k
        raise InputError(f"timm has no model {name!r}; see timm.list_models() (e.g. resnet18, convnext_atto, "
                         "efficientnet_b0, vit_tiny_patch16_224)")
    options = {"pretrained": download, "in_chans": in_channels, "num_classes": 0, **dict(model_options)}
    if drop_path_rate:
        options["drop_path_rate"] = drop_path_rate
    vit = is_vit(name)
    if vit:
        options.setdefault("dynamic_img_size", True)  # position embeddings interpolated to any input size
    model = timm.create_model(name, **options)
    if not hasattr(model, "forward_intermediates"):
        raise InputError(f"timm model {name!r} has no forward_intermediates(), which senolab reads its feature maps "
                         "with; choose another model (any ResNet, ConvNeXt, EfficientNet or ViT has it)")
    return model, vit


def is_vit(name: str) -> bool:
    """Whether timm's ``name`` is a plain VisionTransformer (built on the meta device: no
    memory, no download), as MAE and the ViT decoder need."""
    timm = require("timm")
    from timm.models.vision_transformer import VisionTransformer

    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, num_classes=0)
    return isinstance(model, VisionTransformer)


def load_backbone_weights(backbone: nn.Module, source: str | Path, in_channels: int) -> LoadReport:
    """Load the tensors of the local file ``source`` that fit ``backbone``; report the rest.

    A tensor fits when its name (after a known prefix is dropped) and shape match; the first
    conv of a 3-channel file is turned to ``in_channels`` with timm's ``adapt_input_conv``.
    A file where nothing fits is an InputError (another architecture, or not weights).
    """
    path = Path(source)
    state = _backbone_state(read_weights(path), path)
    own = backbone.state_dict()
    report = LoadReport(str(path))
    first_conv = f"{backbone.pretrained_cfg.get('first_conv', '')}.weight"
    usable = {}
    for key, tensor in state.items():
        if key not in own:
            report.unused.append(key)
            continue
        if key == first_conv and tensor.dim() == 4 and tensor.shape[1] != own[key].shape[1]:
            from timm.models import adapt_input_conv

            tensor = adapt_input_conv(in_channels, tensor)
            report.adapted.append(key)
        if tensor.shape != own[key].shape:
            report.mismatched.append(f"{key} {tuple(tensor.shape)} vs {tuple(own[key].shape)}")
            continue
        usable[key] = tensor
    report.loaded = sorted(usable)
    report.missing = [key for key in own if key not in usable and not _is_buffer_counter(key)]
    if not usable:
        raise InputError(f"pretrained weights {path}: none of its {len(state)} tensors fit this timm "
                         f"{backbone.__class__.__name__} (e.g. {_first(list(state), 3)}); is it another architecture?")
    backbone.load_state_dict(usable, strict=False)
    if report.partial and str(path) not in _REPORTED:
        _REPORTED.add(str(path))
        print(report.summary(), flush=True)
    return report


def read_weights(path: Path) -> Mapping[str, Any]:
    """A weights file's contents: safetensors by its suffix, else a torch file (weights_only)."""
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise InputError(f"pretrained weights {path}: no such file")
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise InputError(f"pretrained weights {path}: not a readable safetensors file ({err})") from None
    return load_checkpoint(path)


def _backbone_state(loaded: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a loaded file, unnested and without a known prefix."""
    while isinstance(loaded, Mapping) and any(isinstance(loaded.get(k), Mapping) for k in NESTING_KEYS):
        loaded = next(loaded[k] for k in NESTING_KEYS if isinstance(loaded.get(k), Mapping))
    if not isinstance(loaded, Mapping):
        raise InputError(f"pretrained weights {path}: expected a mapping of tensors, got {type(loaded).__name__}")
    state = {str(k): v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
    for prefix in KNOWN_PREFIXES:
        if any(k.startswith(prefix) for k in state):
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def _is_buffer_counter(key: str) -> bool:
    # BatchNorm's step counter: not a weight, absent from many published files
    return key.endswith("num_batches_tracked")


def _no_weight_decay(model: nn.Module) -> set[str]:
    names = getattr(model, "no_weight_decay", None)
    return set(names()) if callable(names) else set()


def _first(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f" ... ({len(items)} in all)" if len(items) > n else "")
