"""senolab.explain on small real models: shapes, pointing game, randomisation, tabular and graph.

The image model is a tiny CNN trained for a few seconds on synthetic images whose class
is decided only inside a lesion disk (bright = class 1, dark = class 0, on noise), so a
faithful explanation must concentrate inside the lesion mask.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from senolab.cohorts.schema import Kind
from senolab.cohorts.tabular import FieldSpec
from senolab.explain import (
    EXPLAINERS,
    READOUTS,
    attribute_image,
    cohort_case_grids,
    explain_images,
    feature_ablation,
    graph_attributions,
    mean_abs_by_cohort,
    pointing_game,
    randomisation_check,
    tabular_bar_chart,
    tabular_groups,
    token_integrated_gradients,
    topk_stability,
)
from senolab.explain.checks import chance_share, in_mask_share
from senolab.explain.tabular import FeatureGroups

SIZE = 32


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny convolutions are fastest on one thread, and two xdist workers share two cores.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def lesion_batch(n: int, seed: int) -> dict:
    """Noise images with one lesion disk each; the disk's sign is the class."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    images = rng.normal(0, 0.3, (n, 1, SIZE, SIZE)).astype(np.float32)
    masks = np.zeros_like(images)
    labels = rng.integers(0, 2, n)
    for i in range(n):
        cy, cx = rng.integers(8, SIZE - 8, 2)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= 16
        masks[i, 0][disk] = 1
        images[i, 0][disk] += 1.0 if labels[i] else -1.0
    return {
        "image": torch.from_numpy(images),
        "mask": torch.from_numpy(masks),
        "has_mask": torch.ones(n, dtype=torch.bool),
        "label": torch.from_numpy(labels).long(),
        "site": torch.from_numpy(rng.integers(0, 2, n)).long(),
        "case_id": [f"s{seed}_{i}" for i in range(n)],
    }


class TinyEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.down = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())

    @property
    def gradcam_layer(self) -> nn.Module:
        return self.down


class TinyModel(nn.Module):
    """The senolab model contract in miniature: batch dict in, output dict out."""

    def __init__(self):
        super().__init__()
        self.encoder = TinyEncoder()
        self.classifier = nn.Linear(16, 2)
        self.seg_head = nn.Conv2d(24, 1, 1)

    def forward(self, batch):
        fine = self.encoder.stem(batch["image"])
        deep = self.encoder.down(fine)
        embedding = deep.mean((2, 3))
        seg = self.seg_head(torch.cat([fine, F.interpolate(deep, scale_factor=2)], 1))
        return {"logits": self.classifier(embedding), "seg_logits": seg, "embedding": embedding}


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    data = lesion_batch(384, seed=0)
    model = TinyModel()
    optimiser = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(150):
        idx = torch.randint(0, 384, (32,))
        batch = {k: v[idx] for k, v in data.items() if k != "case_id"}
        out = model(batch)
        loss = F.cross_entropy(out["logits"], batch["label"]) + F.binary_cross_entropy_with_logits(
            out["seg_logits"], batch["mask"])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    test = lesion_batch(16, seed=1)
    with torch.no_grad():
        accuracy = (model(test)["logits"].argmax(1) == test["label"]).float().mean().item()
    assert accuracy > 0.9, f"the tiny model did not learn the lesion task (accuracy {accuracy:.2f})"
    return model, test


@pytest.mark.parametrize("readout", READOUTS.names())
@pytest.mark.parametrize("method", EXPLAINERS.names())
def test_attributions_have_the_input_shape(trained, method, readout):
    model, test = trained
    batch = {k: v[:4] for k, v in test.items()}
    image_before = batch["image"].clone()
    attributions = attribute_image(model, batch, method, readout)
    assert attributions.shape == batch["image"].shape
    assert torch.isfinite(attributions).all() and attributions.abs().sum() > 0
    assert torch.equal(batch["image"], image_before) and not batch["image"].requires_grad


def test_explainer_names_are_the_four_methods():
    assert EXPLAINERS.names() == ["gradcam", "integrated_gradients", "occlusion", "saliency"]
    with pytest.raises(KeyError, match="known: gradcam"):
        EXPLAINERS.get("lime")


@pytest.mark.parametrize("method", ["integrated_gradients", "occlusion", "gradcam"])
def test_attribution_concentrates_inside_the_lesion(trained, method):
    model, test = trained
    explanations = explain_images(model, [test], method, site_names=["siteA", "siteB"], progress=False)
    table = pointing_game(explanations)
    assert sorted(table["cohort"]) == sorted(set(explanations.cohort))
    assert table["n_cases"].sum() == 16
    # The disk covers ~5% of the image; a faithful map puts several times that inside.
    assert (table["in_mask_share"] > 3 * table["chance_share"]).all(), table
    overall_share = in_mask_share(explanations.attribution, explanations.mask).mean()
    assert overall_share > 3 * chance_share(explanations.mask).mean()


def test_in_mask_share_counts_positive_energy():
    attribution = torch.zeros(2, 1, 4, 4)
    attribution[0, 0, 0, 0] = 3.0  # inside
    attribution[0, 0, 3, 3] = 1.0  # outside
    attribution[0, 0, 2, 2] = -5.0  # negative evidence is not energy
    mask = torch.zeros(2, 1, 4, 4)
    mask[:, 0, :2, :2] = 1
    share = in_mask_share(attribution, mask)
    assert share.tolist() == pytest.approx([0.75, 0.0])
    assert chance_share(mask).tolist() == pytest.approx([0.25, 0.25])


@pytest.mark.parametrize("method", ["saliency", "gradcam"])
def test_randomised_weights_change_the_attributions(trained, method):
    model, test = trained
    batch = {k: v[:8] for k, v in test.items()}
    weights_before = {k: v.clone() for k, v in model.state_dict().items()}
    table = randomisation_check(model, batch, method, steps=4, progress=False)
    assert table.loc[0, "spearman_mean"] == pytest.approx(1.0)  # same model, same map
    assert table["n_layers"].iloc[-1] == 5  # the last step re-initialises every layer
    assert table["spearman_mean"].iloc[-1] < 0.5, table
    for key, value in model.state_dict().items():  # the trained model is left untouched
        assert torch.equal(value, weights_before[key])


def test_case_grids_and_bar_chart_are_written(trained, tmp_path):
    model, test = trained
    explanations = explain_images(model, [test], "gradcam", site_names=["siteA", "siteB"], max_cases=10,
                                  progress=False)
    assert len(explanations.case_id) == 10
    paths = cohort_case_grids(explanations, tmp_path, max_cases=3)
    assert set(paths) == set(explanations.cohort)
    for path in paths.values():
        with Image.open(path) as png:
            assert png.size[0] > 200 and png.size[1] > 200
    importance = mean_abs_by_cohort(pd.DataFrame({"age": [1.0, -2.0, 3.0], "glcm": [0.0, 1.0, 1.0]}), ["a", "b", "a"])
    assert importance.loc["a", "age"] == pytest.approx(2.0) and importance.loc["b", "age"] == pytest.approx(2.0)
    with Image.open(tabular_bar_chart(importance, tmp_path / "bars.png")) as png:
        assert png.size[0] > 200


# --- tabular -------------------------------------------------------------------------

FIELDS = [
    FieldSpec("age", Kind.NUMERIC, (), num_slice=(0, 1)),
    FieldSpec("history", Kind.MULTI, ("family", "prior"), num_slice=(1, 3)),
    FieldSpec("scanner", Kind.CATEGORICAL, ("a", "b", "c"), cat_index=0),
]
RADIOMICS = ["original_firstorder_Mean", "original_firstorder_Energy", "original_glcm_Contrast"]


class InteractionModel(nn.Module):
    """Logit of class 1 = age (if present) + history_family * history_prior
    + 3 [scanner == 2] + firstorder_Mean * firstorder_Energy; glcm is ignored."""

    def forward(self, batch):
        num, missing = batch["meta_num"], batch["meta_num_missing"]
        age = num[:, 0] * (~missing[:, 0]).float()
        logit = (age + num[:, 1] * num[:, 2] + 3.0 * (batch["meta_cat"][:, 0] == 2).float()
                 + batch["radiomics"][:, 0] * batch["radiomics"][:, 1])
        return {"logits": torch.stack([torch.zeros_like(logit), logit], 1)}


def tabular_batch() -> dict:
    return {
        "meta_num": torch.tensor([[2.0, 1.0, 3.0], [5.0, -1.0, 2.0]]),
        "meta_num_missing": torch.tensor([[False, False, False], [True, False, False]]),
        "meta_cat": torch.tensor([[2], [1]]),
        "radiomics": torch.tensor([[1.5, 2.0, 9.0], [-1.0, 4.0, 9.0]]),
        "case_id": ["p1", "p2"],
    }


def test_feature_groups_follow_fields_and_radiomics_classes():
    groups = tabular_groups(FIELDS, RADIOMICS)
    assert groups.names == ["age", "history", "scanner", "radiomics:firstorder", "radiomics:glcm"]
    assert groups.groups["history"] == {"meta_num": (1, 2), "meta_num_missing": (1, 2)}
    assert groups.groups["radiomics:firstorder"] == {"radiomics": (0, 1)}
    wavelet = tabular_groups([], ["wavelet-LH_glszm_ZoneEntropy", "original_glszm_ZoneEntropy"])
    assert wavelet.groups == {"radiomics:glszm": {"radiomics": (0, 1)}}
    with pytest.raises(ValueError, match="radiomics column 'volume'"):
        tabular_groups([], ["volume"])


def test_feature_ablation_removes_each_group_as_a_whole():
    batch = tabular_batch()
    table = feature_ablation(InteractionModel(), batch, tabular_groups(FIELDS, RADIOMICS), target=1)
    assert list(table.index) == ["p1", "p2"]
    # Each group's attribution is the logit it contributes when removed together:
    # a product of two columns in one group counts once (separately it would count twice),
    # age is 0 when already missing, the ignored glcm class gets exactly 0.
    expected = pd.DataFrame(
        {"age": [2.0, 0.0], "history": [3.0, -2.0], "scanner": [3.0, 0.0],
         "radiomics:firstorder": [3.0, -4.0], "radiomics:glcm": [0.0, 0.0]},
        index=pd.Index(["p1", "p2"], name="case_id"),
    )
    pd.testing.assert_frame_equal(table, expected, check_dtype=False)


def test_feature_groups_must_cover_every_column_once():
    batch = tabular_batch()
    partial = FeatureGroups({"age": {"meta_num": (0,)}})
    with pytest.raises(ValueError, match=r"meta_num columns \[1, 2\] belong to no feature group"):
        feature_ablation(InteractionModel(), batch, partial)
    overlapping = FeatureGroups({"a": {"radiomics": (0, 1)}, "b": {"radiomics": (1, 2)}})
    with pytest.raises(ValueError, match=r"feature group 'b': radiomics columns \[1\] already belong"):
        feature_ablation(InteractionModel(), batch, overlapping)


class TokenModel(nn.Module):
    """One token per numeric column, categorical column and radiomics feature."""

    def __init__(self, n_num=3, n_levels=4, n_rad=3, dim=8):
        super().__init__()
        self.tokens = TabularTokens(n_num, n_levels, n_rad, dim)
        self.head = nn.Sequential(nn.Linear(dim, 16), nn.Tanh(), nn.Linear(16, 2))

    def forward(self, batch):
        tokens = self.tokens(batch["meta_num"], batch["meta_num_missing"], batch["meta_cat"], batch["radiomics"])
        return {"logits": self.head(tokens.mean(1)), "tokens": tokens}


class TabularTokens(nn.Module):
    def __init__(self, n_num, n_levels, n_rad, dim):
        super().__init__()
        self.num = nn.Parameter(torch.randn(n_num, dim))
        self.missing = nn.Parameter(torch.randn(n_num, dim))
        self.cat = nn.Embedding(n_levels, dim)
        self.rad = nn.Parameter(torch.randn(n_rad, dim))

    def forward(self, num, missing, cat, rad):
        num_tokens = torch.where(missing[..., None], self.missing, num[..., None] * self.num)
        return torch.cat([num_tokens, self.cat(cat), rad[..., None] * self.rad], 1)


def test_token_integrated_gradients_one_value_per_token_and_complete():
    torch.manual_seed(0)
    model, batch = TokenModel(), tabular_batch()
    result = token_integrated_gradients(model, batch, layer="tokens")
    assert result.values.shape == (2, 3 + 1 + 3)
    # Completeness: token attributions add up to f(case) - f(all-absent case).
    assert result.delta.abs().max() < 1e-3 * result.values.abs().sum(1).max()
    with pytest.raises(ValueError, match="must output token embeddings"):
        token_integrated_gradients(model, batch, layer="head.1")


def test_topk_stability_between_folds():
    same = pd.DataFrame([[5, 4, 3, 2, 1], [10, 8, 6, 4, 2], [1.0, 0.9, 0.8, 0.7, 0.6]])
    assert topk_stability(same, k=2) == {"k": 2, "n_folds": 3, "topk_jaccard": 1.0,
                                         "kendall_tau": pytest.approx(1.0)}
    reversed_ = pd.DataFrame([[5, 4, 3, 2, 1], [1, 2, 3, 4, 5]])
    result = topk_stability(reversed_, k=2)
    assert result["topk_jaccard"] == 0.0 and result["kendall_tau"] == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="at least two folds"):
        topk_stability(same.head(1))


# --- graph ---------------------------------------------------------------------------

def test_graph_explanation_node_and_edge_masks():
    gnn = pytest.importorskip("torch_geometric.nn")

    class GCN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = gnn.GCNConv(4, 8), gnn.GCNConv(8, 3)

        def forward(self, x, edge_index):
            return self.conv2(self.conv1(x, edge_index).relu(), edge_index)

    torch.manual_seed(0)
    n = 10
    chain = torch.tensor([[i, i + 1] for i in range(n - 1)]).T
    edge_index = torch.cat([chain, chain.flip(0)], 1)  # undirected path 0-1-...-9
    x = torch.randn(n, 4)
    result = graph_attributions(GCN(), x, edge_index, index=0)
    assert result.node_mask.shape == (n, 4)
    assert result.edge_mask.shape == (edge_index.shape[1],)
    # Two GCN layers see two hops: nodes 0..2 matter for node 0, nodes 3.. cannot.
    per_node = result.node_mask.abs().sum(1)
    assert (per_node[:3] > 0).all() and (per_node[3:] == 0).all()


def test_figure_helpers_leave_the_matplotlib_backend_alone(tmp_path):
    """A notebook's inline backend must survive senolab's figures: they draw on bare Figures."""
    script = f"""
import matplotlib, pandas as pd
matplotlib.use("pdf")
from senolab.explain.figures import tabular_bar_chart
from senolab.runners.ablation import plot_ablation
tabular_bar_chart(pd.DataFrame({{"age": [0.3], "margin": [0.1]}}, index=["breast"]), {str(tmp_path / "bars.png")!r})
table = pd.DataFrame({{"fusion": ["image_only", "concat"], "method": ["image_only", "concat+metadata"],
                      "auc": [0.7, 0.8], "auc_lo": [0.6, 0.7], "auc_hi": [0.8, 0.9]}})
plot_ablation(table, {str(tmp_path / "ablation.png")!r}, "check")
print(matplotlib.get_backend())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "pdf"
    assert (tmp_path / "bars.png").stat().st_size > 0 and (tmp_path / "ablation.png").stat().st_size > 0
