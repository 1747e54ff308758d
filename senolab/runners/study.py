"""The cross-institution study: train at some sites, test at an unseen one, per method.

A study config names the cohorts, the protocol (``loso``: every site in turn is the
target and all others are sources; ``pairwise``: the listed source -> target pairs), the
adaptation methods, the seeds and the model-selection rule. For every (target, method,
seed) the runner

1. splits the source sites into train / validation / held-out source test (patient- and
   duplicate-disjoint); every target case is test, and reaches training only unlabelled;
2. trains the multi-task model with the method's hook on each step;
3. selects the checkpoint by source validation (default), by an unsupervised criterion
   on the unlabelled target (``target_entropy``), or by target labels (``oracle`` -
   labelled as such in every result, never the default);
4. predicts the target site (after the method's inference-time adaptation), the
   held-out source cases (in-site performance, for the gap) and the source validation
   cases, on which alone the operating thresholds (Youden, sensitivity 0.90, specificity
   0.90) and the temperature are chosen and stored with the model
   (:mod:`senolab.evaluation.clinical`);
5. measures the domain gap that remains in the embeddings: the cross-validated accuracy
   of a logistic-regression site classifier (source vs target), 0.5 = indistinguishable;
6. at the target: sensitivity, specificity, PPV and NPV at each stored threshold (with the
   target's own, oracle, threshold beside), ECE and Brier before and after the
   temperature, decision curves.

At the end, with the per-case predictions saved, the study writes the figures of those
(``calibration.png``, ``decision_curves.png``) and the local recalibration, which USES k
TARGET LABELS and is therefore kept apart (``recalibration.csv``, ``recalibration.md``,
``recalibration.png``; :mod:`senolab.evaluation.recalibration`): never in results.csv,
never used to choose a method.

With a ``pretrain:`` section, the study's encoder is first pretrained without labels
(:mod:`senolab.runners.pretrain`), once per (target, seed), on the source sites' training
images or on those plus the unlabelled target images; every method of that target and seed
fine-tunes from it. Pretraining on the target's images is transductive: every result row
and tag of such a study says so (``transductive``, and ``pretrain`` names the pool).

The runs are carried out by the config's executor (:mod:`senolab.runners.executors`):
one after another in this process (``sequential``, the default) or each as a Ray task on
this machine or a cluster (``ray``); both give the same results when ``executor.cpus``
fixes each run's torch threads. With a ``tune:`` section, a method's options are first
searched per pair with Ray Tune on source validation only (:mod:`senolab.runners.tuning`).

Each run writes ``runs/<target>/<method>/seed<k>/``; a run with ``done.json`` is done
and skipped when the study is started again, and a half-trained run resumes from its
``last.pt``, so a killed study continues where it stopped. A run that raises is recorded
(``error.json`` with its traceback, the ``failed`` section of summary.json and results.md)
while the others finish; the study then raises :class:`StudyRunsFailed`, and a rerun
retries the failed runs. ``study.yaml`` records the config: a study folder is only resumed
with the same one (another is refused, naming the keys that differ; the executor's name and
address may change, its ``cpus`` may not).
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from senolab.adaptation import METHODS
from senolab.errors import WorkFailed
from senolab.cohorts.splits import check_leakage, holdout
from senolab.engine.config import (ConfigError, MethodSpec, PairSpec, StudyConfig,  # noqa: F401 (callers import them from here)
                                   load_study_config, method_names_as_specs)
from senolab.engine.data import PreparedData, load_cohorts, prepare, skipped_records
from senolab.engine.predict import predict
from senolab.engine.trainer import Trainer, pick_device
from senolab.evaluation import METRICS, POOLED, compare_methods, evaluate
from senolab.evaluation.clinical import (SECTIONS, clinical_columns, clinical_metrics, clinical_sections,
                                         decision_points, deployment_state, reliability_points)
from senolab.evaluation.plots import plot_training_curves
from senolab.evaluation.report import SUMMARY_FILE, WORST, json_safe, load_summary, worst_sites
from senolab.paths import writable_folder
from senolab.registry import Registry
from senolab.runners.executors import EXECUTORS, Failure, RunBoard, StudyJob, Task
from senolab.runners.packaged import load_packaged_model, save_package
from senolab.tracking.runfolder import claim_folder, done_record, mark_done
from senolab.tracking.provenance import part_datasets, table_fingerprint
from senolab.tracking.rundir import RunDir, unit_name
from senolab.evaluation.formatting import interval_text, number_text

CURVES_FILE = "training_curves.png"
SOURCE_VAL = "source_val"  # the domain of the source validation predictions (thresholds are chosen there)
RECALIBRATION_FILE = "recalibration.csv"
PACKAGE = "model"  # the unit's model with its preprocessing (senolab.runners.packaged)


# Protocols: how a study chooses its (sources, target) pairs from the data's sites.
PROTOCOLS: Registry[Callable[["StudyConfig", list[str]], list["PairSpec"]]] = Registry("study protocol")


@PROTOCOLS.register("loso")
def leave_one_site_out(config: StudyConfig, sites: list[str]) -> list[PairSpec]:
    """Every site in turn is the target; all the others are its sources."""
    return [PairSpec(sources=[s for s in sites if s != t], target=t) for t in sites]


@PROTOCOLS.register("pairwise")
def listed_pairs(config: StudyConfig, sites: list[str]) -> list[PairSpec]:
    """The pairs the config lists, each site checked against the data."""
    for pair in config.pairs:
        unknown = sorted(set(pair.sources + [pair.target]) - set(sites))
        if unknown:
            raise ConfigError(f"pairs: sites {unknown} are not in the data (sites: {sites})")
    if not config.pairs:
        raise ConfigError("protocol 'pairwise' needs pairs: [{sources: [...], target: ...}]")
    return config.pairs


def study_pairs(config: StudyConfig, sites: list[str]) -> list[PairSpec]:
    """The (sources, target) pairs the protocol asks for, checked against the data's sites."""
    return PROTOCOLS.build(config.protocol, config, sites)


def unit_folder(study_dir: Path, target: str, label: str, seed: int) -> Path:
    """Where a study keeps one (target, method, seed): ``runs/<target>/<label>/seed<k>``."""
    return Path(study_dir) / "runs" / target / label / f"seed{seed}"


@dataclass
class StudyUnit:
    """One (target, method, seed) of a study: its run ``folder`` and the prepared ``data``."""

    pair: PairSpec
    spec: MethodSpec
    seed: int
    folder: Path
    data: PreparedData
    weights: Path | None = None  # the study's pretrained encoder for this target and seed
    pretrain: str = "none"  # what it was pretrained on: none, sources, sources+target

    @property
    def transductive(self) -> bool:
        """The method reads the target's images, or the encoder was pretrained on them."""
        return METHODS.get(self.spec.name).transductive or self.pretrain == "sources+target"

    @property
    def name(self) -> str:
        return unit_name(self.spec.label, self.pair.target, self.seed)

    def datasets(self) -> list[dict]:
        """The unit's parts (train, val, source_test and the unseen target as test) for MLflow."""
        cohort = self.data.cohort
        return part_datasets(cohort.table, self.data.parts, str(cohort.root or cohort.name))

    def tags(self) -> dict[str, str]:
        table = self.data.cohort.table
        cohorts = ",".join(sorted(table.loc[table["site"] == self.pair.target, "cohort"].astype(str).unique()))
        return {"method": self.spec.label, "method_name": self.spec.name, "target_site": self.pair.target,
                "cohort": cohorts,
                "seed": str(self.seed), "transductive": str(self.transductive).lower(),
                "pretrain": self.pretrain, "source_sites": ",".join(self.pair.sources)}


def run_study(config: StudyConfig, out_dir: str | Path, progress: bool = True, cohort=None, *,
              run: RunDir | None = None, tracking_uri: str | None = None, track: bool = True,
              on_unit: Callable[[StudyUnit], list[Path]] | None = None) -> dict:
    """Every (target, method, seed) run of the study; ``cohort`` skips loading it again.

    The runs are planned here, carried out by the config's executor
    (:mod:`senolab.runners.executors`: one after another here, or as Ray tasks) and handed
    back as they finish. Tracked in MLflow from here: a parent run for the study (in
    ``run``, the caller's run directory, or one of the study folder's own) and a child per
    unit (its epochs live under the sequential executor). ``on_unit(unit)`` runs after a
    unit is trained and evaluated and before it is logged (the main job explains it there)
    and returns files to log with it. A failing run is recorded (its ``error.json``, the
    ``failed`` section of summary.json and results.md) while the others finish; the study
    then raises :class:`StudyRunsFailed` naming them, and a rerun retries them.
    """
    check_executor(config)  # before the folder exists: a refused command leaves nothing behind
    out = writable_folder(Path(out_dir).absolute(), "study folder")
    claim_folder(out, config.model_dump(), "study.yaml", ignore=EXECUTION_KEYS, command="senolab study")
    cohort = cohort if cohort is not None else load_cohorts(config.base.data, progress)
    own_run = run is None
    if own_run:
        run = RunDir.open_or_create(out, config.name, config.model_dump(), tracking_uri=tracking_uri, track=track,
                                    data_fingerprint=table_fingerprint(cohort.table), command="study")
    pairs = study_pairs(config, sorted(cohort.table["site"].unique()))
    planned, tuning = [], {}
    pretrain = config.pretrain.on if config.pretrain is not None else "none"
    for pair in pairs:
        data = pair_data(config, cohort, pair)
        weights = {seed: _pretrained(config, data, pair, seed, out, run, progress) for seed in config.seeds}
        specs, tuning[pair.target] = tuned_methods(config, pair, data, weights[config.seeds[0]], out, progress)
        for spec in specs:
            for seed in config.seeds:
                unit = StudyUnit(pair, spec, seed, unit_folder(out, pair.target, spec.label, seed), data,
                                 weights[seed], pretrain)
                planned.append(Task(unit, _erm_unit(config, unit)))
    outcomes = _carry_out(config, out, planned, run, progress, on_unit)
    failed = [_failure_entry(task, outcomes[task.name]) for task in planned if isinstance(outcomes[task.name], Failure)]
    notes = study_notes(config, failed, tuning)
    finished = [task for task in planned if not isinstance(outcomes[task.name], Failure)]
    summary, files = _aggregate(config, out, finished, outcomes, cohort, pairs, notes)
    files += [path for per_target in tuning.values() for path in per_target.values()]
    if own_run:
        run.finish(metrics=study_headline(pd.read_csv(out / "results.csv")) if finished else {}, files=files,
                   echo=progress)
    if failed:
        raise StudyRunsFailed(failed)
    return summary


# Config keys that change how the runs are carried out, not their results: a study folder
# resumes under another executor or cluster (executor.cpus is compared: it changes results).
EXECUTION_KEYS = ("executor.name", "executor.address")


class StudyRunsFailed(WorkFailed):
    """Some runs of a study failed; each is recorded in its folder's error.json and the
    study's summary. The others finished; a rerun of the study retries the failed ones."""

    def __init__(self, failed: list[dict]):
        self.failed = failed
        named = "; ".join(f"{entry['run']} ({entry['error']})" for entry in failed)
        super().__init__(f"{len(failed)} run(s) of the study failed: {named}. Each folder's error.json holds the "
                         "traceback; run the study again to retry them")


def check_executor(config: StudyConfig) -> None:
    """The executor section as given (flags included), checked before any work."""
    from senolab.engine.config import validate

    validate(StudyConfig, {"executor": config.executor.model_dump()}, "the study's executor (config and flags)")


def _carry_out(config: StudyConfig, out: Path, planned: list[Task], run: RunDir, progress: bool,
               on_unit) -> dict[str, dict | Failure]:
    """Each planned run's outcome, by unit name: runs done before are read back, the others
    are handed to the executor (a run that trains as another after that one) and each is
    recorded (error.json) and logged to MLflow as it comes back."""
    outcomes: dict[str, dict | Failure] = {}
    pending = []
    for task in planned:
        done = done_record(task.unit.folder)
        if done is None:
            pending.append(task)
        else:
            outcomes[task.name] = done
            _log_once(run, task.unit, done, on_unit)
    pending.sort(key=lambda task: task.base is not None)  # the runs others train as first
    board = RunBoard(len(planned), len(planned) - len(pending), progress)
    job = StudyJob(config, out, _run_task, live=lambda unit: [run.live(unit.name, tags=unit.tags())],
                   progress=progress)
    for task, outcome in EXECUTORS.get(config.executor.name)(job, pending, board):
        outcomes[task.name] = outcome
        _record_outcome(task.unit, outcome)
        if not isinstance(outcome, Failure):
            _log_once(run, task.unit, outcome, on_unit)
        board.finished(task.name, failed=isinstance(outcome, Failure))
    board.close()
    return outcomes


def _run_task(config: StudyConfig, task: Task, progress: bool, callbacks: list) -> dict:
    """What an executor runs for one task (in this process or a Ray worker)."""
    return _run_once(config, task.unit, progress, callbacks=callbacks, erm=task.base)


ERROR_FILE = "error.json"


def _record_outcome(unit: StudyUnit, outcome: dict | Failure) -> None:
    """A failed run's error.json (its traceback); a run that succeeds on a retry loses it."""
    path = unit.folder / ERROR_FILE
    if isinstance(outcome, Failure):
        unit.folder.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"run": unit.name, "error": outcome.error, "host": outcome.host,
                                    "traceback": outcome.traceback}, indent=1) + "\n")
    else:
        path.unlink(missing_ok=True)


def _failure_entry(task: Task, failure: Failure) -> dict:
    unit = task.unit
    return {"run": unit.name, "target_site": unit.pair.target, "method": unit.spec.label, "seed": unit.seed,
            "error": failure.error, "error_file": str(unit.folder / ERROR_FILE)}


def _log_once(run: RunDir, unit: StudyUnit, result: dict, on_unit) -> None:
    if not run.is_logged(unit.name):
        aggregates, sections = _unit_evaluation(unit)
        _log_unit(run, unit, result, aggregates, on_unit, sections)


def _unit_evaluation(unit: StudyUnit) -> tuple[dict, dict]:
    """The unit's aggregates (per site, pooled and worst, as :func:`senolab.tracking.unit_metrics`
    reads them) and clinical sections, from its summary.json."""
    unit_summary = load_summary(unit.folder / SUMMARY_FILE)
    sections = {name: unit_summary[name] for name in SECTIONS if name in unit_summary}
    return unit_summary["aggregates"][unit.spec.label], sections


def _aggregate(config: StudyConfig, out: Path, finished: list[Task], outcomes: dict, cohort, pairs: list[PairSpec],
               notes: dict) -> tuple[dict, list[Path]]:
    """The study's tables, summary and figures from its finished runs (in plan order)."""
    if not finished:  # every run failed: the summary names them, there is nothing to tabulate
        summary = json_safe({"config": config.model_dump(), **notes})
        (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=1, allow_nan=False) + "\n")
        (out / "results.md").write_text(notes_markdown(notes))
        return summary, [out / SUMMARY_FILE, out / "results.md"]
    rows, unit_tables, per_unit, clinical = [], [], {}, {}
    for task in finished:
        unit = task.unit
        rows.append(outcomes[task.name]["row"])
        unit_tables.append(pd.read_parquet(unit.folder / "predictions.parquet"))
        aggregates, sections = _unit_evaluation(unit)
        per_unit.setdefault((unit.spec.label, unit.seed), {})[unit.pair.target] = aggregates[unit.pair.target]
        clinical.setdefault((unit.spec.label, unit.seed), {})[unit.pair.target] = sections
    cases = pd.concat(unit_tables, ignore_index=True)
    results = pd.DataFrame(rows)
    results["auc_p_vs_erm"] = paired_delong_vs_erm(results, cases)
    results.to_csv(out / "results.csv", index=False)
    (out / "results.md").write_text(results_markdown(results) + "\n" + operating_markdown(results)
                                    + notes_markdown(notes))
    summary = _summary(config, per_unit, cases, out, skipped_records(cohort), clinical, notes)
    files = [out / "results.csv", out / "results.md", out / SUMMARY_FILE, *clinical_figures(out, clinical)]
    files += write_recalibration(out, unit_tables)
    if config.embedding_figure and len(finished) == len(outcomes):
        files.append(embedding_figure(out, pairs, config))
    return summary, files


TIME_BUDGET_NOTE = ("train.time_budget_s is set: how far each run trained depends on the machine's speed and on "
                    "the resources the executor gives each run (executor.cpus, executor.gpus), so these results "
                    "hold for this machine and executor; another may train more or fewer steps")


def study_notes(config: StudyConfig, failed: list[dict], tuning: dict[str, dict[str, Path]]) -> dict:
    """What summary.json and results.md say beside the results: failed runs, the time
    budget's dependence on the machine, the tuned options."""
    notes: dict = {"failed": failed}
    if config.base.train.time_budget_s is not None:
        notes["time_budget"] = TIME_BUDGET_NOTE
    if any(tuning.values()):
        notes["tuning"] = {target: {label: json.loads(path.read_text()) for label, path in per_label.items()}
                           for target, per_label in tuning.items() if per_label}
    return notes


def notes_markdown(notes: dict) -> str:
    lines = []
    if notes.get("time_budget"):
        lines += ["", f"Note: {notes['time_budget']}."]
    for target, per_label in notes.get("tuning", {}).items():
        for label, record in per_label.items():
            best = number_text(record["best_val_score"])
            lines += ["", f"Tuned on source validation at target {target}: {label} uses {record['chosen']} "
                          f"(best of {len(record['trials'])} trials, val_score {best})"]
    if notes["failed"]:
        lines += ["", "## Failed runs", "", "| run | error |", "|---|---|"]
        lines += [f"| {entry['run']} | {entry['error']} |" for entry in notes["failed"]]
    return "\n".join(lines) + ("\n" if lines else "")


def tuned_methods(config: StudyConfig, pair: PairSpec, data: PreparedData, weights: Path | None, out: Path,
                  progress: bool) -> tuple[list[MethodSpec], dict[str, Path]]:
    """The pair's method entries, those with a ``tune:`` entry carrying the options chosen
    for this pair on source validation (:mod:`senolab.runners.tuning`); and the records."""
    if not config.tune:
        return pair_methods(config, pair), {}
    from senolab.runners.tuning import tune_method

    records = {spec.method: tune_method(config, spec, pair, data, weights, out, progress) for spec in config.tune}
    chosen = {label: json.loads(path.read_text())["chosen"] for label, path in records.items()}
    methods = [m.model_copy(update={"options": {**m.options, **chosen[m.label]}}) if m.label in chosen else m
               for m in config.methods]
    return pair_methods(config.model_copy(update={"methods": methods}), pair), records


def pair_methods(config: StudyConfig, pair: PairSpec) -> list[MethodSpec]:
    """The study's method entries at one pair, each expanded as its method asks (a
    local-only entry becomes one per source site: ``local_<site>``)."""
    specs = []
    for spec in config.methods:
        for suffix, options in METHODS.get(spec.name).study_entries(pair.sources):
            label = f"{spec.label}_{suffix}" if suffix else spec.label
            specs.append(spec.model_copy(update={"options": {**spec.options, **options}, "label": label}))
    return specs


def _pretrained(config: StudyConfig, data: PreparedData, pair: PairSpec, seed: int, out: Path, run, progress: bool):
    """The pretrained encoder of (target, seed), pretraining it the first time; None
    without a ``pretrain:`` section."""
    if config.pretrain is None:
        return None
    from senolab.runners.pretrain import study_pretraining

    return study_pretraining(config, data, pair.target, seed, out, run, progress)


def _log_unit(run, unit: StudyUnit, result: dict, aggregates: dict, on_unit, sections: dict) -> None:
    """A unit's MLflow child: headline metrics (target AUC with CI, in-site AUC, gap,
    site-classifier accuracy, the rates at each source threshold, ECE and Brier...), its
    files, its epochs (history.csv) and its times."""
    from senolab.tracking import unit_metrics
    from senolab.tracking.records import metric_values

    row = result["row"]
    metrics = unit_metrics(aggregates, unit.pair.target)
    metrics.update(metric_values(clinical_metrics(sections, unit.pair.target)))
    metrics.update({k: row[k] for k in ("insite_auc", "gap_auc", "insite_dice", "gap_dice", "site_classifier_acc",
                                        "best_epoch", "n_target") if row.get(k) is not None and np.isfinite(row[k])})
    files = [unit.folder / name for name in ("predictions.parquet", SUMMARY_FILE, "results.csv", "embeddings.npz",
                                             PACKAGE)]
    history, tags = unit.folder / "history.csv", unit.tags()
    if history.exists():
        files.append(plot_training_curves(pd.read_csv(history), unit.folder / "figures" / CURVES_FILE,
                                          title=f"{unit.spec.label} -> {unit.pair.target}: training",
                                          selected_epoch=int(row["best_epoch"])))
    else:  # a method that trains as another: its epochs are that unit's, logged with it
        history, tags = None, {**tags, "trained_as": METHODS.get(unit.spec.name).trains_as}
    files += on_unit(unit) if on_unit is not None else []
    run.log_unit(unit.name, metrics=metrics, tags=tags, files=files, history=history,
                 params={"method": {"name": unit.spec.name, **unit.spec.options}, "seed": unit.seed},
                 start_ms=result.get("start_ms"), folder=unit.folder, datasets=unit.datasets())


def study_headline(results: pd.DataFrame) -> dict[str, float]:
    """The study's own MLflow metrics: per method, its mean and worst unseen-site AUC."""
    metrics = {}
    for method, rows in results.groupby("method"):
        auc = rows["auc"].dropna()
        if len(auc):
            metrics[f"{method}.mean_target_auc"] = float(auc.mean())
            metrics[f"{method}.worst_target_auc"] = float(auc.min())
    return metrics


def pair_data(config: StudyConfig, cohort, pair: PairSpec) -> PreparedData:
    """Sources split train/val/source_test; the whole target site is 'test'."""
    table = cohort.table[cohort.table["site"].isin(pair.sources + [pair.target])]
    sub = type(cohort)(cohort.name, table.reset_index(drop=True), cohort.columns, cohort.splits, cohort.problems,
                       cohort.root, cohort.arrays)
    split = config.base.data.split.model_copy(update={"kind": "sites", "test_sites": [pair.target]})
    data = prepare(config.base.data.model_copy(update={"split": split}), cohort=sub, progress=False)
    parts = data.parts.copy()
    train = sub.table[sub.table["case_id"].isin(parts.index[parts == "train"])]
    held = holdout(train, config.source_test_fraction, seed=split.seed + 2)
    parts.loc[held.index[held == "test"]] = "source_test"
    for a in ("train", "val", "source_test"):
        for b in ("train", "val", "source_test", "test"):
            if a < b:
                check_leakage(sub.table, parts.index[parts == a], parts.index[parts == b])
    data.parts = parts
    if data.metadata is not None:  # refit on the final training part only
        data.metadata.fit(sub.table[sub.table["case_id"].isin(parts.index[parts == "train"])])
    return data


def _run_once(config: StudyConfig, unit: StudyUnit, progress: bool, callbacks=(),
              erm: StudyUnit | None = None) -> dict:
    """Train, select, adapt, predict and evaluate one unit; a unit with ``done.json`` is
    done and read back (a half-trained one resumes from its ``last.pt``). ``erm``: the
    finished unit (ERM for AdaBN) whose trained model a ``trains_as`` method adapts instead of
    training its own."""
    done = done_record(unit.folder)
    if done is not None:
        return done
    data, spec, seed, run_dir = unit.data, unit.spec, unit.seed, unit.folder
    run_dir.mkdir(parents=True, exist_ok=True)
    started = int(time.time() * 1000)
    base = config.base.model_copy(deep=True)
    base.train.seed = seed
    if unit.weights is not None:  # fine-tune from the study's pretrained encoder
        base.model.encoder_options = {**base.model.encoder_options, "pretrained": str(unit.weights)}
    if erm is not None:
        model, method, best_epoch = _erm_model(erm, spec, base)
    else:
        model, method, best_epoch = _train_unit(config, unit, base, progress, callbacks)
    device = pick_device(base.train.device)
    target_loader = data.loader("test", base.train.batch_size, labelled=False)
    adapted = method.adapt_for_inference(model, target_loader)
    target = predict(adapted, data.loader("test", base.train.batch_size), data, device,
                     harmonise=lambda b: method.harmonise(b, "target"))
    source, validation = (predict(model, data.loader(part, base.train.batch_size), data, device,
                                  harmonise=lambda b: method.harmonise(b, "source")) for part in ("source_test", "val"))
    table = pd.concat([target.assign(domain="target"), source.assign(domain="source"),
                       validation.assign(domain=SOURCE_VAL)], ignore_index=True)
    transductive = method.transductive or unit.pretrain == "sources+target"
    table = table.assign(method=spec.label, seed=seed, transductive=transductive, selection=config.selection)
    table.to_parquet(run_dir / "predictions.parquet")
    deployed = deployment_state(validation)  # thresholds and temperature: source validation only
    site_acc = domain_gap(_embeddings(adapted, model, data, method, device, base.train.batch_size), run_dir)
    row = _result_row(table, spec.label, seed, transductive, config, site_acc, best_epoch, run_dir, deployed)
    row["pretrain"] = unit.pretrain
    # One model file per unit: the one that predicted the target (after the method's
    # inference-time adaptation). The trainer's resume checkpoints are spent once it is done.
    shutil.rmtree(run_dir / PACKAGE, ignore_errors=True)  # left by a run stopped before it was done
    save_package(run_dir / PACKAGE, adapted, base, data, clinical=deployed)
    result = json.loads(json.dumps({"row": row, "start_ms": started, "end_ms": int(time.time() * 1000)},
                                   default=float))  # as read back from done.json
    mark_done(run_dir, result)
    for spent in ("last.pt", "best.pt", "federated.pt"):  # federated.pt: a federation's result (senolab.federated)
        (run_dir / spent).unlink(missing_ok=True)
    return result


def _train_unit(config: StudyConfig, unit: StudyUnit, base: ExperimentConfig, progress: bool, callbacks):
    """The unit's own training, selected by the study's rule: (model, method, best epoch)."""
    rule = SELECTIONS.get(config.selection)
    base.train.early_stopping.metric = rule.metric
    if METHODS.get(unit.spec.name).federated:  # each source site a client; no case leaves its site
        from senolab.federated import train_federated

        return train_federated(config, unit, base, progress, callbacks, selection=rule)
    trainer = Trainer(base, unit.data, unit.folder, method=unit.spec.name, method_options=unit.spec.options,
                      target_part="test" if METHODS.get(unit.spec.name).transductive else None,
                      selection=rule.score, callbacks=callbacks)
    trained = trainer.fit(progress=progress)
    return trained.model, trained.method, trained.best_epoch


def _erm_model(erm: StudyUnit, spec: MethodSpec, base: ExperimentConfig):
    """The trained model of the unit this one ``trains_as`` (ERM's for AdaBN), same target
    and seed: (model, this unit's method, that unit's best epoch)."""
    method = METHODS.build(spec.name, **spec.options)
    model = load_packaged_model(erm.folder / PACKAGE, erm.data).to(pick_device(base.train.device))
    best_epoch = done_record(erm.folder)["row"]["best_epoch"]
    return model, method, best_epoch


def _erm_unit(config: StudyConfig, unit: StudyUnit) -> StudyUnit | None:
    """The unit whose trained model this one reuses (its method's ``trains_as``, an entry of
    the study without options), if the study has it."""
    trains_as = METHODS.get(unit.spec.name).trains_as
    if trains_as is None:
        return None
    erm = next((m for m in config.methods if m.name == trains_as and not m.options), None)
    if erm is None:
        return None
    study_dir = unit.folder.parents[3]
    return StudyUnit(unit.pair, erm, unit.seed, unit_folder(study_dir, unit.pair.target, erm.label, unit.seed), unit.data,
                     unit.weights, unit.pretrain)


def load_unit_model(unit: StudyUnit) -> torch.nn.Module:
    """The unit's model as it predicted the target site (adapted), in eval mode."""
    return load_packaged_model(unit.folder / PACKAGE, unit.data)


@dataclass(frozen=True)
class SelectionRule:
    """How a study picks a unit's checkpoint: the validation ``metric`` early stopping
    maximises, and the ``score`` that adds it to each epoch's validation (None: the
    trainer's own source-validation score)."""

    metric: str
    score: Callable[[Trainer], dict] | None = None


# Selection rules by name (StudyConfig.selection). Only 'oracle' reads target labels: it
# is reported as such in every result and never the default.
SELECTIONS: Registry[SelectionRule] = Registry("selection rule")


def _target_predictions(trainer: Trainer, labelled: bool) -> pd.DataFrame:
    data = trainer.data
    loader = data.loader("test", trainer.config.train.batch_size, labelled=labelled)
    return predict(trainer.model, loader, data, trainer.device, harmonise=lambda b: trainer.method.harmonise(b, "target"))


def _target_negative_entropy(trainer: Trainer) -> dict:
    """Unsupervised: the model's confidence on the unlabelled target images."""
    table = _target_predictions(trainer, labelled=False)
    probs = table[[f"prob_{c}" for c in trainer.data.classes]].to_numpy()
    entropy = -(probs * np.log(np.clip(probs, 1e-12, 1))).sum(1).mean()
    return {"target_neg_entropy": float(-entropy)}


def _oracle_target_auc(trainer: Trainer) -> dict:
    """Reads target labels: an upper bound to report, never a way to choose a model."""
    from sklearn.metrics import roc_auc_score

    table = _target_predictions(trainer, labelled=True)
    labelled = table[table["label"].notna()]
    y = (labelled["label_name"] == "malignant").astype(int)
    return {"oracle_target_auc": float(roc_auc_score(y, labelled["score"])) if y.nunique() == 2 else 0.0}


SELECTIONS.register("source_val")(SelectionRule("val_score"))
SELECTIONS.register("target_entropy")(SelectionRule("target_neg_entropy", _target_negative_entropy))
SELECTIONS.register("oracle")(SelectionRule("oracle_target_auc", _oracle_target_auc))


def _result_row(table: pd.DataFrame, method: str, seed: int, transductive: bool, config: StudyConfig,
                site_acc: float, best_epoch: int, run_dir: Path, deployed: dict) -> dict:
    """The unit's results row; its target-site evaluation is written to ``run_dir``
    (summary.json, with the operating points, calibration and decision curves under the
    ``deployed`` thresholds and temperature; results.csv) as every evaluation is."""
    target, source = table[table["domain"] == "target"], table[table["domain"] == "source"]
    evaluation = config.base.evaluation
    ev_target = evaluate(target.drop(columns=["label_name", "domain"]), n_resamples=evaluation.bootstrap,
                         seed=evaluation.seed, progress=False)
    sections = clinical_sections(target, deployed, evaluation.bootstrap, evaluation.seed)
    ev_target.write(run_dir, {"method": method, "seed": seed, "target": str(target["site"].iloc[0])}, extra=sections)
    ev_source = evaluate(source.assign(site="source").drop(columns=["label_name", "domain"]),
                         n_resamples=0 if config.base.evaluation.bootstrap == 0 else 200, progress=False)
    site = target["site"].iloc[0]
    tgt = ev_target.aggregates[method][site]
    src = ev_source.aggregates[method]["source"]
    row = {"method": method, "target_site": site, "seed": seed, "transductive": transductive,
           "selection": config.selection, "best_epoch": best_epoch, "n_target": len(target)}
    for metric in ("auc", "dice", "box_iou", "fp_rate_lesion_free"):
        if metric in tgt:
            row[metric] = tgt[metric]["value"]
            row[f"{metric}_lo"], row[f"{metric}_hi"] = tgt[metric]["ci"]
        if metric in src:
            row[f"insite_{metric}"] = src[metric]["value"]
            if metric in tgt and tgt[metric]["value"] is not None and src[metric]["value"] is not None:
                row[f"gap_{metric}"] = tgt[metric]["value"] - src[metric]["value"]
    row["site_classifier_acc"] = site_acc
    row.update(clinical_columns(sections, site))
    return row


@torch.no_grad()
def _embeddings(adapted, model, data: PreparedData, method, device, batch_size: int) -> dict:
    """Embeddings of held-out source and target cases, as the method would predict them."""
    out = {}
    for part, net, domain in (("source_test", model, "source"), ("test", adapted, "target")):
        net.eval()
        chunks = []
        for batch in data.loader(part, batch_size, labelled=False):
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            chunks.append(net(method.harmonise(batch, domain))["embedding"].cpu().numpy())
        out[domain] = np.concatenate(chunks) if chunks else np.zeros((0, 1))
    return out


def domain_gap(embeddings: dict, run_dir: Path) -> float:
    """Cross-validated accuracy of a site classifier on the embeddings (0.5 = no gap)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate([embeddings["source"], embeddings["target"]])
    y = np.r_[np.zeros(len(embeddings["source"])), np.ones(len(embeddings["target"]))]
    np.savez_compressed(run_dir / "embeddings.npz", x=x, domain=y)
    # balanced accuracy: source and target sets differ in size
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    return float(cross_val_score(clf, x, y, cv=folds, scoring="balanced_accuracy").mean())


def paired_delong_vs_erm(results: pd.DataFrame, cases: pd.DataFrame) -> pd.Series:
    """Per result row, DeLong's p for its target AUC against erm's on the same target cases
    and seed (:func:`senolab.evaluation.compare_methods`): the paired test, sharper than
    comparing two bootstrap CIs. NaN for erm itself and without an erm entry."""
    target = cases[cases["domain"] == "target"].drop(columns=["label_name", "domain"])
    has_erm = (results["method"] == "erm").any()
    p_values = []
    for r in results.itertuples():
        p = np.nan
        if r.method != "erm" and has_erm:
            same = target[(target["seed"] == r.seed) & (target["site"] == r.target_site)]
            p = compare_methods(same, "erm", r.method).set_index("site").loc[POOLED, "p"]
        p_values.append(p)
    return pd.Series(p_values, index=results.index, dtype=float)


def results_markdown(results: pd.DataFrame) -> str:
    """The study table: one row per method and target site, with CIs and the flags."""
    lines = ["| method | target | transductive | selection | AUC [95% CI] | DeLong p vs erm | in-site AUC | gap "
             "| Dice [95% CI] | site-classifier acc |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results.to_dict("records"):
        lines.append(
            f"| {r['method']} | {r['target_site']} | {_transductive(r)} | {r['selection']} "
            f"| {interval_text(r, 'auc')} | {_p(r.get('auc_p_vs_erm'))} | {number_text(r.get('insite_auc'))} "
            f"| {number_text(r.get('gap_auc'))} | {interval_text(r, 'dice')} "
            f"| {number_text(r.get('site_classifier_acc'))} |")
    return "\n".join(lines) + "\n"


def _transductive(row: dict) -> str:
    if not row["transductive"]:
        return "no"
    return "yes (encoder pretrained on the target's images)" if row.get("pretrain") == "sources+target" else "yes"


def operating_markdown(results: pd.DataFrame) -> str:
    """Per method, target and rule: the source threshold and the rates at the target, with
    the target's own (oracle) threshold beside, never used to choose anything."""
    from senolab.evaluation.operating import RULES

    lines = ["At the thresholds chosen on source validation (called malignant when score >= threshold); the oracle "
             "threshold is the target's own by the same rule (reads target labels: shown, never used).", "",
             "| method | target | rule | threshold | sensitivity [95% CI] | specificity [95% CI] | PPV [95% CI] "
             "| NPV [95% CI] | oracle threshold | oracle sensitivity | oracle specificity |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results.to_dict("records"):
        for rule in RULES.names():
            if f"threshold_{rule}" not in r or not np.isfinite(r[f"threshold_{rule}"]):
                continue
            lines.append(f"| {r['method']} | {r['target_site']} | {rule} | {number_text(r[f'threshold_{rule}'])} "
                         + " ".join(f"| {interval_text(r, f'{name}_{rule}')}"
                                    for name in ("sensitivity", "specificity", "ppv", "npv"))
                         + "".join(f" | {number_text(r.get(f'oracle_{name}_{rule}'))}"
                                   for name in ("threshold", "sensitivity", "specificity")) + " |")
    lines += ["", "| method | target | temperature (source val) | ECE [95% CI] | ECE, temperature-scaled "
              "| Brier [95% CI] | Brier, temperature-scaled |", "|---|---|---|---|---|---|---|"]
    for r in results.to_dict("records"):
        if "ece_score" in r:
            lines.append(f"| {r['method']} | {r['target_site']} | {number_text(r.get('temperature'))} "
                         f"| {interval_text(r, 'ece_score')} | {interval_text(r, 'ece_score_scaled')} "
                         f"| {interval_text(r, 'brier')} | {interval_text(r, 'brier_scaled')} |")
    return "\n".join(lines) + "\n"


def clinical_figures(out: Path, clinical: dict) -> list[Path]:
    """``calibration.png`` (reliability of the malignancy score at each target, as trained
    and temperature-scaled) and ``decision_curves.png``, one panel per target site."""
    from senolab.evaluation.calibration import ECE_BINS
    from senolab.evaluation.clinical_figures import plot_decision_curves, plot_score_reliability

    reliability, decision = [], []
    several_seeds = len({seed for _, seed in clinical}) > 1
    for (method, seed), per_target in clinical.items():
        label = f"{method}/seed{seed}" if several_seeds else method
        for target, sections in per_target.items():
            if sections:
                reliability.append(reliability_points(sections, target).assign(target=target, method=label))
                decision.append(decision_points(sections, target).assign(target=target, method=label))
    if not reliability:
        return []
    return [plot_score_reliability(pd.concat(reliability, ignore_index=True), out / "calibration.png", ECE_BINS),
            plot_decision_curves(pd.concat(decision, ignore_index=True), out / "decision_curves.png")]


def write_recalibration(out: Path, unit_tables: list[pd.DataFrame], **options) -> list[Path]:
    """The local recalibration (USES TARGET LABELS) of every unit from its saved per-case
    predictions (one table per unit: its source_val rows give ITS thresholds), written
    apart: ``recalibration.csv``, ``recalibration.md`` and ``recalibration.png``.
    ``options``: ks, n_draws, seed of :func:`senolab.evaluation.recalibration.local_recalibration`."""
    from senolab.evaluation.clinical_figures import plot_recalibration
    from senolab.evaluation.recalibration import local_recalibration, recalibration_markdown

    frame = pd.concat([local_recalibration(table, **options) for table in unit_tables], ignore_index=True)
    frame.to_csv(out / RECALIBRATION_FILE, index=False)
    (out / "recalibration.md").write_text(recalibration_markdown(frame))
    files = [out / RECALIBRATION_FILE, out / "recalibration.md"]
    if not frame.empty:
        files.append(plot_recalibration(frame, out / "recalibration.png"))
    return files


def recalibrate_study(study_dir: str | Path, **options) -> pd.DataFrame:
    """Local recalibration of a finished study from its units' saved predictions (no
    retraining), e.g. with other k or more draws; rewrites the study's recalibration files
    and returns the table. USES TARGET LABELS: never a way to choose a method."""
    study_dir = Path(study_dir)
    paths = sorted((study_dir / "runs").glob("*/*/seed*/predictions.parquet"))
    if not paths:
        from senolab.errors import InputError

        raise InputError(f"{study_dir}: not a study folder (no runs/<target>/<method>/seed<k>/predictions.parquet)")
    write_recalibration(study_dir, [pd.read_parquet(path) for path in paths], **options)
    return pd.read_csv(study_dir / RECALIBRATION_FILE)


def _p(value) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{value:.2g}"


def _summary(config: StudyConfig, per_unit: dict, cases: pd.DataFrame, out: Path, skipped: list[dict],
             clinical: dict, notes: dict) -> dict:
    """summary.json of the study: per method (and seed, when there are several) the target
    sites' aggregates as each unit's evaluation gave them, and the worst target site; its
    operating points (with the source thresholds) and calibration per target site; the
    ``notes`` (:func:`study_notes`: failed runs, the time-budget note, tuning)."""
    aggregates: dict[str, dict] = {}
    operating: dict[str, dict] = {}
    calibration: dict[str, dict] = {}
    for (method, seed), per_site in per_unit.items():
        key = method if len(config.seeds) == 1 else f"{method}/seed{seed}"
        names = {name for entries in per_site.values() for name in entries}
        metrics = [METRICS.get(name) for name in METRICS.names() if name in names]
        aggregates[key] = {**per_site, WORST: worst_sites(per_site, metrics)}
        for target, sections in clinical.get((method, seed), {}).items():
            if sections:
                points = sections["operating_points"]
                operating.setdefault(key, {})[target] = {"source": points["source"], **points["sites"][target]}
                calibration.setdefault(key, {})[target] = sections["calibration"]["sites"][target]
    keep = [c for c in ("case_id", "site", "method", "seed", "domain", "label", "score", "dice", "transductive")
            if c in cases.columns]
    summary = json_safe({"config": config.model_dump(), "aggregates": aggregates,
                         "operating_points": operating, "calibration": calibration,
                         "cases": cases[keep].to_dict(orient="records"), "skipped": skipped, **notes})
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=1, allow_nan=False) + "\n")
    return summary


def embedding_figure(out: Path, pairs: list[PairSpec], config: StudyConfig) -> Path:
    """t-SNE of source and target embeddings, one row per target, one panel per method."""
    from matplotlib.figure import Figure
    from sklearn.manifold import TSNE

    seed = config.seeds[0]
    fig = Figure(figsize=(3.2 * len(config.methods), 3 * len(pairs)))
    axes = fig.subplots(len(pairs), len(config.methods), squeeze=False)
    for i, pair in enumerate(pairs):
        for j, spec in enumerate(config.methods):
            saved = np.load(unit_folder(out, pair.target, spec.label, seed) / "embeddings.npz")
            x, domain = saved["x"], saved["domain"]
            xy = TSNE(n_components=2, perplexity=min(30, max(5, len(x) // 5)), random_state=0, init="pca").fit_transform(x)
            ax = axes[i, j]
            for value, name, colour in ((0, "source", "tab:blue"), (1, f"target {pair.target}", "tab:red")):
                ax.scatter(*xy[domain == value].T, s=6, alpha=0.6, c=colour, label=name)
            ax.set_title(f"{spec.label} -> {pair.target}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "embeddings_tsne.png"
    fig.savefig(path, dpi=100)
    return path
