"""Hyper-parameter search for a study method's options with Ray Tune, on source validation only.

A study's ``tune:`` entry names a method entry and a search space over its options
(``{uniform: [lo, hi]}``, ``{loguniform: [lo, hi]}``, ``{choice: [...]}``). For every
(sources, target) pair, before that method's runs, :func:`tune_method` runs ``trials``
trainings of it on the pair's source training part (Ray Tune, seeded basic variant
generation: the same trials every time), each scored by its best source-validation score
(``val_score``, whatever the study's selection rule), and keeps the best options.

The label wall: a trial's data holds no target label at all. :func:`without_target_labels`
blanks the target cases' label, masks, boxes and outcome columns before the data reaches a
trial, and a method that needs the target's images gets them through
:func:`senolab.adaptation.wall.strip_labels` as in training, so reading a target label
raises :class:`~senolab.adaptation.wall.TargetLabelAccess`.

The record, ``<study>/tuning/<target>/<label>.json``: the space, every trial's options and
score, the chosen options; the study's summary.json and MLflow parent carry it too. A
record that exists is read back: a resumed study does not tune again.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from senolab.adaptation import METHODS
from senolab.engine.config import MethodSpec, PairSpec, StudyConfig, TuneSpec
from senolab.engine.data import PreparedData
from senolab.registry import Registry

TUNING_FOLDER = "tuning"
METRIC = "val_score"  # the trainer's source-validation score (mean of AUC and Dice over the heads)

# Search-space kinds by name (TuneSpec.space): each builds Ray Tune's sampler from its values.
SPACES: Registry = Registry("search space kind")
SPACES.register("uniform")(lambda tune, values: tune.uniform(*values))
SPACES.register("loguniform")(lambda tune, values: tune.loguniform(*values))
SPACES.register("choice")(lambda tune, values: tune.choice(values))


def search_space(space: dict) -> dict:
    """Ray Tune's ``param_space`` for a TuneSpec's ``space``."""
    from ray import tune

    return {option: SPACES.build(kind, tune, values) for option, entry in space.items()
            for kind, values in entry.items()}


def record_path(study_dir: Path, target: str, label: str) -> Path:
    return Path(study_dir) / TUNING_FOLDER / target / f"{label}.json"


def tune_method(config: StudyConfig, spec: TuneSpec, pair: PairSpec, data: PreparedData, weights: Path | None,
                study_dir: Path, progress: bool = True) -> Path:
    """Search ``spec``'s options for its method at ``pair`` (once; a record is read back)
    and write the record; returns its path."""
    path = record_path(study_dir, pair.target, spec.method)
    if path.is_file():
        return path
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from senolab.runners.executors import StudyJob, ray_session
    from senolab.runners.study import pair_methods

    entry = next(m for m in config.methods if m.label == spec.method)
    method = pair_methods(config.model_copy(update={"methods": [entry]}), pair)[0]
    folder = path.with_suffix("")
    job = StudyJob(config, Path(study_dir), run_task=None, progress=False)
    trial = tune.with_parameters(_trial, job=job, method=method, epochs=spec.epochs, weights=weights,
                                 data=without_target_labels(data), folder=str(folder))
    resources = {"cpu": config.executor.cpus or 1, "gpu": config.executor.gpus}
    if progress:
        print(f"tuning {spec.method} for target {pair.target}: {spec.trials} trials on source validation", flush=True)
    with ray_session(config.executor):
        tuner = tune.Tuner(
            tune.with_resources(trial, resources), param_space=search_space(spec.space),
            tune_config=tune.TuneConfig(metric=METRIC, mode="max", num_samples=spec.trials,
                                        search_alg=BasicVariantGenerator(random_state=config.seeds[0])),
            run_config=tune.RunConfig(name=f"{pair.target}-{spec.method}", storage_path=str(folder.absolute() / "ray"),
                                      verbose=0))
        grid = tuner.fit()
    trials = sorted(({"options": result.config, METRIC: result.metrics.get(METRIC),
                      "error": str(result.error) if result.error else None} for result in grid),
                    key=lambda t: json.dumps(t["options"], sort_keys=True))
    scored = [t for t in trials if t[METRIC] is not None]
    if not scored:
        raise RuntimeError(f"tuning {spec.method} at {pair.target}: every trial failed; first error: "
                           f"{trials[0]['error']}")
    best = max(scored, key=lambda t: t[METRIC])
    record = {"method": spec.method, "method_name": method.name, "target": pair.target, "sources": pair.sources,
              "metric": f"{METRIC} (source validation; target labels absent from the trials' data)",
              "space": spec.space, "trials": trials, "chosen": best["options"], "best_val_score": best[METRIC]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, default=float) + "\n")
    shutil.rmtree(folder / "ray", ignore_errors=True)  # Tune's own state: the record says it all
    return path


def _trial(options: dict, job, method: MethodSpec, epochs: int | None, weights: Path | None, data: PreparedData,
           folder: str) -> None:
    """One Ray Tune trial: report the trained method's best source-validation score."""
    from ray import tune

    from senolab.runners.executors import enter_study, torch_threads

    enter_study(job)  # Tune runs a trial in its own folder: relative data paths are the driver's
    name = "trial_" + "_".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in sorted(options.items()))
    with torch_threads(job.config.executor.cpus):
        score = trial_score(job.config, method, options, data, Path(folder) / name, epochs, weights)
    tune.report({METRIC: score})


def trial_score(config: StudyConfig, method: MethodSpec, options: dict, data: PreparedData, folder: Path,
                epochs: int | None = None, weights: Path | None = None) -> float:
    """Train ``method`` with ``options`` over its own at the study's first seed and return
    its best source-validation score. ``data`` must be :func:`without_target_labels`'s."""
    from senolab.engine.trainer import Trainer

    base = config.base.model_copy(deep=True)
    base.train.seed = config.seeds[0]
    base.train.early_stopping.metric = METRIC
    if epochs is not None:
        base.train.epochs = epochs
    if weights is not None:  # as the study's runs do: from the pretrained encoder
        base.model.encoder_options = {**base.model.encoder_options, "pretrained": str(weights)}
    trainer = Trainer(base, data, folder, method=method.name, method_options={**method.options, **options},
                      target_part="test" if METHODS.get(method.name).transductive else None)
    result = trainer.fit(progress=False)
    for spent in ("last.pt", "best.pt"):
        (folder / spent).unlink(missing_ok=True)
    return float(result.best_score)


def without_target_labels(data: PreparedData) -> PreparedData:
    """The pair's data as a trial sees it: source train and validation, and the target
    ('test') with its labels, masks, boxes and outcome columns removed; the held-out source
    test cases are left out."""
    from dataclasses import replace

    cohort = data.cohort
    parts = data.parts[data.parts != "source_test"]
    target = set(parts.index[parts == "test"])
    table = cohort.table[cohort.table["case_id"].isin(parts.index)].copy()
    is_target = table["case_id"].isin(target)
    for column in [c for c in cohort.outcome_columns() if c in table]:
        table[column] = table[column].astype(object).where(~is_target, None)
    table["label"] = table["label"].astype(object).where(~is_target, None)
    table["mask_kind"] = table["mask_kind"].where(~is_target, "none")
    for column in ("mask_paths", "other_mask_paths", "lesion_bboxes"):
        if column in table:
            table[column] = [[] if hidden else value for value, hidden in zip(table[column], is_target)]
    arrays = {case: (held[0], []) if case in target else held for case, held in cohort.arrays.items()
              if case in parts.index}
    blind = replace(cohort, table=table.reset_index(drop=True), arrays=arrays, splits={})
    return replace(data, cohort=blind, parts=parts)
