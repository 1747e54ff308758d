"""Running a trained model over a loader into the per-case prediction table.

One row per case: identifiers (case_id, patient_id, site, cohort), the true label, class
probabilities, and — where the model segments — per-case Dice, IoU, HD95 and box IoU
computed at the model's input resolution (HD95 in mm when the pixel spacing is known,
converted through the letterbox scale). The evaluation package turns this table into
aggregates with confidence intervals.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from senolab.engine.data import PreparedData
from senolab.evaluation import box_iou, segmentation_case_metrics
from senolab.evaluation.segmentation import LESION_COLUMN


@torch.no_grad()
def predict(model: torch.nn.Module, loader: DataLoader, data: PreparedData, device: torch.device | str = "cpu",
            harmonise: Callable[[dict], dict] | None = None) -> pd.DataFrame:
    model.eval()
    info = data.cohort.table.set_index("case_id")
    rows = []
    for batch in loader:
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        if harmonise is not None:
            batch = harmonise(batch)
        out = model(batch)
        rows.extend(_case_rows(batch, out, data, info))
    return pd.DataFrame(rows)


def _case_rows(batch: dict, out: dict, data: PreparedData, info: pd.DataFrame) -> list[dict]:
    n = len(batch["case_id"])
    probs = torch.softmax(out["logits"], 1).cpu().numpy() if "logits" in out else None
    seg = (out["seg_logits"] > 0).cpu().numpy()[:, 0] if "seg_logits" in out else None
    boxes = out["bbox"].cpu().numpy() if "bbox" in out else None
    rows = []
    for i in range(n):
        case_id = batch["case_id"][i]
        meta = info.loc[case_id]
        # label NaN: outside the task's classes (a normal image in a benign/malignant task);
        # evaluation leaves such cases out of classification metrics but keeps them for
        # segmentation (its lesion-free false-positive rate)
        has_label = bool(batch["has_label"][i])
        row = {"case_id": case_id, "patient_id": meta["patient_id"], "cohort": meta["cohort"], "site": meta["site"],
               "label_name": meta["label"], "label": float(batch["label"][i]) if has_label else float("nan")}
        if probs is not None:
            row.update({f"prob_{c}": float(p) for c, p in zip(data.classes, probs[i])})
            row["score"] = float(probs[i][data.classes.index("malignant")])
        if seg is not None:
            truth = batch["mask"][i, 0].cpu().numpy() > 0.5
            spacing = float(batch["spacing_mm"][i])
            spacing = spacing if np.isfinite(spacing) else None
            row.update(_segmentation_columns(seg[i], truth, spacing, meta))
        if boxes is not None:
            has_box = bool(batch["has_bbox"][i])
            row["box_iou"] = float(box_iou(boxes[i], batch["bbox"][i].cpu().numpy())) if has_box else float("nan")
        rows.append(row)
    return rows


# Per-case metric columns that compare against something other than a drawn outline
# (schema.MASK_KINDS): Dice against a circle is an overlap with an approximation, reported
# apart so that it is never read as a segmentation result.
CIRCLE_COLUMNS = {"dice": "dice_vs_circle", "iou": "iou_vs_circle"}
OUTLINE_ONLY = ("dice", "iou", "hd95_px", "hd95_mm")


def _segmentation_columns(pred: np.ndarray, truth: np.ndarray, spacing: float | None, meta: pd.Series) -> dict:
    """The segmentation columns of one case, by how its lesions are known (``mask_kind``)."""
    metrics = segmentation_case_metrics(pred, truth, spacing)
    kind = meta["mask_kind"]
    if kind == "outline":
        return metrics
    if kind == "circle":
        renamed = {CIRCLE_COLUMNS[k]: metrics[k] for k in CIRCLE_COLUMNS}
        return {**metrics, **renamed, **dict.fromkeys(OUTLINE_ONLY, float("nan"))}
    # a box or an unlocated lesion: no mask to compare with; the label says whether a lesion is there
    metrics[LESION_COLUMN] = meta["label"] != "normal" or bool(meta["lesion_bboxes"])
    return {**metrics, **dict.fromkeys(OUTLINE_ONLY, float("nan"))}


def validation_score(table: pd.DataFrame, tasks) -> dict:
    """Validation AUC and Dice, and their mean over enabled heads (the early-stopping score)."""
    from sklearn.metrics import roc_auc_score

    metrics = {}
    labelled = table[table["label"].notna()]
    malignant = (labelled["label_name"] == "malignant").to_numpy()
    if "cls" in tasks and 0 < malignant.sum() < len(malignant):
        # malignant against the rest, whether the task has two classes or three
        metrics["val_auc"] = float(roc_auc_score(malignant.astype(int), labelled["score"].to_numpy()))
    if "seg" in tasks and "dice" in table:
        # cases annotated by circles (mini-MIAS) have only their overlap with the circle:
        # good enough to choose an epoch by, never reported as Dice
        dice = table["dice"].fillna(table["dice_vs_circle"]) if "dice_vs_circle" in table else table["dice"]
        metrics["val_dice"] = float(dice.dropna().mean())
    values = [v for v in metrics.values() if np.isfinite(v)]
    metrics["val_score"] = float(np.mean(values)) if values else float("nan")
    return metrics
