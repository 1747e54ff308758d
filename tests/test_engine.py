"""The training engine on a tiny synthetic cohort: configs, a full run, determinism, resume."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from senolab.engine.config import ConfigError, load_config, parse_config
from senolab.engine.data import prepare
from senolab.runners.experiment import train_and_evaluate
from senolab.engine.trainer import Trainer

TINY = {
    "name": "tiny",
    "data": {"synthetic": {"n_sites": 2, "images_per_site": 24, "image_size": 64}, "image_size": 32,
             "split": {"test_fraction": 0.25, "val_fraction": 0.2}},
    "train": {"epochs": 2, "batch_size": 8, "early_stopping": {"patience": 5}},
    "evaluation": {"bootstrap": 20},
}


def test_config_errors_name_the_bad_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lr: fast\n  epochz: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "train.lr" in str(err.value) and "train.epochz" in str(err.value) and str(path) in str(err.value)
    with pytest.raises(ConfigError, match="model.heads"):
        parse_config({"model": {"heads": {"classification": False, "segmentation": False, "bbox": False}}})


def test_train_writes_a_complete_run(tmp_path):
    summary = train_and_evaluate(parse_config(TINY), tmp_path / "run", progress=False)
    for name in ("config.yaml", "history.csv", "predictions.parquet", "summary.json", "results.csv", "split.csv",
                 "runs.json", "mlflow.db", "model/MLmodel", "model/artifacts/model.pt",
                 "model/artifacts/preprocessing.json"):
        assert (tmp_path / "run" / name).exists(), name
    assert not list((tmp_path / "run").glob("*.pt")), "the package holds the one copy of the model"
    assert set(summary) >= {"config", "aggregates", "cases"}
    assert "erm" in summary["aggregates"] and "worst_site" in summary["aggregates"]["erm"]
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert {"weight_cls", "weight_seg", "weight_box", "val_score"} <= set(history.columns)
    results = pd.read_csv(tmp_path / "run" / "results.csv")
    assert {"method", "site", "auc", "auc_lo", "auc_hi"} <= set(results.columns)
    split = pd.read_csv(tmp_path / "run" / "split.csv")
    assert set(split["part"]) == {"train", "val", "test"}


def _weights(trainer: Trainer) -> dict:
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_same_seed_same_weights_and_resume_matches_uninterrupted(tmp_path):
    config = parse_config(TINY)
    data = prepare(config.data, progress=False)
    straight = Trainer(config, data, tmp_path / "a")
    straight.fit(progress=False)
    again = Trainer(config, data, tmp_path / "b")
    again.fit(progress=False)
    assert all(torch.equal(v, _weights(again)[k]) for k, v in _weights(straight).items())
    # stop after one epoch, then resume the second from last.pt
    Trainer(config, data, tmp_path / "c").fit(progress=False, until_epoch=1)
    assert len(pd.read_csv(tmp_path / "c" / "history.csv")) == 1
    resumed = Trainer(config, data, tmp_path / "c")
    resumed.fit(progress=False)
    last_straight = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"]
    last_resumed = torch.load(tmp_path / "c" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(v, last_resumed[k]) for k, v in last_straight.items())


def test_a_time_budget_cuts_the_epoch_and_still_anneals_the_learning_rate(tmp_path):
    config = parse_config({**TINY, "train": {**TINY["train"], "epochs": 50, "time_budget_s": 2.0}})
    data = prepare(config.data, progress=False)
    trainer = Trainer(config, data, tmp_path / "run")
    trainer.fit(progress=False)
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert len(history) < 50, "the budget must stop the run long before its 50 epochs"
    assert history["lr"].iloc[-1] < 0.1 * config.train.lr, "the cosine decay must follow the budget"
    assert trainer.progress(step=0, spent=1.0) == pytest.approx(0.5)
    assert trainer.progress(step=trainer.total_steps, spent=0.0) == 1.0
