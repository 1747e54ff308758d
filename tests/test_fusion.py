"""Fusion modules: contract, missing-feature masking, missing modalities, inductive graph, outcome opt-in."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from senolab.cohorts.schema import Column, Kind
from senolab.cohorts.tabular import MetadataEncoder, OutcomeInputError
from senolab.fusion import FUSIONS, TabularInputs, build_fusion
from senolab.fusion.graph import GraphFusion, Nodes
from senolab.models import MultiTaskModel, build_encoder

COLUMNS = {
    "age": Column("age", Kind.NUMERIC),
    "density": Column("density", Kind.ORDINAL, ("a", "b", "c", "d")),
    "symptoms": Column("symptoms", Kind.MULTI, ("mass", "pain", "discharge")),
    "shape": Column("shape", Kind.CATEGORICAL, ("oval", "round", "irregular")),
    "birads": Column("birads", Kind.ORDINAL, ("2", "3", "4", "5"), outcome=True),
}
RADIOMICS = ["original_shape2D_Elongation", "original_shape2D_Perimeter", "original_glcm_Contrast",
             "original_glcm_Idm", "original_firstorder_Mean"]
N = 12
SIZE = 32


def metadata_table(n: int = N, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    symptoms = [["mass"], ["pain", "discharge"], [], None]
    return pd.DataFrame({
        "age": [float(a) if i % 5 else np.nan for i, a in enumerate(rng.integers(25, 80, n))],
        "density": [["a", "b", "c", "d", None][i % 5] for i in range(n)],
        "symptoms": [symptoms[i % 4] for i in range(n)],
        "shape": [["oval", "round", "irregular", None][i % 4] for i in range(n)],
        "birads": ["4"] * n,
    })


@pytest.fixture(scope="module")
def encoder_and_batch():
    table = metadata_table()
    encoder = MetadataEncoder(COLUMNS).fit(table)
    arrays = encoder.transform(table)
    rng = np.random.default_rng(1)
    radiomics = rng.normal(size=(N, len(RADIOMICS))).astype(np.float32)
    radiomics[3] = 0.0  # a case without radiomics features (what data preparation writes)
    gen = torch.Generator().manual_seed(0)
    batch = {
        "image": torch.rand(N, 1, SIZE, SIZE, generator=gen),
        "label": torch.arange(N) % 2,
        "has_label": torch.ones(N, dtype=torch.bool),
        "case_id": [f"case{i}" for i in range(N)],
        "meta_num": torch.from_numpy(arrays["meta_num"]),
        "meta_num_missing": torch.from_numpy(arrays["meta_num_missing"]),
        "meta_cat": torch.from_numpy(arrays["meta_cat"]),
        "radiomics": torch.from_numpy(radiomics),
    }
    return encoder, batch


def inputs_of(encoder: MetadataEncoder) -> TabularInputs:
    return TabularInputs(tuple(encoder.fields), tuple(RADIOMICS))


def small_model(name: str, inputs: TabularInputs, encoder: str = "unet", **options) -> MultiTaskModel:
    torch.manual_seed(0)
    image_encoder = (build_encoder("unet", widths=(4, 8, 16)) if encoder == "unet"
                     else build_encoder("hybrid", widths=(4, 8), dim=16, depth=1, heads=2, decoder=True))
    fusion = build_fusion(name, image_encoder.embedding_dim, inputs, num_classes=2, dim=16, heads=2, **options) \
        if name != "image_only" else build_fusion(name, image_encoder.embedding_dim, inputs)
    return MultiTaskModel(image_encoder, {"cls": {"num_classes": 2}, "seg": {}, "box": {}}, fusion)


def with_all_missing(batch: dict) -> dict:
    out = dict(batch)
    out["meta_num_missing"] = torch.ones_like(batch["meta_num_missing"])
    out["meta_cat"] = torch.zeros_like(batch["meta_cat"])
    out["radiomics"] = torch.zeros_like(batch["radiomics"])
    return out


def without_tabular(batch: dict) -> dict:
    """A cohort with no metadata and no radiomics at all: zero-wide tabular tensors."""
    out = dict(batch)
    out["meta_num"] = torch.zeros(N, 0)
    out["meta_num_missing"] = torch.zeros(N, 0, dtype=torch.bool)
    out["meta_cat"] = torch.zeros(N, 0, dtype=torch.long)
    out["radiomics"] = torch.zeros(N, 0)
    return out


def with_some_missing(batch: dict) -> dict:
    out = dict(batch)
    out["meta_num_missing"] = batch["meta_num_missing"].clone()
    out["meta_num_missing"][::2] = True
    out["radiomics"] = batch["radiomics"].clone()
    out["radiomics"][1::3] = 0.0
    out["radiomics"][2, 1] = float("nan")  # a failed feature: the row counts as missing
    return out


VARIANTS = {"all": lambda b: b, "some": with_some_missing, "none": with_all_missing, "absent": without_tabular}


@pytest.mark.parametrize("name", sorted(FUSIONS.names()))
def test_every_fusion_runs_forward_backward_with_all_some_and_no_tabular_features(name, encoder_and_batch):
    encoder, batch = encoder_and_batch
    model = small_model(name, inputs_of(encoder))
    model.train()
    for variant, make in VARIANTS.items():
        b = make(batch)
        out = model(b)
        assert out["logits"].shape == (N, 2) and out["seg_logits"].shape == (N, 1, SIZE, SIZE)
        assert out["bbox"].shape == (N, 4) and out["embedding"].shape == (N, model.fusion.embedding_dim)
        for key in ("logits", "embedding", "bbox"):
            assert torch.isfinite(out[key]).all(), f"{name}/{variant}: non-finite {key}"
        model.zero_grad()
        out["logits"].sum().backward()
        grads = [p.grad for p in model.fusion.parameters() if p.grad is not None]
        if name != "image_only":
            assert grads and all(torch.isfinite(g).all() for g in grads), f"{name}/{variant}: no finite gradient"
        encoder_grad = model.encoder.down.stages[-1].conv2.weight.grad
        if name != "tabular_only":
            assert encoder_grad is not None and encoder_grad.abs().sum() > 0, f"{name}/{variant}: image path cut"


def test_cross_attention_reads_the_tokens_of_a_transformer_encoder(encoder_and_batch):
    encoder, batch = encoder_and_batch
    model = small_model("cross_attention", inputs_of(encoder), encoder="hybrid").eval()
    out = model(batch)
    assert out["tokens"].shape[0] == N and torch.isfinite(out["logits"]).all()


@pytest.mark.parametrize("name", sorted(set(FUSIONS.names()) - {"image_only"}))
def test_a_masked_out_feature_cannot_change_the_output(name, encoder_and_batch):
    encoder, batch = encoder_and_batch
    model = small_model(name, inputs_of(encoder)).eval()
    age = next(f for f in encoder.fields if f.name == "age").num_slice[0]
    symptoms = next(f for f in encoder.fields if f.name == "symptoms").num_slice
    masked = dict(batch)
    masked["meta_num_missing"] = batch["meta_num_missing"].clone()
    masked["meta_num_missing"][:, age] = True
    masked["meta_num_missing"][:, symptoms[0]:symptoms[1]] = True
    changed = dict(masked)
    changed["meta_num"] = masked["meta_num"].clone()
    changed["meta_num"][:, age] = torch.linspace(-50, 50, N)
    changed["meta_num"][::2, symptoms[0]] = float("nan")
    with torch.no_grad():
        reference = model(masked)["logits"]
        assert torch.equal(model(changed)["logits"], reference)
        # the same change to a feature that is present does change the output
        present = dict(changed)
        present["meta_num_missing"] = batch["meta_num_missing"].clone()
        present["meta_num_missing"][:, age] = False
        present["meta_num"] = torch.nan_to_num(changed["meta_num"])
        assert not torch.allclose(model(present)["logits"], reference)


@pytest.mark.parametrize("name", sorted(set(FUSIONS.names()) - {"image_only"}))
def test_a_cohort_without_metadata_is_predicted_as_if_every_field_were_missing(name, encoder_and_batch):
    encoder, batch = encoder_and_batch
    model = small_model(name, inputs_of(encoder)).eval()
    with torch.no_grad():
        absent = model(without_tabular(batch))["logits"]
        missing = model(with_all_missing(batch))["logits"]
    assert torch.isfinite(absent).all()
    torch.testing.assert_close(absent, missing)


def test_modality_dropout_hides_the_tabular_inputs_of_some_training_cases(encoder_and_batch):
    encoder, batch = encoder_and_batch
    fusion = build_fusion("concat", 16, inputs_of(encoder), dim=16, heads=2, modality_dropout=0.5, dropout=0.0)
    tokens = fusion.tabular.encoder
    torch.manual_seed(0)
    tokens.train()
    dropped = tokens(batch, N, torch.device("cpu")).missing
    tokens.eval()
    kept = tokens(batch, N, torch.device("cpu")).missing
    assert (dropped & ~kept).any() and not (kept & ~dropped).any()


def test_decision_fusion_stacks_or_averages_per_modality_logits(encoder_and_batch):
    encoder, batch = encoder_and_batch
    stacked = small_model("decision", inputs_of(encoder), combine="stack").eval()
    assert stacked.fusion.embedding_dim == 4
    with torch.no_grad():
        out = stacked(with_all_missing(batch))["embedding"]
    assert torch.equal(out[:, 2:], torch.zeros(N, 2))  # no tabular input: no tabular vote
    averaged = small_model("decision", inputs_of(encoder)).eval()
    with torch.no_grad():
        image_logits = averaged.fusion.image_classifier(averaged.encoder(batch["image"]).embedding)
        torch.testing.assert_close(averaged(with_all_missing(batch))["embedding"], image_logits)
    with pytest.raises(ValueError, match="combine must be one of"):
        small_model("decision", inputs_of(encoder), combine="vote")


def test_fusion_options_are_checked_by_name():
    with pytest.raises(TypeError, match="unknown options \\['dimension'\\]"):
        build_fusion("concat", 16, TabularInputs(radiomics_features=tuple(RADIOMICS)), dimension=8)
    with pytest.raises(ValueError, match="needs tabular inputs"):
        build_fusion("cross_attention", 16, TabularInputs())
    with pytest.raises(KeyError, match="unknown fusion 'late'"):
        build_fusion("late", 16)


def test_metadata_tokens_follow_the_field_specs(encoder_and_batch):
    encoder, batch = encoder_and_batch
    fusion = build_fusion("concat", 16, TabularInputs(tuple(encoder.fields)), dim=16, heads=2)
    tokens = fusion.tabular.encoder(batch, N, torch.device("cpu"))
    assert tokens.tokens.shape == (N, len(encoder.fields), 16)
    names = [f.name for f in encoder.fields]
    table = metadata_table()
    for column in ("age", "density", "shape"):
        expected_missing = table[column].isna().to_numpy()
        assert np.array_equal(tokens.missing[:, names.index(column)].numpy(), expected_missing), column
    # an empty set of symptoms is a value (no symptom), not a missing field
    assert not tokens.missing[2, names.index("symptoms")] and tokens.missing[3, names.index("symptoms")]


# ------------------------------------------------------------------------- graph


def graph_model(encoder_and_batch, transductive: bool = False, conv: str = "sage") -> tuple[MultiTaskModel, dict, dict]:
    encoder, batch = encoder_and_batch
    model = small_model("graph", inputs_of(encoder), conv=conv, k=3, transductive=transductive)
    train = {k: v[:8] for k, v in batch.items()}
    test = {k: v[8:] for k, v in batch.items()}
    model.train()
    model(train)  # records the training population
    model.eval()
    return model, train, test


@pytest.mark.parametrize("conv", ["gcn", "sage", "gat"])
def test_inductive_graph_training_nodes_are_unchanged_by_test_nodes(conv, encoder_and_batch):
    model, train, test = graph_model(encoder_and_batch, conv=conv)
    fusion: GraphFusion = model.fusion
    assert len(fusion.population) == 8
    with torch.no_grad():
        queries = Nodes.from_batch(model.encoder(test["image"]).embedding, test)
        alone = fusion.propagate(fusion.population, None)
        with_test = fusion.propagate(fusion.population, queries)
        assert torch.equal(with_test[:8], alone)
        # a test case's prediction does not depend on which other test cases come with it
        together = model(test)["logits"]
        first = {k: v[:1] for k, v in test.items()}
        assert torch.allclose(model(first)["logits"], together[:1], atol=1e-6)


def test_transductive_graph_lets_test_nodes_change_training_nodes(encoder_and_batch):
    model, train, test = graph_model(encoder_and_batch, transductive=True)
    fusion: GraphFusion = model.fusion
    assert fusion.transductive
    with torch.no_grad():
        queries = Nodes.from_batch(model.encoder(test["image"]).embedding, test)
        alone = fusion.propagate(fusion.population, None)
        assert not torch.allclose(fusion.propagate(fusion.population, queries)[:8], alone)


def test_graph_population_survives_a_state_dict_round_trip(encoder_and_batch, tmp_path):
    model, train, test = graph_model(encoder_and_batch)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    fresh, _, _ = graph_model(encoder_and_batch)
    fresh.fusion.clear()
    fresh.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    assert fresh.fusion.population.case_ids == model.fusion.population.case_ids
    with torch.no_grad():
        torch.testing.assert_close(fresh(test)["logits"], model(test)["logits"])


def test_graph_edges_never_join_a_case_to_itself_nor_leave_a_test_case(encoder_and_batch):
    model, train, test = graph_model(encoder_and_batch)
    fusion: GraphFusion = model.fusion
    with torch.no_grad():
        queries = Nodes.from_batch(model.encoder(train["image"]).embedding, train)  # the training cases as queries
        edges = fusion.graph_edges(fusion.population, queries)
    sources, targets = edges
    assert (sources < 8).all(), "an evaluated case sends an edge"
    population_ids = fusion.population.case_ids
    for s, t in edges.T.tolist():
        target_id = population_ids[t] if t < 8 else queries.case_ids[t - 8]
        assert population_ids[s] != target_id
    # every node with some metadata in common has k neighbours; none without
    incoming = torch.bincount(targets, minlength=16)
    assert incoming.max() <= fusion.k and incoming[8:].min() >= 1


# ------------------------------------------------------------------------- outcome columns


def test_outcome_columns_are_refused_as_inputs_unless_opted_in():
    table = metadata_table()
    default = MetadataEncoder(COLUMNS).fit(table)
    assert "birads" not in [f.name for f in default.fields]
    with pytest.raises(OutcomeInputError, match="birads"):
        MetadataEncoder(COLUMNS, ["age", "birads"])
    opted = MetadataEncoder(COLUMNS, ["age", "birads"], opt_in=["birads"]).fit(table)
    fusion = build_fusion("concat", 16, TabularInputs(tuple(opted.fields)), dim=16, heads=2)
    assert [f.name for f in fusion.tabular.encoder.inputs.fields] == ["age", "birads"]


# ------------------------------------------------------------------------- synthetic: fusion helps


def _labelled_tensors(data, part: str) -> dict:
    dataset = data.dataset(part, augment=False)
    items = [item for item in (dataset[i] for i in range(len(dataset))) if bool(item["has_label"])]
    return {k: torch.stack([it[k] for it in items]) if torch.is_tensor(items[0][k]) else [it[k] for it in items]
            for k in items[0]}


def _trained_auc(name: str, data, train: dict, test: dict, epochs: int = 12, seed: int = 0) -> float:
    from sklearn.metrics import roc_auc_score

    from senolab.models import multitask_losses

    torch.manual_seed(seed)
    image_encoder = build_encoder("unet", widths=(4, 8, 16), decoder=False)
    fusion = None if name == "image_only" else build_fusion(
        name, image_encoder.embedding_dim, TabularInputs.from_data(data), num_classes=2, dim=16, heads=2)
    model = MultiTaskModel(image_encoder, {"cls": {"num_classes": 2}}, fusion)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    order = torch.Generator().manual_seed(seed)
    n = len(train["case_id"])
    for _ in range(epochs):
        model.train()
        for rows in torch.randperm(n, generator=order).split(32):
            batch = {k: v[rows] if torch.is_tensor(v) else [v[i] for i in rows] for k, v in train.items()}
            loss = multitask_losses(model(batch), batch)["cls"]
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    model.eval()
    with torch.no_grad():
        score = torch.softmax(model(test)["logits"], 1)[:, 1]
    return roc_auc_score(test["label"].numpy(), score.numpy())


def test_on_the_synthetic_cohort_every_fusion_beats_the_image_alone():
    """Synthetic metadata follow the label independently of the image (age: 60 vs 47 years,
    sd 13, alone an AUC near 0.76; symptoms and family history add to it). A small image
    model trained briefly on 32-pixel images is far weaker, so a fusion that uses the
    metadata must beat it; one that ignored them would tie."""
    from senolab.engine.config import DataConfig, SplitConfig, SyntheticOptions
    from senolab.engine.data import prepare

    data = prepare(DataConfig(synthetic=SyntheticOptions(n_sites=1, images_per_site=300, image_size=64, seed=0),
                              image_size=32, augment=False, deduplicate=False,
                              split=SplitConfig(kind="holdout", test_fraction=0.4, val_fraction=0.1, seed=0)),
                   progress=False)
    assert "birads" not in [f.name for f in data.metadata.fields]
    train, test = _labelled_tensors(data, "train"), _labelled_tensors(data, "test")
    image_auc = _trained_auc("image_only", data, train, test)
    fused = {name: _trained_auc(name, data, train, test) for name in ("concat", "cross_attention", "graph")}
    for name, auc in fused.items():
        assert auc >= image_auc + 0.03, f"{name}: AUC {auc:.3f} vs image only {image_auc:.3f}"


# ------------------------------------------------------------------------- the ablation command

TINY_ABLATION = """
kind: ablation
name: tiny_fusion
data:
  cohorts: [synthetic]
  synthetic: {n_sites: 2, images_per_site: 30, image_size: 64, seed: 0}
  image_size: 32
  classes: binary
  opt_in_outcomes: [birads]
  split: {kind: kfold, val_fraction: 0.25, seed: 0}
  augment: false
model:
  encoder: unet
  encoder_options: {widths: [4, 8, 16]}
  heads: {classification: true, segmentation: false, bbox: false}
loss: {balancer: fixed}
train: {epochs: 1, batch_size: 16, seed: 0}
evaluation: {bootstrap: 50}
ablation:
  folds: 2
  fusions: [graph]
  modalities: [[metadata]]
  finetune: {train: {epochs: 1}}
  fusion_options: {graph: {dim: 8, heads: 2, depth: 1, k: 3}}
"""


def test_fusion_ablate_command_writes_one_row_per_variant_and_prints_an_outcome_opt_in(tmp_path, capsys):
    from senolab.cli import main

    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_ABLATION)
    out = tmp_path / "out"
    assert main(["fusion", "ablate", str(config), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "OUTCOME OPT-IN: birads" in printed and "| graph+metadata |" in printed
    results = pd.read_csv(out / "results.csv")
    assert results["method"].tolist() == ["image_only", "graph+metadata"]
    assert results.loc[1, ["auc", "auc_lo", "auc_hi", "delta_auc", "delong_p", "auc_tabular_withheld"]].notna().all()
    assert np.isnan(results.loc[0, "auc_tabular_withheld"])  # image only has nothing to withhold
    summary = json.loads((out / "summary.json").read_text())
    assert {"config", "aggregates", "cases"} <= set(summary)
    assert summary["ablation"]["opted_in_outcomes"] == ["birads"]
    assert set(summary["aggregates"]) == {"image_only", "graph+metadata", "graph+metadata [tabular withheld]"}
    assert (out / "ablation_auc.png").stat().st_size > 0
    predictions = pd.read_parquet(out / "predictions.parquet")
    # every labelled case is predicted once per variant, out of fold
    assert predictions.groupby("method")["case_id"].apply(lambda c: c.is_unique).all()
    assert predictions.groupby("method").size().nunique() == 1
    withheld = predictions[predictions["method"] == "graph+metadata [tabular withheld]"]
    assert np.isfinite(withheld["prob_malignant"]).all()
    # a rerun with the same config reuses every run instead of training again
    before = {p: p.stat().st_mtime for p in (out / "runs").rglob("*.parquet")}
    assert main(["fusion", "ablate", str(config), "--out", str(out), "--quiet"]) == 0
    assert {p: p.stat().st_mtime for p in (out / "runs").rglob("*.parquet")} == before


def test_ablation_config_errors_name_the_key(tmp_path):
    from senolab.engine.config import ConfigError
    from senolab.runners.ablation import load_ablation

    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY_ABLATION.replace("{graph: {dim: 8,", "{graph: {dimension: 8,"))
    with pytest.raises(ConfigError, match="fusion_options.graph: unknown options \\['dimension'\\]"):
        load_ablation(bad)
    bad.write_text(TINY_ABLATION.replace("finetune: {train: {epochs: 1}}", "finetune: {train: {epoch: 1}}"))
    with pytest.raises(ConfigError, match="train.epoch"):
        load_ablation(bad)
