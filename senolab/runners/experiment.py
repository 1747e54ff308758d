"""One model end to end: prepare data, train, predict the test part, evaluate, write the run.

The run directory is complete on its own (docs/contracts.md#run-folder): ``config.yaml``, ``best.pt`` and
``last.pt``, ``history.csv`` (losses, validation metrics and per-task loss weights per
epoch), ``predictions.parquet`` (one row per test case), ``summary.json`` and
``results.csv``, and ``preprocessing.json`` (what was fitted on the training part, so
``senolab evaluate`` can apply the model to another cohort).
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from senolab.cohorts.readers import read_cohort
from senolab.engine.config import ExperimentConfig
from senolab.engine.data import PreparedData, prepare, say_skipped, skipped_records
from senolab.engine.predict import predict
from senolab.engine.trainer import Trainer, model_from_config, pick_device
from senolab.errors import InputError
from senolab.evaluation import evaluate
from senolab.paths import require_folder, writable_folder
from senolab.tracking import RunDir, table_fingerprint, unit_metrics
from senolab.tracking.config_guard import claim_folder

UNIT = "erm"  # what `senolab train` logs: one model trained without adaptation


def train_and_evaluate(config: ExperimentConfig, out_dir: str | Path, progress: bool = True,
                       data: PreparedData | None = None, tracking_uri: str | None = None) -> dict:
    """Train one model and evaluate it on the test part; returns the summary dict.

    Tracked in MLflow while it trains (a parent run for the command, a child for the
    model with its epochs live), in the folder's own SQLite store unless ``tracking_uri``."""
    out = writable_folder(Path(out_dir).absolute(), "run folder")
    # a folder trained with another config (another split seed, say) is never resumed
    claim_folder(out, config.model_dump(), command="senolab train")
    data = data if data is not None else prepare(config.data, progress=progress)
    run = RunDir.open_or_create(out, config.name, config.model_dump(), tracking_uri=tracking_uri,
                                data_fingerprint=table_fingerprint(data.cohort.table), command="train")
    _write_preprocessing(out, data)
    live = run.live(UNIT, tags={"method": UNIT})
    trainer = Trainer(config, data, out, callbacks=[live])
    result = trainer.fit(progress=progress)
    table = predict(result.model, data.loader("test", config.train.batch_size), data, trainer.device)
    summary = _write_evaluation(table, out, config, config.model_dump(), progress, skipped_records(data.cohort))
    if not run.is_logged(UNIT):
        files = [out / name for name in ("predictions.parquet", "summary.json", "results.csv", "preprocessing.json",
                                         "split.csv", "best.pt")]
        run.log_unit(UNIT, metrics={**unit_metrics(summary["aggregates"][UNIT], None), "best_epoch": result.best_epoch},
                     tags={"method": UNIT}, files=files, history=out / "history.csv", start_ms=live.start_ms)
    run.finish(echo=progress)
    return summary


def _write_preprocessing(out: Path, data: PreparedData) -> None:
    state = {"classes": list(data.classes), "sites": data.sites, "image_size": data.image_size,
             "parts": data.parts.value_counts().to_dict()}
    if data.metadata is not None:
        state["metadata"] = {
            "columns": [{"name": c.name, "kind": c.kind.value, "levels": list(c.levels), "outcome": c.outcome}
                        for c in data.metadata.columns.values()],
            "opted_in": data.metadata.opted_in,
            "mean": data.metadata.mean_.tolist(), "scale": data.metadata.scale_.tolist()}
    (out / "preprocessing.json").write_text(json.dumps(state, indent=1))
    data.parts.to_frame().to_csv(out / "split.csv", index_label="case_id")


def evaluate_run(run_dir: str | Path, root: str | Path, out_dir: str | Path, progress: bool = True) -> dict:
    """Apply a trained run to every case of the cohort at ``root`` (none of it trained on)."""
    import torch

    from senolab.engine.config import load_config
    from senolab.checkpoint import load_checkpoint

    run_dir, out = require_folder(run_dir, "training run folder"), Path(out_dir)
    for name in ("config.yaml", "preprocessing.json", "best.pt"):
        if not (run_dir / name).is_file():
            raise InputError(f"{run_dir}: not a finished `senolab train` run (no {name})")
    config = load_config(run_dir / "config.yaml")
    state = json.loads((run_dir / "preprocessing.json").read_text())
    writable_folder(out, "evaluation folder")
    cohort = read_cohort(root, strict=config.data.strict)
    say_skipped(cohort)
    parts = pd.Series("test", index=cohort.table["case_id"].values, name="part")
    data = PreparedData(cohort, parts, tuple(state["classes"]), _restored_metadata(state.get("metadata")), None,
                        state["sites"], state["image_size"], augment=False)
    device = pick_device(config.train.device)
    model = model_from_config(config, data).to(device)
    model.load_state_dict(load_checkpoint(run_dir / "best.pt", device)["model"])
    table = predict(model, data.loader("test", config.train.batch_size), data, device)
    return _write_evaluation(table, out, config, {**config.model_dump(), "evaluated_on": str(root),
                                                  "trained_run": str(run_dir)}, progress, skipped_records(cohort))


def _write_evaluation(table: pd.DataFrame, out: Path, config: ExperimentConfig, summary_config: dict,
                      progress: bool, skipped: list[dict]) -> dict:
    """predictions.parquet, summary.json (with the cases skipped while reading) and
    results.csv of one evaluated model."""
    table = table.assign(method="erm")
    table.to_parquet(out / "predictions.parquet")
    evaluation = evaluate(table.drop(columns=["label_name"]), n_resamples=config.evaluation.bootstrap, seed=config.evaluation.seed,
                          progress=progress)
    paths = evaluation.write(out, summary_config)
    summary = json.loads(paths["summary"].read_text())
    summary["skipped"] = skipped
    paths["summary"].write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _restored_metadata(state: dict | None):
    """The training run's metadata encoder; a cohort lacking a field gets it as missing."""
    import numpy as np

    from senolab.cohorts.schema import Column, Kind
    from senolab.cohorts.tabular import MetadataEncoder

    if state is None:
        return None
    columns = {c["name"]: Column(c["name"], Kind(c["kind"]), tuple(c["levels"]), c["outcome"]) for c in state["columns"]}
    encoder = MetadataEncoder(columns, list(columns), opt_in=state["opted_in"])
    encoder.mean_, encoder.scale_ = np.array(state["mean"]), np.array(state["scale"])
    return encoder
