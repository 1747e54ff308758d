"""The main job, `senolab run`: cohorts -> radiomics -> fused multi-task model -> domain
adaptation methods -> cross-site evaluation -> explanations -> MLflow -> report.

With no config it runs the built-in quickstart on the synthetic multi-site generator
(sites a and b are the sources, site c — which records no metadata and looks different —
the unseen target) in a few minutes on 2 CPU cores; ``SENOLAB_QUICK=1`` shrinks it to a
smoke run of the same code path (the tests use it). The run folder is the source of
truth; MLflow (an embedded SQLite store in the folder unless a tracking URI is given)
receives a parent run per (target, method, seed) and a child run per site.

Started again on the same folder with the same config, a run redoes nothing finished
and logs nothing twice, and repairs an MLflow upload that an earlier, killed run left
incomplete; with another config it is refused before any work (the differing keys are
named). ``--tracking-uri`` given on an existing folder sends everything there.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
from pydantic import field_validator

from senolab.engine.config import (ConfigError, DataConfig, EvaluationConfig, ExperimentConfig, HeadsConfig,
                                   ModelConfig, Strict, SyntheticOptions, TrainConfig, read_yaml_mapping, validate)
from senolab.runners.study import (MethodSpec, PairSpec, StudyConfig, method_names_as_specs, pair_data, run_study,
                                  study_pairs)


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


def load_run_config(path: str | Path | None) -> RunConfig:
    if path is None:
        return quickstart_config()
    raw = read_yaml_mapping(path)
    if isinstance(raw.get("study"), dict) and "methods" in raw["study"]:
        raw["study"]["methods"] = method_names_as_specs(raw["study"]["methods"])
    return validate(RunConfig, raw, str(path))


def run_main(config: RunConfig, out_dir: str | Path, progress: bool = True) -> dict:
    """Run every step; returns the report's data. A stopped run continues where it stopped;
    a folder holding a run of another config is refused before any work."""
    from senolab.engine.data import load_cohorts
    from senolab.paths import writable_folder
    from senolab.tracking import RunDir, table_fingerprint
    from senolab.tracking.config_guard import claim_folder

    out = writable_folder(Path(out_dir).absolute(), "run folder")
    claim_folder(out, config.model_dump(), ignore=TRACKING_KEYS, command="senolab run")
    steps = _Steps(progress)
    cohort = steps.run("cohorts", lambda: load_cohorts(config.study.base.data, progress))
    if (out / "runs.json").exists():
        run = RunDir.open(out)
        if config.track:
            run.use_tracking_uri(config.tracking_uri)
    else:
        run = RunDir.create(out, config.name, config.model_dump(), tracking_uri=config.tracking_uri,
                            track=config.track, data_fingerprint=table_fingerprint(cohort.table))
    report = {"name": config.name, "cohorts": steps.run("describe", lambda: _describe(cohort, out))}
    study = config.study
    if config.radiomics.enabled:
        path, report["radiomics"] = steps.run("radiomics", lambda: _radiomics(cohort, config.radiomics, out, progress))
        study = study.model_copy(deep=True)
        study.base.data.radiomics = str(path.resolve())
    elif "radiomics" in study.base.model.fusion_options.get("modalities", []):
        raise ConfigError("the model fuses radiomics but radiomics.enabled is false")
    steps.run("study", lambda: run_study(study, out / "study", progress=progress, cohort=cohort))
    report["study"] = pd.read_csv(out / "study" / "results.csv")
    report["methods"] = steps.run("evaluate, explain, track",
                                  lambda: _per_method(study, config.explain, cohort, run, out, progress))
    report["tracking"] = run.finish(echo=False)
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


def _per_method(study: StudyConfig, explain: ExplainStep, cohort, run, out: Path, progress: bool) -> list[dict]:
    """Evaluate each (target, method, seed) on its target site, explain it, and log it to
    the run and MLflow once."""
    rows = []
    for pair in study_pairs(study, sorted(cohort.table["site"].unique())):
        data = pair_data(study, cohort, pair)
        for spec in study.methods:
            for seed in study.seeds:
                rows.append(_one_method(study, explain, data, pair, spec, seed, run, out, progress))
    return rows


def _one_method(study: StudyConfig, explain: ExplainStep, data, pair: PairSpec, spec: MethodSpec, seed: int, run,
                out: Path, progress: bool) -> dict:
    from senolab.adaptation import METHODS
    from senolab.evaluation import evaluate
    from senolab.evaluation.plots import plot_reliability, plot_roc_by_site
    from senolab.tracking.rundir import unit_name

    method, transductive = spec.label, METHODS.get(spec.name).transductive
    run_dir = out / "study" / "runs" / pair.target / method / f"seed{seed}"
    predictions = pd.read_parquet(run_dir / "predictions.parquet")
    target = predictions[predictions["domain"] == "target"].drop(columns=["domain", "label_name"])
    evaluation = evaluate(target, n_resamples=study.base.evaluation.bootstrap, seed=study.base.evaluation.seed,
                          progress=False)
    unit = unit_name(method, pair.target, seed)
    folder = run.method_dir(unit)
    figures = folder / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    files = [plot_roc_by_site(target, figures / "roc.png"), plot_reliability(target, figures / "reliability.png")]
    model = _trained_model(study, data, run_dir, spec)
    explained = _explain(model, data, method, explain, folder, progress)
    files += explained["files"]
    if not run.is_logged(unit):
        run.write_model(unit, model, study.base.model_dump())
        run.log_method(method, evaluation.aggregates[method], target, transductive=transductive, files=files,
                       target=pair.target, seed=seed)
    return {"method": method, "target": pair.target, "seed": seed, "transductive": transductive,
            "folder": str(run_dir), "pointing_game": explained["pointing_game"], "figures": [str(f) for f in files]}


def _trained_model(study: StudyConfig, data, run_dir: Path, spec: MethodSpec):
    """The selected checkpoint of a study run, adapted to the target as the study predicted it."""
    from senolab.adaptation import METHODS
    from senolab.checkpoint import load_checkpoint
    from senolab.engine.trainer import model_from_config

    model = model_from_config(study.base, data)
    best = load_checkpoint(run_dir / "best.pt")
    model.load_state_dict(best["model"])
    adaptation = METHODS.build(spec.name, **spec.options)
    if best.get("method"):
        adaptation.load_state_dict(best["method"], strict=False)
    target_loader = data.loader("test", study.base.train.batch_size, labelled=False)
    return adaptation.adapt_for_inference(model, target_loader).eval()


def _explain(model, data, method: str, step: ExplainStep, folder: Path, progress: bool) -> dict:
    """Attributions on target cases; the pointing game says whether they fall on the lesion."""
    from senolab.explain import cohort_case_grids, explain_images, pointing_game

    files, games = [], []
    for name in step.methods:
        explanations = explain_images(model, data.loader("test", 8), method=name, site_names=data.sites,
                                      max_cases=step.max_cases, progress=progress)
        game = pointing_game(explanations).assign(explainer=name)
        games.append(game)
        grids = cohort_case_grids(explanations, folder / "explanations", prefix=name)
        files += list(grids.values())
    table = pd.concat(games, ignore_index=True)
    path = folder / "explanations" / "pointing_game.csv"
    table.to_csv(path, index=False)
    files.append(path)
    files += _tabular_attributions(model, data, folder / "explanations", step.max_cases)
    return {"files": files, "pointing_game": table.to_dict("records")}


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
