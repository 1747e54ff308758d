"""Task losses and the per-batch multi-task loss dict.

Partial labels: each task averages only over the cases that can contribute to it
(``has_label`` for ``cls``, ``has_mask`` for ``seg``, ``has_bbox`` for ``box``). A task with
no contributing case in the batch, or whose head the model does not have, is *omitted*
from the dict (not given a zero): a zero would still move the balancers (uncertainty
weighting would shrink that task's log-variance, GradNorm would see a zero gradient), so
balancers combine exactly the tasks present in a batch.

Segmentation: BCE over every pixel of every image with a mask (so lesion-free images
teach "no lesion"), plus soft Dice over the images that have lesion pixels only: Dice of
an empty target is undefined and its smoothed value would dominate the mean, the same
reason evaluation does not average Dice over lesion-free images.

The options (focal gamma, class weights, the terms' weights) are one
:class:`~senolab.models.loss_config.LossConfig`, the ``loss:`` section of an experiment YAML.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch.nn import functional as F

from senolab.models.loss_config import LossConfig
from senolab.registry import Registry


def focal_loss(
    logits: torch.Tensor, target: torch.Tensor, gamma: float = 0.0, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Class-weighted focal loss, ``-w_y (1 - p_y)^gamma log p_y``, weighted mean over cases.

    The weighted mean divides by the sum of the cases' class weights, as
    ``F.cross_entropy(weight=...)`` does, so ``gamma=0`` is exactly that cross-entropy.
    """
    log_p = F.log_softmax(logits, dim=1).gather(1, target[:, None])[:, 0]
    # The clamp keeps the gradient of (1 - p)^gamma finite when p rounds to 1.
    modulating = (1 - log_p.exp()).clamp_min(1e-6).pow(gamma)
    case_weight = torch.ones_like(log_p) if weight is None else weight.to(log_p)[target]
    return (case_weight * modulating * -log_p).sum() / case_weight.sum()


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per image, averaged over images; logits and target are (N, 1, H, W)."""
    prob = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1)
    overlap = (prob * target).sum(1)
    dice = (2 * overlap + smooth) / (prob.sum(1) + target.sum(1) + smooth)
    return (1 - dice).mean()


def generalized_box_iou(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Elementwise GIoU (Rezatofighi et al. 2019) of (N, 4) xyxy boxes -> (N,) in [-1, 1]."""
    area_a = (a[:, 2] - a[:, 0]).clamp_min(0) * (a[:, 3] - a[:, 1]).clamp_min(0)
    area_b = (b[:, 2] - b[:, 0]).clamp_min(0) * (b[:, 3] - b[:, 1]).clamp_min(0)
    inter_wh = (torch.minimum(a[:, 2:], b[:, 2:]) - torch.maximum(a[:, :2], b[:, :2])).clamp_min(0)
    inter = inter_wh[:, 0] * inter_wh[:, 1]
    union = area_a + area_b - inter
    hull_wh = torch.maximum(a[:, 2:], b[:, 2:]) - torch.minimum(a[:, :2], b[:, :2])
    hull = hull_wh[:, 0] * hull_wh[:, 1]
    return inter / (union + eps) - (hull - union) / (hull + eps)


def classification_loss(logits: torch.Tensor, label: torch.Tensor, config: LossConfig) -> torch.Tensor:
    n_classes = logits.shape[1]
    if label.min() < 0 or label.max() >= n_classes:
        raise ValueError(f"batch 'label' must lie in [0, {n_classes}) for {n_classes} classes; got {label.tolist()}")
    weight = None
    if config.class_weights is not None:
        if len(config.class_weights) != n_classes:
            raise ValueError(
                f"class_weights has {len(config.class_weights)} entries but the model has {n_classes} classes"
            )
        weight = torch.as_tensor(config.class_weights, dtype=logits.dtype, device=logits.device)
    return focal_loss(logits, label.long(), config.focal_gamma, weight)


def segmentation_loss(seg_logits: torch.Tensor, mask: torch.Tensor, config: LossConfig) -> torch.Tensor:
    mask = mask.to(seg_logits)
    loss = config.bce_weight * F.binary_cross_entropy_with_logits(seg_logits, mask)
    has_lesion = mask.flatten(1).sum(1) > 0
    if has_lesion.any():
        loss = loss + config.dice_weight * soft_dice_loss(seg_logits[has_lesion], mask[has_lesion])
    return loss


def box_loss(bbox: torch.Tensor, target: torch.Tensor, config: LossConfig) -> torch.Tensor:
    target = target.to(bbox)
    giou = generalized_box_iou(bbox, target)
    return config.l1_weight * F.l1_loss(bbox, target) + config.giou_weight * (1 - giou).mean()


@dataclass(frozen=True)
class TaskLoss:
    """Which output a task's loss reads, its target, the flag of cases that can contribute."""

    output_key: str
    target_key: str
    flag_key: str
    compute: Callable[[torch.Tensor, torch.Tensor, LossConfig], torch.Tensor]


TASK_LOSSES: Registry = Registry("task loss")
TASK_LOSSES.register("cls")(TaskLoss("logits", "label", "has_label", classification_loss))
TASK_LOSSES.register("seg")(TaskLoss("seg_logits", "mask", "has_mask", segmentation_loss))
TASK_LOSSES.register("box")(TaskLoss("bbox", "bbox", "has_bbox", box_loss))


def multitask_losses(
    outputs: Mapping[str, torch.Tensor], batch: Mapping, config: LossConfig | None = None
) -> dict[str, torch.Tensor]:
    """Per-task losses of a batch: ``{"cls": ..., "seg": ..., "box": ...}``.

    Only tasks whose output is in ``outputs`` and that have at least one contributing
    case in ``batch`` appear (see the module docstring).
    """
    config = config or LossConfig()
    losses = {}
    for name in TASK_LOSSES:
        task = TASK_LOSSES.get(name)
        if task.output_key not in outputs:
            continue
        rows = _flag(batch, task.flag_key, name).to(outputs[task.output_key].device)
        if rows.any():
            target = _field(batch, task.target_key, name)
            losses[name] = task.compute(outputs[task.output_key][rows], target.to(rows.device)[rows], config)
    return losses


def _field(batch: Mapping, key: str, task: str) -> torch.Tensor:
    if key not in batch:
        raise KeyError(f"the batch has no {key!r}, which the {task!r} loss needs")
    return batch[key]


def _flag(batch: Mapping, key: str, task: str) -> torch.Tensor:
    flag = _field(batch, key, task)
    if flag.dtype != torch.bool or flag.dim() != 1:
        raise ValueError(f"batch {key!r} must be a (B,) bool tensor; got {flag.dtype} of shape {tuple(flag.shape)}")
    return flag
