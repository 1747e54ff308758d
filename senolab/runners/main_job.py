"""The main job, `senolab run`: cohorts -> radiomics -> fused multi-task model -> domain
adaptation methods -> cross-site evaluation -> explanations -> MLflow -> report.

With no config it runs the built-in quickstart on the synthetic multi-site generator
(sites a and b are the sources, site c — which records no metadata and looks different —
the unseen target) in a few minutes on 2 CPU cores; ``SENOLAB_QUICK=1`` shrinks it to a
smoke run of the same code path (the tests use it). The run folder is the source of
truth; MLflow (an embedded SQLite store in the folder unless a tracking URI is given)
receives a parent run for the job and a child run per (target, method, seed).

Started again on the same folder with the same config, a run redoes nothing finished
and logs nothing twice, and repairs an MLflow upload that an earlier, killed run left
incomplete; with another config it is refused before any work (the differing keys are
named). ``--tracking-uri`` given on an existing folder sends everything there.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from senolab.engine.config import (TRACKING_KEYS, ConfigError, ExplainStep,  # noqa: F401 (callers import them from here)
                                   RadiomicsStep, RunConfig, StudyConfig, load_run_config, quickstart_config)
from senolab.runners.study import load_unit_model, run_study, study_headline, unit_folder


def run_main(config: RunConfig, out_dir: str | Path, progress: bool = True) -> dict:
    """Run every step; returns the report's data. A stopped run continues where it stopped;
    a folder holding a run of another config is refused before any work."""
    from senolab.engine.data import load_cohorts
    from senolab.paths import writable_folder
    from senolab.tracking import RunDir, table_fingerprint
    from senolab.tracking.runfolder import claim_folder

    out = writable_folder(Path(out_dir).absolute(), "run folder")
    claim_folder(out, config.model_dump(), ignore=(*TRACKING_KEYS, "study.executor.name", "study.executor.address"),
                 command="senolab run")
    steps = _Steps(progress)
    cohort = steps.run("cohorts", lambda: load_cohorts(config.study.base.data, progress))
    run = RunDir.open_or_create(out, config.name, config.model_dump(), tracking_uri=config.tracking_uri,
                                track=config.track, data_fingerprint=table_fingerprint(cohort.table), command="run")
    report = {"name": config.name, "cohorts": steps.run("describe", lambda: _describe(cohort, out))}
    study = config.study
    if config.radiomics.enabled:
        path, report["radiomics"] = steps.run("radiomics", lambda: _radiomics(cohort, config.radiomics, out, progress))
        study = study.model_copy(deep=True)
        study.base.data.radiomics = str(path.resolve())
    elif "radiomics" in study.base.model.fusion_options.get("modalities", []):
        raise ConfigError("the model fuses radiomics but radiomics.enabled is false")
    # The study trains, evaluates and logs each unit; the main job explains each one on the
    # way (the model in its folder, no second evaluation) and reads the rest from the folders.
    steps.run("study, explain, track",
              lambda: run_study(study, out / "study", progress=progress, cohort=cohort, run=run,
                                on_unit=lambda unit: _explain_unit(study, config.explain, unit, progress)))
    results = pd.read_csv(out / "study" / "results.csv")
    report["study"] = results
    report["methods"] = [_unit_report(out / "study", row) for row in results.to_dict("records")]
    report["tracking"] = run.finish(metrics=study_headline(results), echo=False,
                                    files=[out / "study" / name for name in ("results.csv", "summary.json")])
    report["timings"] = steps.seconds
    from senolab.runners.report import write_report

    write_report(report, out)
    return report


class _Steps:
    """Runs named steps with a line of progress and their wall time."""

    def __init__(self, progress: bool):
        self.progress, self.seconds = progress, {}

    def run(self, name: str, work):
        import time

        if self.progress:
            print(f"== {name}", flush=True)
        began = time.perf_counter()
        result = work()
        self.seconds[name] = round(time.perf_counter() - began, 1)
        return result


def _describe(cohort, out: Path) -> dict:
    from senolab.cohorts.describe import describe, describe_figure

    summary = describe(cohort)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    describe_figure([cohort], out / "figures" / "cohorts.png")
    (out / "cohorts.json").write_text(json.dumps(summary, indent=1))
    return summary


def _radiomics(cohort, step: RadiomicsStep, out: Path, progress: bool) -> tuple[Path, dict]:
    from senolab.radiomics import extract_features

    features = extract_features(cohort, step.params, jobs=step.jobs, cache_dir=out / "radiomics_cache",
                                progress=progress)
    path = features.write(out / "radiomics.parquet")
    return path, {"summary": features.summary()}


def _explain_unit(study: StudyConfig, explain: ExplainStep, unit, progress: bool) -> list[Path]:
    """ROC and reliability of the unit's target predictions, and its attributions; the files to log."""
    from senolab.evaluation.plots import plot_reliability, plot_roc_by_site

    predictions = pd.read_parquet(unit.folder / "predictions.parquet")
    target = predictions[predictions["domain"] == "target"].drop(columns=["domain", "label_name"])
    figures = unit.folder / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    files = [plot_roc_by_site(target, figures / "roc.png"), plot_reliability(target, figures / "reliability.png")]
    model = load_unit_model(unit)
    return files + _explain(model, unit.data, unit.spec.label, explain, unit.folder, progress)


def _unit_report(study_dir: Path, row: dict) -> dict:
    """What the report shows of one unit, read from its folder."""
    folder = unit_folder(study_dir, row["target_site"], row["method"], row["seed"])
    games = folder / "explanations" / "pointing_game.csv"
    figures = sorted((folder / "figures").glob("*.png")) + sorted((folder / "explanations").glob("*.png"))
    return {"method": row["method"], "target": row["target_site"], "seed": row["seed"],
            "transductive": bool(row["transductive"]), "folder": str(folder),
            "pointing_game": pd.read_csv(games).to_dict("records") if games.exists() else [],
            "figures": [str(f) for f in figures]}


def _explain(model, data, method: str, step: ExplainStep, folder: Path, progress: bool) -> list[Path]:
    """Attributions on target cases, and the pointing game (whether they fall on the lesion)
    in ``explanations/pointing_game.csv``; the files written."""
    from senolab.explain import cohort_case_grids, explain_images, pointing_game

    files, games = [], []
    for name in step.methods:
        explanations = explain_images(model, data.loader("test", 8), method=name, site_names=data.sites,
                                      max_cases=step.max_cases, progress=progress)
        game = pointing_game(explanations).assign(explainer=name)
        games.append(game)
        grids = cohort_case_grids(explanations, folder / "explanations", prefix=name, method=method,
                                  max_cases=step.max_cases)
        files += list(grids.values())
    table = pd.concat(games, ignore_index=True)
    path = folder / "explanations" / "pointing_game.csv"
    table.to_csv(path, index=False)
    files.append(path)
    files += _tabular_attributions(model, data, folder / "explanations", step.max_cases)
    return files


def _tabular_attributions(model, data, folder: Path, max_cases: int) -> list[Path]:
    """Feature ablation per clinical field and radiomics class, per site (sources and target)."""
    from senolab.explain import feature_ablation, mean_abs_by_cohort, tabular_bar_chart, tabular_groups

    fields = data.metadata.fields if data.metadata is not None else []
    radiomics = list(data.radiomics.columns) if data.radiomics is not None else []
    if getattr(model, "fusion", None) is None or not (fields or radiomics):
        return []
    groups = tabular_groups(fields, radiomics)
    tables, sites = [], []
    for part in ("source_test", "test"):
        batch = next(iter(data.loader(part, max_cases)))
        tables.append(feature_ablation(model, batch, groups))
        sites += [data.sites[i] for i in batch["site"].tolist()]
    attributions = pd.concat(tables)
    table = folder / "tabular_attributions.csv"
    attributions.assign(site=sites).to_csv(table)
    chart = tabular_bar_chart(mean_abs_by_cohort(attributions, sites), folder / "tabular_attributions.png")
    return [table, chart]
