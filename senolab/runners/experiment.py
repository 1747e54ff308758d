"""One model end to end: prepare data, train, predict the test part, evaluate, write the run.

The run directory is complete on its own (docs/contracts.md#run-folder): ``config.yaml``,
``history.csv`` (losses, validation metrics and per-task loss weights per epoch),
``split.csv``, ``model/`` (the trained model with its preprocessing, an MLflow pyfunc
model: :mod:`senolab.runners.packaged`), ``predictions.parquet`` (one row per test case),
``summary.json`` and ``results.csv``, and ``runs.json`` with the embedded MLflow store.
The operating thresholds and temperature are chosen on the validation part's predictions
only, stored with the model (``preprocessing.json``) and measured at every test site
(summary.json's ``operating_points``, ``calibration`` and ``decision_curves``; results.csv
columns; :mod:`senolab.evaluation.clinical`); ``senolab evaluate`` measures the stored ones
on another cohort.
A finished folder (``done.json``, docs/contracts.md#run-folder) is reused as it is; a
half-trained one resumes from the trainer's ``last.pt``, removed once the model is packaged.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

from senolab.cohorts.readers import read_cohort
from senolab.engine import distributed
from senolab.engine.config import ExperimentConfig
from senolab.engine.data import PreparedData, prepare, say_skipped, skipped_records
from senolab.engine.predict import predict
from senolab.engine.trainer import Trainer, pick_device
from senolab.errors import InputError
from senolab.evaluation import POOLED, evaluate
from senolab.evaluation.clinical import clinical_columns, clinical_metrics, clinical_sections, deployment_state
from senolab.paths import require_folder, writable_folder
from senolab.runners.packaged import PREPROCESSING, load_packaged_model, restored_data, save_package, stored_clinical
from senolab.tracking import RunDir, table_fingerprint, unit_metrics
from senolab.tracking.provenance import part_datasets
from senolab.tracking.records import metric_values, worst_site_tags
from senolab.tracking.runfolder import claim_folder, done_record, mark_done

UNIT = "erm"  # what `senolab train` logs: one model trained without adaptation


def train_and_evaluate(config: ExperimentConfig, out_dir: str | Path, progress: bool = True,
                       data: PreparedData | None = None, tracking_uri: str | None = None) -> dict:
    """Train one model and evaluate it on the test part; returns the summary dict.

    Tracked in MLflow while it trains (a parent run for the command, a child for the
    model with its epochs live), in the folder's own SQLite store unless ``tracking_uri``.

    In a torchrun worker (``train.devices`` > 1, docs/distributed.md) every rank trains its
    share and rank 0 alone does everything else; the other ranks return an empty dict."""
    with distributed.process_group(config.train):  # left by every rank once the model is trained
        if not distributed.is_main():
            _train_share(config, Path(out_dir).absolute(), data)
            return {}
        out = writable_folder(Path(out_dir).absolute(), "run folder")
        # a folder trained with another config (another split seed, say) is never resumed; the
        # number of devices does not change what is trained (docs/distributed.md), so any resumes it
        claim_folder(out, config.model_dump(), ignore={"train.devices"}, command="senolab train")
        data = data if data is not None else prepare(config.data, progress=progress)
        run = RunDir.open_or_create(out, config.name, config.model_dump(), tracking_uri=tracking_uri,
                                    data_fingerprint=table_fingerprint(data.cohort.table), command="train")
        data.parts.to_frame().to_csv(out / "split.csv", index_label="case_id")
        live = run.live(UNIT, tags={"method": UNIT})
        model, best_epoch = _trained(config, data, out, live, progress)
    # evaluated by rank 0 alone, outside the process group
    table = predict(model, data.loader("test", config.train.batch_size), data, pick_device(config.train.device))
    summary = _write_evaluation(table, out, config, config.model_dump(), progress, skipped_records(data.cohort),
                                stored_clinical(out / "model"))
    if not run.is_logged(UNIT):
        metrics = {**unit_metrics(summary["aggregates"][UNIT], None), "best_epoch": best_epoch,
                   **metric_values(clinical_metrics(summary, _headline_site(summary)))}
        files = [out / name for name in ("predictions.parquet", "summary.json", "results.csv", "split.csv", "model")]
        tags = {"method": UNIT, **worst_site_tags(summary["aggregates"][UNIT]["worst_site"])}
        run.log_unit(UNIT, metrics=metrics, tags=tags, files=files, history=out / "history.csv",
                     start_ms=live.start_ms, folder=out,
                     datasets=part_datasets(data.cohort.table, data.parts, str(data.cohort.root or data.cohort.name)))
    run.finish(echo=progress)
    return summary


def _train_share(config: ExperimentConfig, out: Path, data: PreparedData | None) -> None:
    """A rank other than 0: its share of the training, when rank 0 trains (the folder is not
    finished yet); it writes nothing."""
    data = data if data is not None else prepare(config.data, progress=False)
    if distributed.broadcast_object(None):
        Trainer(config, data, out).fit(progress=False)


def _trained(config: ExperimentConfig, data: PreparedData, out: Path, live, progress: bool):
    """The packaged model of a finished folder, or train (resuming) and package it.
    Returns the model and its best epoch."""
    package = out / "model"
    done = done_record(out)
    distributed.broadcast_object(done is None)  # the other ranks train alongside, or not at all
    if done is not None:
        return load_packaged_model(package, data), done["best_epoch"]
    result = Trainer(config, data, out, callbacks=[live]).fit(progress=progress)
    # the operating thresholds and the temperature: chosen on the validation part only
    validation = predict(result.model, data.loader("val", config.train.batch_size), data,
                         pick_device(config.train.device))
    shutil.rmtree(package, ignore_errors=True)  # left by a run stopped before it was done
    save_package(package, result.model, config, data, clinical=deployment_state(validation))
    mark_done(out, {"best_epoch": result.best_epoch})
    for spent in ("last.pt", "best.pt"):  # the package holds the one copy of the model
        (out / spent).unlink(missing_ok=True)
    return result.model, result.best_epoch


def evaluate_run(run_dir: str | Path, root: str | Path, out_dir: str | Path, progress: bool = True) -> dict:
    """Apply a trained run to every case of the cohort at ``root`` (none of it trained on)."""
    from senolab.engine.config import load_config

    run_dir, out = require_folder(run_dir, "training run folder"), Path(out_dir)
    for name in ("config.yaml", "model"):
        if not (run_dir / name).exists():
            raise InputError(f"{run_dir}: not a finished `senolab train` run (no {name})")
    config = load_config(run_dir / "config.yaml")
    state = json.loads((run_dir / "model" / "artifacts" / PREPROCESSING).read_text())
    writable_folder(out, "evaluation folder")
    cohort = read_cohort(root, strict=config.data.strict, progress=progress)
    say_skipped(cohort)
    data = restored_data(state, cohort)
    device = pick_device(config.train.device)
    model = load_packaged_model(run_dir / "model", data).to(device)
    table = predict(model, data.loader("test", config.train.batch_size), data, device)
    return _write_evaluation(table, out, config, {**config.model_dump(), "evaluated_on": str(root),
                                                  "trained_run": str(run_dir)}, progress, skipped_records(cohort),
                             state.get("clinical"))


def _write_evaluation(table: pd.DataFrame, out: Path, config: ExperimentConfig, summary_config: dict,
                      progress: bool, skipped: list[dict], deployed: dict | None = None) -> dict:
    """predictions.parquet, summary.json (with the cases skipped while reading and, for a
    model stored with its thresholds, the operating points, calibration and decision
    curves per site) and results.csv of one evaluated model (its clinical columns per site)."""
    table = table.assign(method="erm")
    table.to_parquet(out / "predictions.parquet")
    evaluation = evaluate(table.drop(columns=["label_name"]), n_resamples=config.evaluation.bootstrap, seed=config.evaluation.seed,
                          progress=progress)
    sections = (clinical_sections(table, deployed, config.evaluation.bootstrap, config.evaluation.seed, pooled=POOLED)
                if deployed is not None else {})
    paths = evaluation.write(out, summary_config, extra={**sections, "skipped": skipped})
    if sections:
        results = evaluation.results_table()
        clinical = pd.DataFrame([clinical_columns(sections, site) for site in results["site"]], index=results.index)
        pd.concat([results, clinical], axis=1).to_csv(paths["results"], index=False)
    return json.loads(paths["summary"].read_text())


def _headline_site(summary: dict) -> str:
    """The site a run's plain metrics describe: all sites pooled, or its only site."""
    sites = summary.get("operating_points", {}).get("sites", {})
    return POOLED if POOLED in sites else next(iter(sites), POOLED)
