"""senolab pretrain: the command end to end, resuming, the label wall, the SSL methods, and
the study's pretraining step (cached per target and seed, transductive said so)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from timm_support import skip_without

skip_without("timm", "lightly")

from safetensors.torch import load_file  # noqa: E402

from senolab.engine.config import PretrainOptions, load_study_config, parse_config  # noqa: E402
from senolab.engine.data import prepare  # noqa: E402
from senolab.engine.trainer import Trainer  # noqa: E402
from senolab.pretrain import ImageOnlyDataset, Pretrainer  # noqa: E402
from senolab.runners.study import run_study  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DATA = {"synthetic": {"n_sites": 2, "images_per_site": 16, "image_size": 64}, "image_size": 32,
        "split": {"test_fraction": 0.25, "val_fraction": 0.25}}
CONFIG = {"kind": "pretrain", "name": "tiny_pretrain", "data": DATA,
          "model": {"encoder": "timm", "encoder_options": {"name": "resnet18"}},
          "pretrain": {"method": "simclr", "epochs": 2, "batch_size": 8, "monitor_every": 1}}


def senolab(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "senolab.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """`senolab pretrain` run for real, in a subprocess, with a relative --out."""
    folder = tmp_path_factory.mktemp("cli")
    (folder / "pretrain.yaml").write_text(yaml.safe_dump(CONFIG))
    done = senolab("pretrain", "pretrain.yaml", "--out", "out", "--quiet", cwd=folder)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder, done


def test_the_command_writes_weights_history_and_record(pretrained):
    folder, done = pretrained
    out = folder / "out"
    for name in ("encoder.safetensors", "history.csv", "pretrain.json", "done.json", "runs.json", "mlflow.db"):
        assert (out / name).exists(), name
    assert not (out / "last.pt").exists()
    history = pd.read_csv(out / "history.csv")
    assert list(history["epoch"]) == [0, 1] and np.isfinite(history["loss"]).all()
    assert {"knn_acc", "knn_auc", "images_per_s", "cpu_seconds"} <= set(history.columns)
    record = json.loads((out / "pretrain.json").read_text())
    assert record["method"] == "simclr" and record["pooled_parts"] == ["train"] and not record["transductive"]
    assert record["cpu_minutes"] > 0 and "encoder weights:" in done.stdout
    weights = load_file(str(out / "encoder.safetensors"))
    assert "conv1.weight" in weights and weights["conv1.weight"].shape[1] == 1  # timm's own names, one channel
    runs = json.loads((out / "runs.json").read_text())
    assert [r["name"] for r in runs["runs"]] and runs["runs"][0]["metrics"]["epochs_run"] == 2


def test_a_second_run_does_no_work(pretrained):
    folder, _ = pretrained
    stamp = (folder / "out" / "encoder.safetensors").stat().st_mtime_ns
    again = senolab("pretrain", "pretrain.yaml", "--out", "out", "--quiet", cwd=folder)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "done already" in again.stdout
    assert (folder / "out" / "encoder.safetensors").stat().st_mtime_ns == stamp


def test_train_starts_from_the_pretrained_weights(pretrained, tmp_path):
    weights = pretrained[0] / "out" / "encoder.safetensors"
    config = parse_config({"data": DATA, "train": {"epochs": 1, "batch_size": 8},
                           "model": {"encoder": "timm",
                                     "encoder_options": {"name": "resnet18", "pretrained": str(weights)}}})
    trainer = Trainer(config, prepare(config.data, progress=False), tmp_path)
    assert not trainer.model.encoder.load_report.partial
    for name, tensor in load_file(str(weights)).items():
        assert torch.equal(trainer.model.encoder.backbone.state_dict()[name], tensor), name


def test_broken_configs_are_one_line_errors(tmp_path):
    for pretrain, expected in (({"method": "dino"}, "pretrain.method: Value error, unknown self-supervised method 'dino'"),
                               ({"method": "mae"}, "needs a timm ViT")):
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**CONFIG, "pretrain": pretrain}))
        done = senolab("pretrain", "bad.yaml", "--out", "out", cwd=tmp_path)
        assert done.returncode == 2, done.stderr[-2000:]
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], lines


def _loop(data, out, seed=0, method="simclr", name="resnet18", epochs=2, cohort=None):
    options = PretrainOptions(method=method, epochs=epochs, batch_size=6, seed=seed, monitor_every=5)
    pool = ImageOnlyDataset(cohort or data.cohort, data.case_ids("train"), data.image_size)
    return Pretrainer("timm", {"name": name}, options, pool, out, data.image_size)


@pytest.fixture(scope="module")
def data():
    return prepare(parse_config({"data": DATA}).data, progress=False)


def test_stopped_and_resumed_equals_uninterrupted(data, tmp_path):
    straight = _loop(data, tmp_path / "a")
    straight.fit(progress=False)
    stopped = _loop(data, tmp_path / "b")
    stopped.fit(progress=False, until_epoch=1)
    resumed = _loop(data, tmp_path / "b")
    resumed.fit(progress=False)
    for key, value in straight.encoder_state().items():
        assert torch.equal(value, resumed.encoder_state()[key]), key


def test_no_label_mask_or_outcome_reaches_the_method(data, tmp_path):
    """The pool holds pixels only, and poisoning every label, mask, box and outcome of the
    cohort leaves the pretrained weights identical to the bit."""
    pool = ImageOnlyDataset(data.cohort, data.case_ids("train"), data.image_size)
    assert set(pool[0]) == {"image"} and not any(k in pool.rows[0] for k in ("label", "mask_paths", "lesion_bboxes"))

    clean = _loop(data, tmp_path / "clean")
    seen = []
    loss = clean.method.loss
    clean.method.loss = lambda views: (seen.append([type(v) for v in views]), loss(views))[1]
    clean.fit(progress=False)
    assert seen and all(types == [torch.Tensor, torch.Tensor] for types in seen)  # views only, no batch dict

    cohort = data.cohort
    table = cohort.table.copy()
    flipped = {"benign": "malignant", "malignant": "benign", "normal": "malignant"}
    table["label"] = table["label"].map(flipped)
    table["lesion_bboxes"] = [[[0.0, 0.0, 5.0, 5.0]] for _ in range(len(table))]
    for column, spec in cohort.columns.items():
        if column in table:
            table[column] = table[column].sample(frac=1.0, random_state=1).to_numpy()
    arrays = {cid: (image, [np.ones_like(image, dtype=bool)]) for cid, (image, _) in cohort.arrays.items()}
    poisoned_cohort = type(cohort)(cohort.name, table, cohort.columns, cohort.splits, cohort.problems, cohort.root,
                                   arrays)
    poisoned = _loop(data, tmp_path / "poisoned", cohort=poisoned_cohort)
    poisoned.fit(progress=False)
    for key, value in clean.encoder_state().items():
        assert torch.equal(value, poisoned.encoder_state()[key]), key


@pytest.mark.parametrize("method, name", [("byol", "convnext_atto"), ("mae", "vit_tiny_patch16_224")])
def test_byol_and_mae_pretrain(data, tmp_path, method, name):
    loop = _loop(data, tmp_path, method=method, name=name, epochs=1)
    before = {k: v.clone() for k, v in loop.encoder_state().items()}
    history = loop.fit(progress=False).history
    assert np.isfinite(history[-1]["loss"])
    assert any(not torch.equal(before[k], v) for k, v in loop.encoder_state().items())


def test_study_pretrains_once_per_target_and_says_transductive(tmp_path):
    study = {"kind": "study", "name": "tiny_pretrain_study", "protocol": "pairwise", "embedding_figure": False,
             "pairs": [{"sources": ["site_a"], "target": "site_b"}], "methods": ["erm", "adabn"],
             "base": {"data": {**DATA, "synthetic": {"n_sites": 2, "images_per_site": 20, "image_size": 64}},
                      "model": {"encoder": "timm", "encoder_options": {"name": "resnet18"},
                                "heads": {"classification": True, "segmentation": True, "bbox": False}},
                      "train": {"epochs": 1, "batch_size": 8, "encoder_lr_scale": 0.5},
                      "evaluation": {"bootstrap": 10}},
             "pretrain": {"on": "sources+target", "method": "simclr", "epochs": 1, "batch_size": 8}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    out = tmp_path / "out"
    run_study(load_study_config(path), out, progress=False)
    results = pd.read_csv(out / "results.csv")
    assert results["transductive"].all() and set(results["pretrain"]) == {"sources+target"}
    record = json.loads((out / "pretrain" / "site_b" / "seed0" / "pretrain.json").read_text())
    assert record["pooled_parts"] == ["train", "test"] and record["transductive"]
    assert "encoder pretrained on the target's images" in (out / "results.md").read_text()
    runs = json.loads((out / "runs.json").read_text())["runs"]
    assert [r["tags"]["transductive"] for r in runs if r["tags"].get("method") != "pretrain"] == ["true", "true"]
    assert sum(r["tags"].get("method") == "pretrain" for r in runs) == 1  # one pretraining, reused by both
    config = yaml.safe_load((out / "runs" / "site_b" / "erm" / "seed0" / "model" / "MLmodel").read_text()) or {}
    assert config  # the unit was packaged
