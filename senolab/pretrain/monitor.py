"""The standard SSL monitor: k-NN classification in the embedding space.

It reads the labelled validation part, which pretraining itself never reads: each case is
classified by a cosine-similarity-weighted vote of its ``k`` nearest other cases (those of
the same patient left out, so a second image of one lesion cannot vote). It reports the
accuracy and the AUC of the malignant vote share (threshold-free, so a class imbalance
does not flatter it). Only the embeddings are used; nothing is trained on the labels.
"""
from __future__ import annotations

import numpy as np
import torch


class KnnMonitor:
    """``monitor(embed)`` -> ``{"knn_acc", "knn_auc"}`` on a labelled loader's cases;
    ``patient_of`` maps case_id -> patient_id (the groups left out of each vote)."""

    def __init__(self, loader, patient_of: dict[str, str], k: int, positive: int = 1):
        self.loader, self.patient_of, self.k, self.positive = loader, patient_of, k, positive

    @torch.no_grad()
    def __call__(self, embed, device: torch.device) -> dict[str, float]:
        features, labels, case_ids = [], [], []
        for batch in self.loader:
            keep = batch["has_label"].numpy().astype(bool)
            if keep.any():
                features.append(embed(batch["image"][keep].to(device)).float().cpu().numpy())
                labels.append(batch["label"][keep].numpy())
                case_ids += [cid for cid, k in zip(batch["case_id"], keep) if k]
        if not features:
            return knn_metrics(np.zeros((0, 1)), np.zeros(0, int), np.zeros(0, object), self.k)
        groups = np.array([self.patient_of.get(c, c) for c in case_ids], dtype=object)
        return knn_metrics(np.concatenate(features), np.concatenate(labels), groups, self.k, self.positive)


def knn_scores(features: np.ndarray, labels: np.ndarray, groups: np.ndarray, k: int,
               positive: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-group-out k-NN: (predicted label, share of the positive class in the
    weighted vote) per case."""
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    similarity = unit @ unit.T
    similarity[groups[:, None] == groups[None, :]] = -np.inf  # itself and its patient's other images
    classes = np.unique(labels)
    predicted, share = np.zeros(len(labels), labels.dtype), np.zeros(len(labels))
    for i, row in enumerate(similarity):
        order = np.argsort(-row)[:k]
        order = order[np.isfinite(row[order])]
        weights = np.exp(row[order] / 0.1)  # temperature 0.1, as in the usual SSL k-NN monitor
        votes = {c: weights[labels[order] == c].sum() for c in classes}
        predicted[i] = max(votes, key=votes.get) if len(order) else classes[0]
        share[i] = votes.get(positive, 0.0) / max(weights.sum(), 1e-12)
    return predicted, share


def knn_metrics(features: np.ndarray, labels: np.ndarray, groups: np.ndarray, k: int,
                positive: int = 1) -> dict[str, float]:
    """``knn_acc`` and ``knn_auc`` (NaN when one class is absent) of the embeddings."""
    if len(labels) < 3:
        return {"knn_acc": float("nan"), "knn_auc": float("nan")}
    predicted, share = knn_scores(features, labels, groups, k, positive)
    out = {"knn_acc": float((predicted == labels).mean()), "knn_auc": float("nan")}
    binary = labels == positive
    if 0 < binary.sum() < len(binary):
        from sklearn.metrics import roc_auc_score

        out["knn_auc"] = float(roc_auc_score(binary, share))
    return out
