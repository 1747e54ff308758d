"""A trained model made ready for inference: BatchNorm folded into the convolutions before it.

At inference a BatchNorm layer is a fixed per-channel affine map, so it can be merged into
the weights and bias of the convolution (or linear layer) that feeds it: one layer fewer
per block, the same outputs up to float rounding. The folding itself is torch's
(``torch.fx.experimental.optimization.fuse``, which traces a module with torch.fx and
applies ``torch.nn.utils.fusion.fuse_conv_bn_eval`` / ``fuse_linear_bn_eval`` to every
conv->BN pair whose conv output feeds the BN only). A module torch.fx cannot trace as a
whole (the multi-task model takes a batch dict; encoders check shapes in Python) is folded
part by part: its children are tried in turn, down to the blocks that trace.

The folded model is for predicting only: its traced blocks are ``torch.fx.GraphModule``
copies, so layers other code points at by attribute (Grad-CAM's ``gradcam_layer``) may no
longer be found there; explain the unfolded model.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

# Modules with nothing to fold inside: never traced (a traced leaf only costs time).
_LEAVES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.ReLU, nn.Identity,
           nn.Dropout, nn.LayerNorm, nn.Embedding)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (in eval mode) with every foldable BatchNorm merged into its
    convolution or linear layer; ``model`` itself is left as it is."""
    folded = copy.deepcopy(model).eval()
    return _folded(folded)


def inference_model(model: nn.Module) -> nn.Module:
    """The model to predict with: BatchNorm folded, eval mode, gradients off for its parameters."""
    folded = fold_batchnorm(model)
    for parameter in folded.parameters():
        parameter.requires_grad_(False)
    return folded


def count_batchnorms(model: nn.Module) -> int:
    """BatchNorm layers still in ``model`` (what folding left: those not fed by a conv alone)."""
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _folded(module: nn.Module) -> nn.Module:
    """``module`` folded as one traced graph, or, where torch.fx cannot trace it, with each
    child folded in place (``module`` is a copy the caller owns)."""
    from torch.fx.experimental.optimization import fuse

    if isinstance(module, _LEAVES) or not any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                              for m in module.modules()):
        return module
    if not isinstance(module, (nn.ModuleList, nn.ModuleDict)):  # containers have no forward to trace
        try:
            return fuse(module, inplace=True)
        except Exception:  # noqa: BLE001 - torch.fx raises many kinds for untraceable Python; fold the parts
            pass
    for name, child in list(module.named_children()):
        setattr(module, name, _folded(child))  # a ModuleList's children are named "0", "1", ...
    return module


@torch.inference_mode()
def run(model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
    """``model(batch)`` without autograd bookkeeping (inference mode)."""
    return model(batch)
