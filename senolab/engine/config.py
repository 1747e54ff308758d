"""Experiment configs: YAML validated into typed objects, with errors that name the bad key.

One config describes one model: which cohorts and how to split them, which encoder and
heads, which losses and loss balancer, how to train. Unknown keys are errors (a typo
must not silently fall back to a default).
"""
from __future__ import annotations

import importlib
from collections.abc import Hashable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from senolab.errors import InputError
from senolab.paths import require_file


class ConfigError(InputError):
    """A config file that does not validate; the message names file, key and problem."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def registered_in(module: str, registry: str) -> AfterValidator:
    """A validator of a component name: it must be in ``module.registry``, so a typo is named
    when the config is read rather than when the model is built. The registry's module is
    imported at the first check (it imports torch), which keeps this module light."""

    def check(name: str) -> str:
        return getattr(importlib.import_module(module), registry).check(name)

    return AfterValidator(check)


class SyntheticOptions(Strict):
    n_sites: int = Field(3, ge=1)
    images_per_site: int = Field(120, ge=4)
    image_size: int = Field(192, ge=64)
    seed: int = 0

    def build(self):
        """The generator's own config (site profiles from ``default_sites``)."""
        from senolab.cohorts.synthetic import SyntheticConfig, default_sites

        return SyntheticConfig(sites=default_sites(self.n_sites), images_per_site=self.images_per_site,
                               image_size=self.image_size, seed=self.seed)


class SplitConfig(Strict):
    """How cases are divided; always patient- and duplicate-group-disjoint.

    holdout: a stratified test fraction; kfold: fold ``fold`` of ``k`` is the test set;
    official: a dataset's own folds (``name`` e.g. ``official_5fold`` for one cohort,
    ``busbra:official_5fold`` in a study of several);
    sites: whole sites as test (``test_sites``), the rest for training;
    per_cohort: each cohort's test part from its own split, given in ``cohorts``
    (cohort name -> split), e.g. BUS-BRA's official fold 1 plus a BUSI holdout.
    Validation cases for early stopping come from the (pooled) training part
    (``val_fraction``, ``seed``); a per-cohort split's own ``val_fraction`` is not read.
    """

    kind: Literal["holdout", "kfold", "official", "sites", "per_cohort"] = "holdout"
    test_fraction: float = Field(0.2, gt=0, lt=1)
    k: int = Field(5, ge=2)
    fold: int = Field(0, ge=0)
    name: str | None = None
    test_sites: list[str] = []
    cohorts: dict[str, SplitConfig] = {}
    val_fraction: float = Field(0.15, gt=0, lt=1)
    seed: int = 0

    @model_validator(mode="after")
    def _cohorts_only_per_cohort(self):
        if self.kind == "per_cohort":
            if not self.cohorts:
                raise ValueError("kind 'per_cohort' needs `cohorts`: a split for each cohort name")
            nested = sorted(name for name, split in self.cohorts.items() if split.kind == "per_cohort")
            if nested:
                raise ValueError(f"cohorts {nested}: a cohort's own split cannot be 'per_cohort'")
        elif self.cohorts:
            raise ValueError(f"`cohorts` is only read when kind is 'per_cohort' (kind is {self.kind!r})")
        return self


class DataConfig(Strict):
    """``cohorts``: dataset folders (layout detected) or ``synthetic`` for the generator."""

    cohorts: list[str] = ["synthetic"]
    synthetic: SyntheticOptions = SyntheticOptions()
    image_size: int = Field(128, ge=32)
    classes: Literal["binary", "three"] = "binary"
    split: SplitConfig = SplitConfig()
    deduplicate: bool = True
    metadata_inputs: list[str] | None = None  # None: every non-outcome column
    opt_in_outcomes: list[str] = []
    radiomics: str | None = None  # a parquet table from `senolab radiomics extract`
    augment: bool = True
    strict: bool = False


class HeadsConfig(Strict):
    classification: bool = True
    segmentation: bool = True
    bbox: bool = True

    @model_validator(mode="after")
    def _one_head(self):
        if not (self.classification or self.segmentation or self.bbox):
            raise ValueError("at least one head must be enabled")
        return self


class ModelConfig(Strict):
    encoder: Annotated[str, registered_in("senolab.models.encoders", "ENCODERS")] = "unet"
    encoder_options: dict[str, Any] = {}
    checkpoint: str | None = None  # a local encoder checkpoint, never a hub name
    heads: HeadsConfig = HeadsConfig()
    fusion: Annotated[str, registered_in("senolab.fusion.base", "FUSIONS")] | None = None
    fusion_options: dict[str, Any] = {}


class LossConfig(Strict):
    classification: Literal["ce", "focal"] = "ce"
    focal_gamma: float = Field(2.0, ge=0)
    balancer: Annotated[str, registered_in("senolab.models.balancers", "BALANCERS")] = "uncertainty"
    balancer_options: dict[str, Any] = {}


class EarlyStopping(Strict):
    metric: str = "val_score"  # mean of validation AUC and Dice, over enabled heads
    patience: int = Field(5, ge=1)


class TrainConfig(Strict):
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    grad_clip: float | None = Field(5.0, gt=0)
    early_stopping: EarlyStopping = EarlyStopping()
    time_budget_s: float | None = Field(None, gt=0)  # seconds of training + validation; the LR decays over it
    seed: int = 0
    num_workers: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"


class EvaluationConfig(Strict):
    bootstrap: int = Field(1000, ge=0)
    seed: int = 0


class ExperimentConfig(Strict):
    name: str = "experiment"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()
    evaluation: EvaluationConfig = EvaluationConfig()


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping. Plain YAML loaders keep
    the last one silently, so a config setting ``epochs`` twice would run with whichever
    came second; the YAML spec itself requires keys to be unique."""

    def construct_mapping(self, node, deep=False):
        first_lines: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults` then overriding one of them is what merge keys are for
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # SafeLoader's own construct_mapping refuses it with its error
            if key in first_lines:
                raise yaml.constructor.ConstructorError(
                    problem=f"key {key!r} appears twice in one mapping (first on line {first_lines[key]})",
                    problem_mark=key_node.start_mark)
            first_lines[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def read_yaml_mapping(path: str | Path) -> dict:
    """A YAML file's top-level mapping, or one line naming the file and the problem: not a
    file, not text, not YAML (with its line), a key given twice, empty, not a mapping."""
    path = require_file(path, "config file")
    try:
        raw = yaml.load(_config_text(path), Loader=UniqueKeyLoader)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML, {_yaml_problem(err)}") from None
    if raw is None:
        # an empty config would silently run everything with defaults
        raise ConfigError(f"{path}: the config has no settings (the file is empty or only comments)")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


def _yaml_problem(err: yaml.YAMLError) -> str:
    """The parser's complaint in one line: where and what, without its quoted source lines."""
    mark = getattr(err, "problem_mark", None)
    if mark is None:
        return " ".join(str(err).split())
    context = f" ({err.context})" if err.context else ""
    return f"line {mark.line + 1}, column {mark.column + 1}: {err.problem}{context}"


def _config_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"{path}: the config cannot be read ({err.strerror or err})") from None
    if not _is_text(data):
        raise ConfigError(f"{path}: not a text file; a config is YAML text (is this a checkpoint, image or archive?)")
    return data.decode("utf-8")


def _is_text(data: bytes) -> bool:
    """UTF-8 without NUL bytes: a binary file (a checkpoint, an image) fails one or the other."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\0" not in data


def validate(model: type[BaseModel], raw: dict, source: str):
    """``model.model_validate(raw)`` with errors as ``source: dotted.key: message`` lines."""
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        lines = [f"{source}: {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()]
        raise ConfigError("\n".join(lines)) from None


def load_config(path: str | Path, overrides: dict | None = None) -> ExperimentConfig:
    """Read and validate a YAML config; ``overrides`` are merged in (nested dicts)."""
    return parse_config(merge_overrides(read_yaml_mapping(path), overrides or {}), source=str(path))


def parse_config(raw: dict, source: str = "config") -> ExperimentConfig:
    return validate(ExperimentConfig, raw, source)


def merge_overrides(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge_overrides(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
