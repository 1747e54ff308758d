"""Every config of senolab: YAML validated into typed objects, with errors that name the bad key.

One module, one YAML shape. Every config file says what it is with a top-level ``kind:``:

- ``experiment``: one model (``senolab train``): which cohorts and how to split them, which
  encoder and heads, which losses and loss balancer, how to train;
- ``study``: a cross-institution study (``senolab study``): an experiment as ``base``, the
  protocol, the adaptation methods, seeds and model-selection rule;
- ``ablation``: an experiment with an ``ablation`` section (``senolab fusion ablate``);
- ``run``: the main job (``senolab run``): a study plus radiomics, explanations, tracking;
- ``pretrain``: self-supervised pretraining of an encoder on unlabelled images
  (``senolab pretrain``): which cohorts, which encoder, which method.

:func:`load_config` is the one place YAML is read: a file of another kind is refused with
one line naming the file, the kind found and the kind expected. Shorthands (``methods:
[erm, dann]``, ``loss.classification: focal``) are normalised by the models' own
validators, so ``model_validate`` accepts them as the loaders do. Unknown keys are errors
(a typo must not silently fall back to a default).
"""
from __future__ import annotations

import importlib
import os
from collections.abc import Hashable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from senolab.errors import InputError
from senolab.models.loss_config import LossConfig  # the `loss:` section: the models' own class, torch-free
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


class SyntheticMGOptions(Strict):
    """The ``synthetic_mg`` source: synthetic mammography sites (film-like, digital-like, CR)."""

    n_sites: int = Field(2, ge=1)
    images_per_site: int = Field(40, ge=4)
    image_size: int = Field(128, ge=64)
    seed: int = 0

    def build(self):
        """The generator's own config (vendor profiles from ``default_vendors``)."""
        from senolab.cohorts.synthetic_mammography import MammographyConfig, default_vendors

        return MammographyConfig(sites=default_vendors(self.n_sites), images_per_site=self.images_per_site,
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
    """``cohorts``: dataset folders (layout detected), ``synthetic`` for the ultrasound
    generator or ``synthetic_mg`` for the mammography one (each with its section below)."""

    cohorts: list[str] = ["synthetic"]
    synthetic: SyntheticOptions = SyntheticOptions()
    synthetic_mg: SyntheticMGOptions = SyntheticMGOptions()
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
    # Data-parallel training (senolab.engine.distributed): `devices` processes, launched by
    # torchrun, share each global batch of `batch_size` cases; rank 0 alone writes the run folder.
    devices: int = Field(1, ge=1)
    precision: Literal["32", "bf16-mixed", "16-mixed"] = "32"  # autocast dtype; 16-mixed adds a grad scaler
    sync_batchnorm: bool = False  # BatchNorm statistics over the global batch instead of each process's share
    # Fine-tuning a pretrained encoder. Its backbone is every encoder parameter outside its
    # decoder; the decoder, heads and fusion are new and train at `lr` throughout.
    freeze_encoder_epochs: int = Field(0, ge=0)  # the backbone gets no gradient in the first N epochs
    encoder_lr_scale: float = Field(1.0, gt=0)  # the backbone's learning rate is lr * encoder_lr_scale
    layer_decay: float | None = Field(None, gt=0, le=1)  # timm encoders: each layer's LR times decay ** depth-from-top

    @property
    def fine_tuning(self) -> bool:
        """Whether the backbone trains otherwise than the heads (its own parameter groups)."""
        return self.freeze_encoder_epochs > 0 or self.encoder_lr_scale != 1.0 or self.layer_decay is not None

    @model_validator(mode="after")
    def _global_batch_divides(self):
        if self.batch_size % self.devices:
            raise ValueError(f"train.batch_size {self.batch_size} is the global batch, shared by train.devices "
                             f"{self.devices} processes: it must be a multiple of {self.devices}")
        return self

    @model_validator(mode="after")
    def _cpu_precision(self):
        # on device 'auto' the same checks run when the device is known (senolab.engine.distributed)
        if self.device == "cpu" and self.precision == "16-mixed":
            raise ValueError("train.precision '16-mixed' needs a CUDA GPU (float16 with a gradient scaler); "
                             "on CPU use 'bf16-mixed' or '32'")
        if self.device == "cpu" and self.sync_batchnorm and self.devices > 1:
            raise ValueError("train.sync_batchnorm needs CUDA GPUs: PyTorch's SyncBatchNorm does not run on CPU")
        return self


class EvaluationConfig(Strict):
    bootstrap: int = Field(1000, ge=0)
    seed: int = 0


N_CLASSES = {"binary": 2, "three": 3}  # senolab.engine.data.CLASSES, without importing it


class ExperimentConfig(Strict):
    kind: Literal["experiment"] = "experiment"
    name: str = "experiment"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()
    evaluation: EvaluationConfig = EvaluationConfig()

    @model_validator(mode="after")
    def _class_weight_per_class(self):
        weights, n = self.loss.class_weights, N_CLASSES[self.data.classes]
        if weights is not None and len(weights) != n:
            raise ValueError(f"loss.class_weights has {len(weights)} entries but data.classes "
                             f"{self.data.classes!r} has {n} classes")
        return self

    @model_validator(mode="after")
    def _layer_decay_needs_layers(self):
        if self.train.layer_decay is not None and self.model.encoder != "timm":
            raise ValueError(f"train.layer_decay needs a timm encoder (timm groups its layers); "
                             f"model.encoder is {self.model.encoder!r}")
        return self


# ------------------------------------------------------------------------- self-supervised pretraining


class PretrainModel(Strict):
    """The encoder to pretrain (its weights are what `senolab pretrain` writes)."""

    encoder: Annotated[str, registered_in("senolab.models.encoders", "ENCODERS")] = "timm"
    encoder_options: dict[str, Any] = {"name": "resnet18"}


class PretrainOptions(Strict):
    """How to pretrain: the method (``senolab.pretrain.SSL_METHODS``) and its schedule.

    ``monitor_every``: epochs between k-NN accuracy checks of the embedding on the labelled
    validation part (which the pretraining itself never reads); the last epoch is always
    checked. ``crop_scale``: the area range of the random resized crops of each view."""

    method: Annotated[str, registered_in("senolab.pretrain.methods", "SSL_METHODS")] = "simclr"
    method_options: dict[str, Any] = {}
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(32, ge=2)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_epochs: int = Field(1, ge=0)
    time_budget_s: float | None = Field(None, gt=0)  # seconds of pretraining; the last epoch ends it
    crop_scale: tuple[float, float] = (0.4, 1.0)
    monitor_every: int = Field(5, ge=1)
    knn_k: int = Field(10, ge=1)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @field_validator("crop_scale")
    @classmethod
    def _crop_scale_is_a_range(cls, scale):
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"crop_scale must be (low, high) with 0 < low <= high <= 1; got {scale}")
        return scale


def check_method_fits(method: str, encoder: str, encoder_options: dict) -> None:
    """A ValueError (one line) when the SSL ``method`` cannot pretrain this encoder (MAE
    masks a ViT's patch tokens, so it needs a timm ViT)."""
    from senolab.pretrain.methods import SSL_METHODS

    SSL_METHODS.get(method).check_encoder(encoder, encoder_options)


class PretrainConfig(Strict):
    """``senolab pretrain``: an encoder pretrained on the unlabelled images of ``data``.

    The data config and its split are an experiment's: pretraining reads the images of the
    ``train`` part only (``pool: train+test`` adds the test part's images, which makes a
    later evaluation on that test part transductive), and the k-NN monitor reads the
    ``val`` part with its labels. A later `senolab train` with the same ``data:`` section
    therefore never evaluates on an image the encoder was pretrained on (unless
    ``train+test``)."""

    kind: Literal["pretrain"] = "pretrain"
    name: str = "pretrain"
    data: DataConfig = DataConfig()
    model: PretrainModel = PretrainModel()
    pretrain: PretrainOptions = PretrainOptions()
    pool: Literal["train", "train+test"] = "train"

    @model_validator(mode="after")
    def _method_fits_the_encoder(self):
        check_method_fits(self.pretrain.method, self.model.encoder, self.model.encoder_options)
        return self


class StudyPretrain(PretrainOptions):
    """A study's ``pretrain:`` step: one pretraining of the study's encoder per (target,
    seed), before the methods, reused by all of them.

    ``on: sources`` pools the source sites' training images; ``sources+target`` adds the
    unlabelled target images, which makes every result of the study transductive (and says
    so). ``config``: a pretrain config file whose ``pretrain:`` section is used instead of
    the inline options (its data and model sections are the study's own)."""

    on: Literal["sources", "sources+target"] = "sources"
    config: str | None = None

    @model_validator(mode="after")
    def _config_or_inline(self):
        inline = sorted(self.model_fields_set - {"on", "config"})
        if self.config is not None and inline:
            raise ValueError(f"give either config: (a pretrain config file) or inline options, not both "
                             f"(inline: {inline})")
        return self

    def options(self) -> PretrainOptions:
        """The pretraining options: the named config file's, or the inline ones."""
        if self.config is None:
            return PretrainOptions(**{k: getattr(self, k) for k in PretrainOptions.model_fields})
        return load_config(self.config, kind="pretrain").pretrain

    @property
    def transductive(self) -> bool:
        return self.on == "sources+target"


# ------------------------------------------------------------------------- study


class MethodSpec(Strict):
    name: str
    options: dict[str, Any] = {}
    # How results, run folders and figures name this entry (default: the method's name); two
    # entries of one method, e.g. CORAL at two weights, need a label each.
    label: str = ""

    @model_validator(mode="after")
    def _label_defaults_to_name(self):
        self.label = self.label or self.name
        return self


class PairSpec(Strict):
    sources: list[str]
    target: str


def method_names_as_specs(methods):
    """``methods: [erm, dann]`` is shorthand for ``[{name: erm}, {name: dann}]``."""
    if not isinstance(methods, list):
        return methods
    return [{"name": m} if isinstance(m, str) else m for m in methods]


class ExecutorConfig(Strict):
    """How a study's runs are carried out (senolab.runners.executors): one after another in
    this process, or each as a Ray task on this machine or a cluster. ``cpus`` and ``gpus``
    are what one run declares; its torch thread count is ``cpus`` under every executor, so
    both give the same results for the same seeds (None: the process's torch default, which
    differs between this process and a Ray worker). A study folder resumes under another
    executor or address, not under other ``cpus``."""

    name: Literal["sequential", "ray"] = "sequential"
    address: str | None = None  # a Ray cluster to join ("auto", "ray://host:10001"); None starts a local one
    cpus: int | None = Field(None, ge=1)
    gpus: float = Field(0.0, ge=0)  # per Ray task; a fraction shares a GPU between runs

    @model_validator(mode="after")
    def _address_is_for_ray(self):
        if self.address is not None and self.name != "ray":
            raise ValueError(f"address {self.address!r} is a Ray cluster's: it needs name: ray (--executor ray)")
        return self


# A search space's entries: option -> {kind: values}; the kinds Ray Tune samples from.
SEARCH_KINDS = {"uniform": "[low, high]", "loguniform": "[low, high], low > 0", "choice": "[value, ...]"}


class TuneSpec(Strict):
    """A Ray Tune search over one study method's options, scored on source validation only
    (senolab.runners.tuning); the chosen options replace the listed ones for that method."""

    method: str  # a label of the study's methods
    space: dict[str, Any]  # option -> {uniform: [lo, hi]}, {loguniform: [lo, hi]} or {choice: [...]}
    trials: int = Field(8, ge=1)
    epochs: int | None = Field(None, ge=1)  # per trial (default: the study's train.epochs)

    @field_validator("space")
    @classmethod
    def _known_kinds(cls, space: dict) -> dict:
        if not space:
            raise ValueError("space is empty: give option: {uniform: [low, high]} (or loguniform, choice)")
        for option, entry in space.items():
            kind, values = next(iter(entry.items())) if isinstance(entry, dict) and len(entry) == 1 else (None, None)
            if kind not in SEARCH_KINDS or not isinstance(values, list) or not values:
                raise ValueError(f"space.{option}: expected one of " + ", ".join(
                    f"{{{k}: {v}}}" for k, v in SEARCH_KINDS.items()) + f"; got {entry!r}")
            if kind != "choice" and (len(values) != 2 or not all(isinstance(v, (int, float)) for v in values)
                                     or values[0] >= values[1] or (kind == "loguniform" and values[0] <= 0)):
                raise ValueError(f"space.{option}: {kind} needs {SEARCH_KINDS[kind]}, low < high; got {values}")
        return space


class StudyConfig(Strict):
    kind: Literal["study"] = "study"
    name: str = "study"
    base: ExperimentConfig = ExperimentConfig()
    protocol: Literal["loso", "pairwise"] = "loso"
    pairs: list[PairSpec] = []
    methods: list[MethodSpec] = [MethodSpec(name="erm")]
    seeds: list[int] = [0]
    selection: Literal["source_val", "target_entropy", "oracle"] = "source_val"
    source_test_fraction: float = Field(0.2, gt=0, lt=1)
    embedding_figure: bool = True
    pretrain: StudyPretrain | None = None  # self-supervised pretraining of the encoder before the methods
    executor: ExecutorConfig = ExecutorConfig()
    tune: list[TuneSpec] = []

    @field_validator("methods", mode="before")
    @classmethod
    def _method_names(cls, methods):
        return method_names_as_specs(methods)

    @model_validator(mode="after")
    def _methods_are_known(self):
        # checked when the config is read, before any model trains
        from senolab.adaptation import METHODS

        unknown = [m.name for m in self.methods if m.name not in METHODS]
        if unknown:
            raise ValueError(f"methods: unknown {unknown}; known: {METHODS.names()}")
        return self

    @model_validator(mode="after")
    def _federated_methods_select_on_source_validation(self):
        # the server selects rounds by the clients' validation scores; it never holds target images
        from senolab.adaptation import METHODS

        federated = [m.label for m in self.methods if METHODS.get(m.name).federated]
        if federated and self.selection != "source_val":
            raise ValueError(f"methods {federated} are federated: they select by source validation only "
                             f"(selection: source_val), not {self.selection!r}")
        return self

    @model_validator(mode="after")
    def _one_device_per_run(self):
        if self.base.train.devices != 1:
            raise ValueError(f"base.train.devices is {self.base.train.devices}: a study trains each run on one "
                             "device (its executor runs several runs at once, docs/scale-out.md); "
                             "data-parallel training is for `senolab train` (docs/distributed.md)")
        return self

    @model_validator(mode="after")
    def _pretrain_fits_the_encoder(self):
        if self.pretrain is not None:
            check_method_fits(self.pretrain.options().method, self.base.model.encoder,
                              self.base.model.encoder_options)
        return self

    @model_validator(mode="after")
    def _tuned_methods_are_entries(self):
        labels = [m.label for m in self.methods]
        tuned = [spec.method for spec in self.tune]
        unknown = [label for label in tuned if label not in labels]
        if unknown:
            raise ValueError(f"tune: methods {unknown} are not entries of methods (labels: {labels})")
        twice = sorted({label for label in tuned if tuned.count(label) > 1})
        if twice:
            raise ValueError(f"tune: {twice} tuned more than once; give one search space per method entry")
        return self

    @model_validator(mode="after")
    def _labels_are_unique(self):
        labels = [m.label for m in self.methods]
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise ValueError(f"methods: {repeated} appear more than once; give each entry its own label "
                             "(e.g. {name: coral, options: {weight: 10}, label: coral_w10})")
        return self


# ------------------------------------------------------------------------- main job (`senolab run`)


class RadiomicsStep(Strict):
    enabled: bool = True
    params: str | None = None  # a pyradiomics YAML; None: senolab's shipped 2D parameters
    jobs: int | None = None


class ExplainStep(Strict):
    methods: list[str] = ["integrated_gradients", "gradcam"]
    max_cases: int = 8  # target cases attributed per method (Integrated Gradients costs ~50 passes each)

    @field_validator("methods")
    @classmethod
    def _known_explainers(cls, methods: list[str]) -> list[str]:
        # checked when the config is read, not after every model has trained
        from senolab.explain import EXPLAINERS

        unknown = [m for m in methods if m not in EXPLAINERS]
        if unknown:
            raise ValueError(f"unknown explainers {unknown}; known: {EXPLAINERS.names()}")
        return methods


class RunConfig(Strict):
    kind: Literal["run"] = "run"
    name: str = "quickstart"
    study: StudyConfig
    radiomics: RadiomicsStep = RadiomicsStep()
    explain: ExplainStep = ExplainStep()
    tracking_uri: str | None = None  # None: sqlite store inside the run folder
    track: bool = True


# Keys that say where results are sent, not what they are: changing them on an existing
# run folder is allowed (and honoured).
TRACKING_KEYS = ("tracking_uri", "track")


def quickstart_config() -> RunConfig:
    """The built-in study: three synthetic sites, a concat-fused U-Net, four methods.

    ``SENOLAB_QUICK=1`` in the environment makes it a smoke run (fewer images, one epoch,
    fewer bootstrap resamples and explained cases) that runs the same steps."""
    quick = os.environ.get("SENOLAB_QUICK", "") not in ("", "0")
    base = ExperimentConfig(
        name="quickstart",
        data=DataConfig(synthetic=SyntheticOptions(n_sites=3, images_per_site=24 if quick else 60, image_size=128),
                        image_size=64),
        model=ModelConfig(fusion="concat", fusion_options={"modalities": ["metadata", "radiomics"]},
                          heads=HeadsConfig(classification=True, segmentation=True, bbox=False)),
        train=TrainConfig(epochs=1 if quick else 4, batch_size=16, lr=0.003),
        evaluation=EvaluationConfig(bootstrap=30 if quick else 300),
    )
    study = StudyConfig(name="quickstart", base=base, protocol="pairwise",
                        pairs=[PairSpec(sources=["site_a", "site_b"], target="site_c")],
                        methods=[MethodSpec(name=m) for m in ("erm", "dann", "adabn", "histogram_matching")])
    return RunConfig(study=study, explain=ExplainStep(max_cases=2 if quick else 8))


# ------------------------------------------------------------------------- fusion ablation

Modality = Literal["metadata", "radiomics"]


class AblationOptions(Strict):
    """The ``ablation`` section of an ablation config (see senolab.runners.ablation)."""

    folds: int = Field(5, ge=2)
    fusions: list[str] = ["concat", "cross_attention", "graph"]
    modalities: list[list[Modality]] = [["metadata"], ["radiomics"], ["metadata", "radiomics"]]
    fusion_options: dict[str, dict[str, Any]] = {}
    finetune: dict[str, Any] | None = {"train": {"epochs": 6, "lr": 0.001, "warmup_epochs": 0}}
    radiomics_params: str | None = None
    radiomics_jobs: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _known_names(self):
        from senolab.fusion.base import FUSIONS, fusion_options

        unknown = [f for f in self.fusions if f not in FUSIONS]
        if unknown:
            raise ValueError(f"fusions: unknown {unknown}; known: {FUSIONS.names()}")
        stray = sorted(set(self.fusion_options) - set(self.fusions))
        if stray:
            raise ValueError(f"fusion_options: {stray} are not among the fusions {self.fusions}")
        for name, options in self.fusion_options.items():
            bad = sorted(set(options) - set(fusion_options(FUSIONS.get(name))))
            if bad:
                raise ValueError(f"fusion_options.{name}: unknown options {bad}; known: {fusion_options(FUSIONS.get(name))}")
        if any(not m for m in self.modalities):
            raise ValueError("modalities: every entry must name at least one of metadata, radiomics")
        return self

    def finetuning(self, config: ExperimentConfig, encoder_checkpoint: Path) -> ExperimentConfig:
        """Stage 2: the base config with the ``finetune`` overrides, starting from the stage-1 encoder."""
        overrides = merge_overrides(self.finetune or {}, {"model": {"checkpoint": str(encoder_checkpoint)}})
        return parse_config(merge_overrides(config.model_dump(), overrides), source="ablation.finetune")

    @property
    def uses_radiomics(self) -> bool:
        return bool(self.fusions) and any("radiomics" in m for m in self.modalities)


class AblationConfig(ExperimentConfig):
    """An experiment (the base model, data and training) with its ``ablation`` section."""

    kind: Literal["ablation"] = "ablation"  # type: ignore[assignment]
    ablation: AblationOptions

    def experiment(self) -> ExperimentConfig:
        """The experiment part, without the ``ablation`` section."""
        return ExperimentConfig(**{k: getattr(self, k) for k in ExperimentConfig.model_fields if k != "kind"})


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


KINDS: dict[str, type[BaseModel]] = {"experiment": ExperimentConfig, "study": StudyConfig,
                                     "ablation": AblationConfig, "run": RunConfig, "pretrain": PretrainConfig}
COMMANDS = {"experiment": "senolab train", "study": "senolab study", "ablation": "senolab fusion ablate",
            "run": "senolab run", "pretrain": "senolab pretrain"}


def load_config(path: str | Path, overrides: dict | None = None, *, kind: str = "experiment"):
    """Read a YAML config of ``kind`` (one of :data:`KINDS`) and validate it into that kind's
    model; ``overrides`` are merged in first (nested dicts). A file of another kind is
    refused with one line naming the file, the kind found and the kind expected."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    raw = merge_overrides(read_yaml_mapping(path), overrides or {})
    check_kind(raw, kind, path)
    return validate(KINDS[kind], raw, str(path))


def check_kind(raw: dict, expected: str, path: str | Path) -> None:
    """Refuse a config of another kind than ``expected``, in one line.

    A file without ``kind:`` is taken to be of the expected kind: configs written before
    ``kind:`` existed (run folders, user configs) still load; a file of another kind
    without one fails validation on its own keys instead."""
    found = raw.get("kind", expected)
    if found == expected:
        return
    if not isinstance(found, str) or found not in KINDS:
        raise ConfigError(f"{path}: kind {found!r} is not a config kind; expected {expected!r} "
                          f"(kinds: {', '.join(KINDS)})")
    raise ConfigError(f"{path}: kind is {found!r}, expected {expected!r} "
                      f"(a config of kind {found!r} runs with `{COMMANDS[found]}`)")


def parse_config(raw: dict, source: str = "config") -> ExperimentConfig:
    return validate(ExperimentConfig, raw, source)


def load_study_config(path: str | Path) -> StudyConfig:
    return load_config(path, kind="study")


def load_run_config(path: str | Path | None) -> RunConfig:
    """A ``run`` config, or the built-in quickstart when ``path`` is None."""
    return quickstart_config() if path is None else load_config(path, kind="run")


def load_ablation(path: str | Path) -> tuple[ExperimentConfig, AblationOptions]:
    """Read an ablation config: the experiment, and its ``ablation`` section."""
    config: AblationConfig = load_config(path, kind="ablation")
    experiment = config.experiment()
    if config.ablation.finetune is not None:
        config.ablation.finetuning(experiment, Path("stage-1 encoder"))  # a bad override is named now, not after stage 1
    return experiment, config.ablation


def merge_overrides(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge_overrides(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
