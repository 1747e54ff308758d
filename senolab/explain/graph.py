"""Node and edge attributions of a graph model through torch-geometric's Captum integration.

Works on any PyG model called as ``model(x, edge_index)`` (the population-graph fusion:
one node per case, edges between similar cases). The explanation says which node
features (N, F) and which edges (E,) the prediction of one node (or of the graph) used.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from senolab._optional import require
from senolab.explain.forward import evaluation_mode


@dataclass
class GraphAttributions:
    """``node_mask`` (N, F) feature attributions; ``edge_mask`` (E,) edge attributions;
    ``prediction``: the model output being explained."""

    node_mask: torch.Tensor
    edge_mask: torch.Tensor
    prediction: torch.Tensor


def graph_attributions(model: nn.Module, x: torch.Tensor, edge_index: torch.Tensor, index: int | torch.Tensor | None = None,
                       method: str = "IntegratedGradients", task_level: str = "node",
                       mode: str = "multiclass_classification", return_type: str = "raw",
                       **method_options) -> GraphAttributions:
    """Captum ``method`` (a name PyG's ``CaptumExplainer`` supports) on node features and edges.

    ``index``: the node(s) whose prediction is explained (node-level tasks); the target is
    the model's own prediction (PyG's ``explanation_type="model"``). ``task_level``,
    ``mode`` and ``return_type`` describe the model as PyG's ``ModelConfig`` does.
    """
    explain = require("torch_geometric.explain")
    if x.dim() != 2 or edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"expected x (N, F) and edge_index (2, E); got {tuple(x.shape)} and {tuple(edge_index.shape)}")
    explainer = explain.Explainer(
        model=model,
        algorithm=explain.CaptumExplainer(method, **method_options),
        explanation_type="model",
        node_mask_type="attributes",
        edge_mask_type="object",
        model_config=dict(mode=mode, task_level=task_level, return_type=return_type),
    )
    with evaluation_mode(model):
        explanation = explainer(x, edge_index, index=index)
    return GraphAttributions(explanation.node_mask.detach(), explanation.edge_mask.detach(),
                             explanation.prediction.detach())
