"""A population graph (Parisot et al. 2018): one node per case, edges between similar cases.

Each node carries its image embedding and its tabular summary; edges join a case to its
``k`` most similar cases by metadata / radiomics (``edges: knn``: mean squared difference
over the features both cases have, categorical fields counting a mismatch as 1, each
modality weighing equally) or by shared categorical values (``edges: shared``: the
number of equal categorical fields and shared levels of set-valued fields). A case with
nothing in common with anyone (no metadata, as in BUSI) has no edges and is predicted
from its own features. Graph convolutions (``conv``: ``gcn``, ``sage``, ``gat``) from
torch-geometric, imported when the module is built.

The population is the labelled training cases: the module records their image
embeddings (detached) and tabular inputs as training batches pass through it, and
:func:`refresh_population` re-records them with the final model before evaluation.

Inductive (the default): a case being predicted receives edges from population nodes
only and sends none, so it cannot change any population node's representation, nor any
other evaluated case's prediction; in training, a case's own population node is not its
neighbour. Transductive (``transductive: true``): the evaluated cases join the graph as
full members, with edges in both directions among all nodes, so predictions depend on
which other cases are evaluated with them; results label it as transductive.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from senolab._optional import require
from senolab.cohorts.schema import Kind
from senolab.fusion.base import FUSIONS, Fusion, TabularBranch, require_tabular
from senolab.fusion.tabular import TabularInputs, batch_tensor, radiomics_present
from senolab.models.encoders import EncoderOutput
from senolab.registry import Registry

CONVS: Registry = Registry("graph convolution")
EDGE_RULES: Registry = Registry("graph edge rule")


@CONVS.register("gcn")
def gcn(dim: int, heads: int):
    return require("torch_geometric.nn").GCNConv(dim, dim)


@CONVS.register("sage")
def sage(dim: int, heads: int):
    return require("torch_geometric.nn").SAGEConv(dim, dim)


@CONVS.register("gat")
def gat(dim: int, heads: int):
    return require("torch_geometric.nn").GATConv(dim, dim // heads, heads=heads)


@dataclass
class Nodes:
    """Per-node inputs: image embedding, the batch's tabular tensors, case ids."""

    image: torch.Tensor
    meta_num: torch.Tensor
    meta_num_missing: torch.Tensor
    meta_cat: torch.Tensor
    radiomics: torch.Tensor
    case_ids: list[str]

    TENSORS = ("image", "meta_num", "meta_num_missing", "meta_cat", "radiomics")

    @classmethod
    def from_batch(cls, image: torch.Tensor, batch: Mapping) -> "Nodes":
        rows, device = image.shape[0], image.device
        case_ids = list(batch.get("case_id") or [f"#{i}" for i in range(rows)])
        return cls(
            image,
            batch_tensor(batch, "meta_num", rows, device, image.dtype),
            batch_tensor(batch, "meta_num_missing", rows, device, torch.bool).bool(),
            batch_tensor(batch, "meta_cat", rows, device, torch.long).long(),
            batch_tensor(batch, "radiomics", rows, device, image.dtype),
            case_ids,
        )

    def __len__(self) -> int:
        return self.image.shape[0]

    def as_batch(self) -> dict:
        return {name: getattr(self, name) for name in self.TENSORS[1:]}

    def select(self, rows: torch.Tensor) -> "Nodes":
        keep = rows.nonzero()[:, 0].tolist()
        return Nodes(*(getattr(self, n)[rows] for n in self.TENSORS), [self.case_ids[i] for i in keep])

    def to(self, device) -> "Nodes":
        return Nodes(*(getattr(self, n).to(device) for n in self.TENSORS), self.case_ids)

    def detached(self) -> "Nodes":
        return Nodes(*(getattr(self, n).detach() for n in self.TENSORS), list(self.case_ids))

    @staticmethod
    def cat(parts: Sequence["Nodes"]) -> "Nodes":
        parts = [p for p in parts if p is not None]
        if len(parts) == 1:
            return parts[0]
        tensors = [torch.cat([_widened(getattr(p, n), parts, n) for p in parts]) for n in Nodes.TENSORS]
        return Nodes(*tensors, [c for p in parts for c in p.case_ids])


def _widened(tensor: torch.Tensor, parts: Sequence[Nodes], name: str) -> torch.Tensor:
    """A zero-wide tabular tensor (a cohort without that modality) padded to the others' width."""
    width = max(getattr(p, name).shape[1] for p in parts)
    if tensor.shape[1] == width:
        return tensor
    if tensor.shape[1]:
        raise ValueError(f"graph fusion: {name!r} is {tensor.shape[1]} wide here and {width} elsewhere")
    fill = True if name == "meta_num_missing" else 0
    return torch.full((tensor.shape[0], width), fill, dtype=tensor.dtype, device=tensor.device)


# ------------------------------------------------------------------------- similarity


@dataclass
class Block:
    """One modality's columns for similarity: values, where present, and whether categorical."""

    values: torch.Tensor
    present: torch.Tensor
    categorical: bool = False


def similarity_blocks(nodes: Nodes, inputs: TabularInputs) -> list[Block]:
    """Metadata vectors, metadata categories and radiomics of ``nodes``, one block each."""
    blocks = []
    columns = [c for f in inputs.fields if f.num_slice is not None for c in range(*f.num_slice)]
    if columns:
        blocks.append(_vector_block(nodes.meta_num, nodes.meta_num_missing, columns))
    categorical = [f.cat_index for f in inputs.fields if f.cat_index is not None]
    if categorical:
        blocks.append(_category_block(nodes, categorical))
    if inputs.radiomics_features:
        values = nodes.radiomics
        if values.shape[1] == 0:
            values = torch.zeros(len(nodes), len(inputs.radiomics_features), device=nodes.image.device)
        present = radiomics_present(values)[:, None].expand_as(values)
        blocks.append(Block(torch.where(present, values, torch.zeros_like(values)), present))
    return blocks


def _category_block(nodes: Nodes, columns: list[int]) -> Block:
    if nodes.meta_cat.shape[1] == 0:
        codes = torch.zeros(len(nodes), len(columns), dtype=torch.long, device=nodes.image.device)
    else:
        codes = nodes.meta_cat[:, columns]
    return Block(codes, codes > 0, categorical=True)


def _vector_block(values: torch.Tensor, missing: torch.Tensor, columns: list[int]) -> Block:
    if values.shape[1] == 0:
        shape = (values.shape[0], len(columns))
        return Block(torch.zeros(shape, device=values.device), torch.zeros(shape, dtype=torch.bool, device=values.device))
    present = ~missing[:, columns]
    return Block(torch.where(present, values[:, columns], torch.zeros_like(values[:, columns])), present)


def _matches(a: Block, b: Block) -> torch.Tensor:
    """(Na, Nb) number of categorical columns where both cases have the same value."""
    same = torch.zeros(a.values.shape[0], b.values.shape[0], device=a.values.device)
    for j in range(a.values.shape[1]):
        same = same + ((a.values[:, j, None] == b.values[None, :, j]) & a.present[:, j, None] & b.present[None, :, j]).float()
    return same


def _pairwise_block(a: Block, b: Block) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean difference over co-present columns (squared for values, mismatch for categories), and their count."""
    pa, pb = a.present.float(), b.present.float()
    count = pa @ pb.T
    if a.categorical:
        diff = count - _matches(a, b)
    else:
        xa, xb = a.values.float() * pa, b.values.float() * pb
        diff = (xa**2) @ pb.T + pa @ (xb**2).T - 2 * xa @ xb.T
    return diff / count.clamp_min(1), count


@EDGE_RULES.register("knn")
def knn_distance(targets: Nodes, sources: Nodes, inputs: TabularInputs) -> torch.Tensor:
    """(targets, sources) mean over shared modalities of the per-modality distance; inf: nothing shared."""
    total = torch.zeros(len(targets), len(sources), device=targets.image.device)
    n_shared = torch.zeros_like(total)
    for a, b in zip(similarity_blocks(targets, inputs), similarity_blocks(sources, inputs)):
        distance, count = _pairwise_block(a, b)
        shared = count > 0
        total = total + torch.where(shared, distance, torch.zeros_like(distance))
        n_shared = n_shared + shared.float()
    return torch.where(n_shared > 0, total / n_shared.clamp_min(1), torch.full_like(total, float("inf")))


@EDGE_RULES.register("shared")
def shared_distance(targets: Nodes, sources: Nodes, inputs: TabularInputs) -> torch.Tensor:
    """Minus the number of equal categorical fields and shared set levels; inf when nothing is shared."""
    shared = torch.zeros(len(targets), len(sources), device=targets.image.device)
    categorical = [f.cat_index for f in inputs.fields if f.cat_index is not None]
    if categorical:
        shared = shared + _matches(_category_block(targets, categorical), _category_block(sources, categorical))
    levels = [c for f in inputs.fields if f.kind is Kind.MULTI for c in range(*f.num_slice)]
    if levels:
        a, b = (_vector_block(n.meta_num, n.meta_num_missing, levels) for n in (targets, sources))
        shared = shared + a.values @ b.values.T  # 0/1 indicators, zero where missing
    return torch.where(shared > 0, -shared, torch.full_like(shared, float("inf")))


def nearest_edges(distance: torch.Tensor, k: int, source_offset: int = 0, target_offset: int = 0) -> torch.Tensor:
    """(2, E) edges source -> target from each target's ``k`` nearest finite-distance sources."""
    if distance.numel() == 0:
        return torch.zeros(2, 0, dtype=torch.long, device=distance.device)
    k = min(k, distance.shape[1])
    values, sources = torch.topk(distance, k, dim=1, largest=False)
    targets = torch.arange(distance.shape[0], device=distance.device)[:, None].expand_as(sources)
    keep = torch.isfinite(values)
    return torch.stack([sources[keep] + source_offset, targets[keep] + target_offset])


def same_case(a: Sequence[str], b: Sequence[str], device) -> torch.Tensor:
    index = {c: i for i, c in enumerate(b)}
    mask = torch.zeros(len(a), len(b), dtype=torch.bool, device=device)
    for i, case in enumerate(a):
        if case in index:
            mask[i, index[case]] = True
    return mask


# ------------------------------------------------------------------------- the module


@FUSIONS.register("graph")
class GraphFusion(Fusion):
    """Population-graph fusion (see the module docstring).

    Options: ``conv`` (``gcn``, ``sage``, ``gat``), ``layers``, ``k`` neighbours, ``edges``
    (``knn`` or ``shared``), ``transductive`` (False), and the tabular options of
    :class:`~senolab.fusion.base.TabularBranch` (``dim``, ``heads``, ``dropout``, ...).
    """

    def __init__(self, image_dim: int, inputs: TabularInputs, num_classes: int = 2, conv: str = "sage",
                 layers: int = 2, k: int = 8, edges: str = "knn", transductive: bool = False, **tabular):
        super().__init__()
        require_tabular("graph", inputs)
        if k < 1:
            raise ValueError(f"graph fusion: k must be at least 1; got {k}")
        self.inputs, self.k, self.transductive = inputs, k, bool(transductive)
        self.edge_rule = EDGE_RULES.get(edges)
        self.tabular = TabularBranch(inputs, **tabular)
        dim = self.tabular.dim
        self.node_input = nn.Sequential(nn.Linear(image_dim + dim, dim), nn.GELU())
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(layers))
        self.convs = nn.ModuleList(CONVS.build(conv, dim, self.tabular.heads) for _ in range(layers))
        self.dropout = nn.Dropout(self.tabular.dropout)
        self.embedding_dim = dim
        self.population: Nodes | None = None

    # ----------------------------------------------------------------- population
    def clear(self) -> None:
        self.population = None

    @torch.no_grad()
    def record(self, image_embedding: torch.Tensor, batch: Mapping) -> None:
        """Add (or update) the labelled cases of ``batch`` in the population."""
        nodes = Nodes.from_batch(image_embedding.detach(), batch)
        labelled = batch.get("has_label")
        if labelled is None:
            return
        nodes = nodes.select(labelled.to(nodes.image.device).bool())
        if len(nodes) == 0:
            return
        if self.population is None:
            self.population = nodes.detached()
            return
        known = set(nodes.case_ids)
        kept = torch.tensor([c not in known for c in self.population.case_ids], device=self.population.image.device)
        self.population = Nodes.cat([self.population.select(kept), nodes.detached().to(self.population.image.device)])

    def get_extra_state(self) -> dict:
        if self.population is None:
            return {"case_ids": []}
        return {"case_ids": list(self.population.case_ids),
                **{n: getattr(self.population, n).cpu() for n in Nodes.TENSORS}}

    def set_extra_state(self, state: dict) -> None:
        if not state.get("case_ids"):
            self.population = None
            return
        self.population = Nodes(*(state[n] for n in Nodes.TENSORS), list(state["case_ids"]))

    # ----------------------------------------------------------------- forward
    def fuse(self, encoded: EncoderOutput, batch: Mapping) -> torch.Tensor:
        queries = Nodes.from_batch(encoded.embedding, batch)
        population = self.population.to(queries.image.device) if self.population is not None else None
        out = self.propagate(population, queries)[-len(queries):]
        if self.training:
            self.record(encoded.embedding, batch)
        return out

    def propagate(self, population: Nodes | None, queries: Nodes | None) -> torch.Tensor:
        """Node representations of ``[population, queries]`` after the graph layers (either may be None)."""
        nodes = Nodes.cat([population, queries])
        edges = self.graph_edges(population, queries)
        summary, _ = self.tabular(nodes.as_batch(), len(nodes), nodes.image.device)
        x = self.node_input(torch.cat([nodes.image, summary], 1))
        for norm, conv in zip(self.norms, self.convs):
            x = x + self.dropout(F.gelu(conv(norm(x), edges)))
        return x

    def graph_edges(self, population: Nodes | None, queries: Nodes) -> torch.Tensor:
        """(2, E) source -> target over ``[population, queries]`` (see the module docstring)."""
        if self.transductive:
            everyone = Nodes.cat([population, queries])
            return self._edges(everyone, everyone, 0, 0)
        if population is None:
            return torch.zeros(2, 0, dtype=torch.long, device=queries.image.device)
        edges = [self._edges(population, population, 0, 0)]
        if queries is not None:
            edges.append(self._edges(queries, population, 0, len(population)))
        return torch.cat(edges, 1)

    def _edges(self, targets: Nodes, sources: Nodes, source_offset: int, target_offset: int) -> torch.Tensor:
        distance = self.edge_rule(targets, sources, self.inputs)
        distance = distance.masked_fill(same_case(targets.case_ids, sources.case_ids, distance.device), float("inf"))
        return nearest_edges(distance, self.k, source_offset, target_offset)


@torch.no_grad()
def refresh_population(model: nn.Module, loader, device: torch.device | str = "cpu") -> int:
    """Re-record every graph fusion's population from ``loader`` with ``model`` in eval mode.

    Call it after training (on the training part, without augmentation) so the population
    holds the final encoder's embeddings. Returns the population size (0 without graph).
    """
    graphs = [m for m in model.modules() if isinstance(m, GraphFusion)]
    if not graphs:
        return 0
    model.eval()
    for graph in graphs:
        graph.clear()
    for batch in loader:
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        embedding = model.encoder(batch["image"]).embedding
        for graph in graphs:
            graph.record(embedding, batch)
    return len(graphs[0].population) if graphs[0].population is not None else 0
