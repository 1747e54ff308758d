"""Image attributions (Captum) of a senolab model, each with the shape of the input image.

Registry ``EXPLAINERS``: ``integrated_gradients``, ``gradcam`` (Layer Grad-CAM on the
encoder's ``gradcam_layer``, upsampled to the input), ``occlusion`` and ``saliency``.
Each explains a readout of the model output (``classification``: the logit of the target
class; ``segmentation``: the summed lesion logit), see :mod:`senolab.explain.forward`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from senolab._optional import require
from senolab.explain.forward import CaptumCall, captum_call, evaluation_mode, resolve_target
from senolab.registry import Registry

Explainer = Callable[..., torch.Tensor]
EXPLAINERS: Registry[Explainer] = Registry("explainer")


def _captum_attr():
    return require("captum.attr")


@EXPLAINERS.register("integrated_gradients")
def integrated_gradients(call: CaptumCall, model: nn.Module, target, *, n_steps: int = 32,
                         internal_batch_size: int = 64, baseline: float = 0.0) -> torch.Tensor:
    """Integrated Gradients from a constant image (black by default) to the case."""
    ig = _captum_attr().IntegratedGradients(call.forward)
    return ig.attribute(call.inputs[0], baselines=baseline, target=target,
                        additional_forward_args=call.additional_forward_args,
                        n_steps=n_steps, internal_batch_size=internal_batch_size)


@EXPLAINERS.register("saliency")
def saliency(call: CaptumCall, model: nn.Module, target) -> torch.Tensor:
    """Absolute input gradient (Simonyan et al. 2014)."""
    sal = _captum_attr().Saliency(call.forward)
    return sal.attribute(call.inputs[0], target=target, abs=True,
                         additional_forward_args=call.additional_forward_args)


@EXPLAINERS.register("occlusion")
def occlusion(call: CaptumCall, model: nn.Module, target, *, window_fraction: float = 0.125,
              baseline: float = 0.0, perturbations_per_eval: int = 16) -> torch.Tensor:
    """Output drop when a square patch (``window_fraction`` of the side) is blanked.

    Patches slide with half-window stride, so every pixel is covered by several windows.
    """
    image = call.inputs[0]
    channels, height, width = image.shape[1:]
    side = max(1, round(min(height, width) * window_fraction))
    stride = max(1, side // 2)
    occ = _captum_attr().Occlusion(call.forward)
    return occ.attribute(image, sliding_window_shapes=(channels, side, side), strides=(channels, stride, stride),
                         baselines=baseline, target=target,
                         additional_forward_args=call.additional_forward_args,
                         perturbations_per_eval=perturbations_per_eval)


@EXPLAINERS.register("gradcam")
def gradcam(call: CaptumCall, model: nn.Module, target, *, layer: str | None = None) -> torch.Tensor:
    """Layer Grad-CAM (positive part), bilinearly upsampled to the input and broadcast over channels.

    ``layer`` is the dotted name of a module of ``model`` (``model.get_submodule``);
    by default the encoder's ``gradcam_layer``. A name rather than a module object so that
    copies of the model (the randomisation check) find their own layer.
    """
    attr = _captum_attr()
    module = gradcam_module(model, layer)
    cam = attr.LayerGradCam(call.forward, module)
    maps = cam.attribute(call.inputs[0], target=target, additional_forward_args=call.additional_forward_args,
                         relu_attributions=True)
    image = call.inputs[0]
    if maps.dim() != 4:
        raise ValueError(f"Grad-CAM layer {layer or 'encoder.gradcam_layer'} must output (B, C, h, w) maps; "
                         f"got shape {tuple(maps.shape)}")
    upsampled = attr.LayerAttribution.interpolate(maps, tuple(image.shape[-2:]), interpolate_mode="bilinear")
    return upsampled.expand_as(image).contiguous()


def gradcam_module(model: nn.Module, layer: str | None) -> nn.Module:
    """The module Grad-CAM hooks: ``model.get_submodule(layer)`` or ``model.encoder.gradcam_layer``."""
    if layer is not None:
        return model.get_submodule(layer)
    encoder = getattr(model, "encoder", None)
    if encoder is None or not hasattr(encoder, "gradcam_layer"):
        raise AttributeError(
            f"{type(model).__name__} has no encoder.gradcam_layer; pass layer='<dotted module name>'"
        )
    return encoder.gradcam_layer


def attribute_image(model: nn.Module, batch: Mapping[str, object], method: str = "integrated_gradients",
                    readout: str = "classification", target: int | torch.Tensor | None = None,
                    **options) -> torch.Tensor:
    """Attributions of ``readout`` to ``batch["image"]``, shape (B, C, H, W) like the image.

    ``target`` (classification only): the class explained, one int or one per case;
    by default each case's predicted class. ``options`` go to the explainer
    (e.g. ``n_steps`` for Integrated Gradients, ``layer`` for Grad-CAM).
    The model runs in eval mode during the call and is restored afterwards.
    """
    explainer = EXPLAINERS.get(method)
    with evaluation_mode(model):
        target = resolve_target(model, batch, readout, target)
        call = captum_call(model, batch, ["image"], readout)
        attributions = explainer(call, model, target, **options)
    return attributions.detach()


@dataclass
class ImageExplanations:
    """Attributions of many cases with what is needed to check and draw them.

    ``image``, ``mask``, ``attribution``: (N, 1, H, W); ``has_mask`` (N,) bool;
    ``case_id`` and ``cohort``: one string per case.
    """

    image: torch.Tensor
    mask: torch.Tensor
    has_mask: torch.Tensor
    attribution: torch.Tensor
    case_id: list[str]
    cohort: list[str]

    def subset(self, cohort: str) -> "ImageExplanations":
        keep = [i for i, c in enumerate(self.cohort) if c == cohort]
        index = torch.tensor(keep, dtype=torch.long)
        return ImageExplanations(self.image[index], self.mask[index], self.has_mask[index],
                                 self.attribution[index], [self.case_id[i] for i in keep], [cohort] * len(keep))

    def cohorts(self) -> list[str]:
        return sorted(set(self.cohort))


def explain_images(model: nn.Module, batches: Iterable[Mapping[str, object]], method: str = "integrated_gradients",
                   readout: str = "classification", site_names: Sequence[str] | None = None,
                   max_cases: int | None = None, progress: bool = True, **options) -> ImageExplanations:
    """Attribute every case of ``batches`` (a DataLoader over the test cases, say).

    A case's cohort is ``site_names[batch["site"][i]]`` (the site index as text without
    ``site_names``). Stops after ``max_cases`` cases.
    """
    parts: dict[str, list] = {k: [] for k in ("image", "mask", "has_mask", "attribution", "case_id", "cohort")}
    seen = 0
    bar = tqdm(total=max_cases, desc=f"attributions ({method})", unit="case", disable=not progress)
    for batch in batches:
        if max_cases is not None and seen >= max_cases:
            break
        batch = _head(batch, None if max_cases is None else max_cases - seen)
        attributions = attribute_image(model, batch, method, readout, **options)
        n = attributions.shape[0]
        parts["image"].append(batch["image"].detach().cpu())
        parts["mask"].append(_batch_entry(batch, "mask", torch.zeros_like(batch["image"])).detach().cpu())
        parts["has_mask"].append(_batch_entry(batch, "has_mask", torch.zeros(n, dtype=torch.bool)).cpu())
        parts["attribution"].append(attributions.cpu())
        parts["case_id"] += list(batch.get("case_id", [str(seen + i) for i in range(n)]))
        sites = _batch_entry(batch, "site", torch.zeros(n, dtype=torch.long)).tolist()
        parts["cohort"] += [site_names[s] if site_names is not None else str(s) for s in sites]
        seen += n
        bar.update(n)
    bar.close()
    if not seen:
        raise ValueError("explain_images: the batches held no case")
    return ImageExplanations(
        image=torch.cat(parts["image"]), mask=torch.cat(parts["mask"]), has_mask=torch.cat(parts["has_mask"]),
        attribution=torch.cat(parts["attribution"]), case_id=parts["case_id"], cohort=parts["cohort"],
    )


def _batch_entry(batch: Mapping[str, object], key: str, default: torch.Tensor) -> torch.Tensor:
    value = batch.get(key)
    return default if value is None else value


def _head(batch: Mapping[str, object], n: int | None) -> dict[str, object]:
    """The first ``n`` cases of a batch (all of them for None)."""
    if n is None:
        return dict(batch)
    return {k: v[:n] if isinstance(v, (torch.Tensor, list)) else v for k, v in batch.items()}
