"""One config module, one YAML shape: every file says its ``kind:``, a command refuses a file
of another kind in one line, shorthands are normalised by the models' validators, and every
loss option of the YAML reaches the loss."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import yaml

from conftest import REPO
from senolab.engine.config import (KINDS, ConfigError, ExperimentConfig, RunConfig, StudyConfig, load_config,
                                   load_study_config)
from senolab.models import LossConfig, multitask_losses
from senolab.models import losses as losses_module

CONFIGS = REPO / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_names_its_kind(path):
    kind = yaml.safe_load(path.read_text()).get("kind")
    assert kind in KINDS, f"{path.name}: top-level kind: {kind!r}"
    assert load_config(path, kind=kind).kind == kind


@pytest.mark.parametrize("command, config, found, expected", [
    (["study"], "train_synthetic.yaml", "experiment", "study"),
    (["train"], "study_synthetic.yaml", "study", "experiment"),
    (["run"], "fusion_synthetic.yaml", "ablation", "run"),
    (["fusion", "ablate"], "run_real.yaml", "run", "ablation"),
])
def test_a_command_refuses_a_config_of_another_kind_in_one_line(tmp_path, command, config, found, expected):
    path = CONFIGS / config
    result = subprocess.run([sys.executable, "-m", "senolab.cli", *command, str(path), "--out", str(tmp_path / "out"),
                             "--quiet"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0] and f"'{found}'" in lines[0] and f"expected '{expected}'" in lines[0], lines[0]
    assert not (tmp_path / "out").exists(), "nothing is written for a refused config"


def test_a_file_without_kind_is_read_as_the_expected_kind_and_an_unknown_kind_is_refused(tmp_path):
    # configs written before `kind:` existed (run folders, users' files) still load
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump({"name": "old", "methods": ["erm"]}))
    assert load_study_config(path).name == "old"
    path.write_text(yaml.safe_dump({"kind": "studdy", "name": "typo"}))
    with pytest.raises(ConfigError, match="kind 'studdy' is not a config kind; expected 'study'"):
        load_study_config(path)


def test_a_recorded_config_is_read_back_as_its_kind(tmp_path):
    """What a runner records (``model_dump``) carries its kind, so it loads as that kind only."""
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(StudyConfig().model_dump()))
    assert load_study_config(path).kind == "study"
    with pytest.raises(ConfigError, match="kind is 'study', expected 'experiment'"):
        load_config(path)


def test_method_names_are_normalised_by_the_model_itself():
    study = StudyConfig.model_validate({"methods": ["erm", "dann", {"name": "coral", "options": {"weight": 10}}]})
    assert [(m.name, m.label) for m in study.methods] == [("erm", "erm"), ("dann", "dann"), ("coral", "coral")]
    assert study.methods[2].options == {"weight": 10}
    run = RunConfig.model_validate({"study": {"methods": ["erm", "adabn"]}})  # nested too
    assert [m.name for m in run.study.methods] == ["erm", "adabn"]


def test_the_loss_classification_shorthand_is_a_focal_gamma():
    assert LossConfig.model_validate({"classification": "focal"}).focal_gamma == 2.0
    assert LossConfig.model_validate({"classification": "focal", "focal_gamma": 1.0}).focal_gamma == 1.0
    # configs recorded before carry `ce` next to the old default gamma 2: that was cross-entropy
    assert LossConfig.model_validate({"classification": "ce", "focal_gamma": 2.0}).focal_gamma == 0.0
    with pytest.raises(ValueError, match="give one of them"):
        LossConfig.model_validate({"classification": "ce", "focal_gamma": 3.0})
    with pytest.raises(ValueError, match="unknown loss balancer .averaging."):
        LossConfig.model_validate({"balancer": "averaging"})


def test_there_is_one_loss_config():
    from senolab.engine import config as engine_config

    assert engine_config.LossConfig is LossConfig is losses_module.LossConfig
    assert ExperimentConfig.model_fields["loss"].annotation is LossConfig


def test_class_weights_must_match_the_classes(tmp_path):
    path = tmp_path / "weights.yaml"
    path.write_text(yaml.safe_dump({"kind": "experiment", "data": {"classes": "binary"},
                                    "loss": {"class_weights": [1.0, 2.0, 3.0]}}))
    with pytest.raises(ConfigError, match="class_weights has 3 entries but data.classes 'binary' has 2"):
        load_config(path)


def test_every_loss_option_in_the_yaml_reaches_the_loss(tmp_path, monkeypatch, one_torch_thread):
    from senolab.engine import trainer as trainer_module
    from senolab.engine.data import prepare

    options = {"focal_gamma": 1.5, "class_weights": [1.0, 4.0], "bce_weight": 3.0, "dice_weight": 0.5,
               "l1_weight": 2.0, "giou_weight": 0.25, "balancer": "fixed"}
    path = tmp_path / "loss.yaml"
    path.write_text(yaml.safe_dump({
        "kind": "experiment", "name": "loss",
        "data": {"synthetic": {"n_sites": 2, "images_per_site": 8, "image_size": 64}, "image_size": 32,
                 "augment": False},
        "loss": options, "train": {"epochs": 1, "batch_size": 8}}))
    config = load_config(path)
    seen = []

    def spy(outputs, batch, loss_config=None):
        seen.append((loss_config, {k: v.detach() for k, v in outputs.items()}, batch))
        return multitask_losses(outputs, batch, loss_config)

    monkeypatch.setattr(trainer_module, "multitask_losses", spy)
    trainer_module.Trainer(config, prepare(config.data, progress=False), tmp_path / "run").fit(progress=False)
    assert seen, "the trainer never computed its task losses"
    received, outputs, batch = seen[0]
    assert received.model_dump(include=set(options)) == options
    # and the options change the numbers: every task's loss differs from the default options'
    ours, default = multitask_losses(outputs, batch, received), multitask_losses(outputs, batch, LossConfig())
    assert set(ours) == {"cls", "seg", "box"}
    for task in ours:
        assert not torch.isclose(ours[task], default[task]), task
