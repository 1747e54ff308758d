"""`senolab stress RUN --on ROOT`: graded stress tests of trained models under ultrasound corruptions.

Every corruption of :data:`senolab.evaluation.corruptions.CORRUPTIONS` is applied at each
severity 1..5 to the test images (at their stored resolution, before the letterbox), and
every model of RUN predicts them; AUC and Dice per corruption and severity, with
patient-bootstrap CIs (:func:`senolab.evaluation.evaluate`), against the clean images
(severity 0). Corruptions are seeded per (seed, corruption, case): the same ``--seed``
gives the same pixels, and a higher severity strengthens the same random draw.

RUN is one of :data:`RUN_KINDS`:

- ``train``: a `senolab train` folder (config.yaml, model/);
- ``unit``: a study unit, ``runs/<target>/<method>/seed<k>`` (its model as it predicted the
  target: after the method's inference-time adaptation, which is not redone on the
  corrupted images; input harmonisation of the target, where a method has one, is applied);
- ``study``: a study folder (study.yaml, runs/): every unit, so one sees which
  adaptation method is robust to which shift.

ROOT is a dataset folder any reader detects, or ``synthetic`` (the run's own synthetic
data, as its config generates it). The cases: a unit's target site when ROOT has it, a
training run's test part (split.csv) when ROOT holds those cases, else every case of ROOT,
so a model is not stress-tested on the images it trained on.

Written to OUT (default RUN/stress_<cohort name>): ``stress.csv`` (one row per model,
corruption and severity), ``stress.md``, ``stress.png``, ``corruption_examples.png``,
``summary.json``, and the MLflow records (a parent run for the command and a child per model).
"""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from senolab.errors import InputError
from senolab.paths import require_folder, writable_folder
from senolab.registry import Registry
from senolab.evaluation.formatting import interval_text, number_text

CLEAN = "clean"
STRESS_METRICS = ("auc", "dice")
SYNTHETIC = "synthetic"


@dataclass
class StressModel:
    """One model to stress: its unit name (MLflow), folder, config and whose cases it keeps."""

    unit: str
    folder: Path
    config: object  # ExperimentConfig
    method: object | None = None  # MethodSpec of a study unit
    target: str | None = None  # a study unit's target site
    split: Path | None = None  # a training run's split.csv

    @property
    def package(self) -> Path:
        return self.folder / "model"


@dataclass(frozen=True)
class RunKind:
    """A kind of RUN folder: ``detect(folder)`` and ``models(folder)``."""

    detect: Callable[[Path], bool]
    models: Callable[[Path], list[StressModel]]
    what: str


RUN_KINDS: Registry[RunKind] = Registry("run folder kind")


def _has_model(folder: Path) -> bool:
    return (folder / "model" / "MLmodel").is_file()


def _train_models(folder: Path) -> list[StressModel]:
    from senolab.engine.config import load_config

    return [StressModel("erm", folder, load_config(folder / "config.yaml"), split=folder / "split.csv")]


def _unit_model(folder: Path) -> StressModel:
    from senolab.engine.config import load_study_config
    from senolab.tracking.rundir import unit_name

    study = load_study_config(folder.parents[3] / "study.yaml")
    spec = next(m for m in study.methods if m.label == folder.parent.name)
    seed, target = int(folder.name.removeprefix("seed")), folder.parent.parent.name
    return StressModel(unit_name(spec.label, target, seed), folder, study.base, spec, target)


def _is_unit(folder: Path) -> bool:
    return (_has_model(folder) and folder.name.startswith("seed") and len(folder.parents) > 3
            and folder.parents[2].name == "runs" and (folder.parents[3] / "study.yaml").is_file())


def _study_models(folder: Path) -> list[StressModel]:
    units = sorted(p.parent.parent for p in (folder / "runs").glob("*/*/seed*/model/MLmodel"))
    if not units:
        raise InputError(f"{folder}: a study folder without any finished unit (runs/<target>/<method>/seed<k>/model)")
    return [_unit_model(unit) for unit in units]


RUN_KINDS.register("train")(RunKind(lambda f: _has_model(f) and (f / "config.yaml").is_file(), _train_models,
                                    "a `senolab train` folder (config.yaml, model/)"))
RUN_KINDS.register("unit")(RunKind(_is_unit, lambda f: [_unit_model(f)],
                                   "a study unit folder (runs/<target>/<method>/seed<k>, with model/)"))
RUN_KINDS.register("study")(RunKind(lambda f: (f / "study.yaml").is_file() and (f / "runs").is_dir(), _study_models,
                                    "a study folder (study.yaml, runs/)"))


def run_models(run: str | Path) -> list[StressModel]:
    """The models of a RUN folder, whichever kind it is; an InputError naming the kinds otherwise."""
    folder = require_folder(run, "run folder")
    for name in RUN_KINDS:
        kind = RUN_KINDS.get(name)
        if kind.detect(folder):
            return kind.models(folder)
    kinds = "; ".join(RUN_KINDS.get(name).what for name in RUN_KINDS)
    raise InputError(f"{run}: not a trained run; expected {kinds}")


# ----------------------------------------------------------------------------- the cohort


def test_cohort(root: str, config, progress: bool):
    """The cohort at ROOT: a dataset folder, or the run config's synthetic data."""
    from senolab.cohorts.readers import open_cohort

    if root == SYNTHETIC:
        return open_cohort(SYNTHETIC, {SYNTHETIC: config.data.synthetic.build()}, progress=progress)
    return open_cohort(str(require_folder(root, "dataset folder")), {}, strict=config.data.strict, progress=progress)


def stressed_cases(model: StressModel, table: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The rows ``model`` is tested on, and which they are, in words."""
    if model.target is not None and (table["site"] == model.target).any():
        return table[table["site"] == model.target], f"its target site {model.target}"
    if model.split is not None and model.split.is_file():
        parts = pd.read_csv(model.split, dtype={"case_id": str}).set_index("case_id")["part"]
        test = table[table["case_id"].map(parts).eq("test")]
        if len(test):
            return test, "its test part (split.csv)"
    return table, "every case of the cohort"


def corrupted_cohort(cohort, rows: pd.DataFrame, pixels: dict, corruption: str, severity: int, seed: int):
    """The ``rows`` as an in-memory cohort whose images carry ``corruption`` at ``severity``."""
    from senolab.evaluation.corruptions import corrupt, to_uint8

    arrays = {}
    for index, case_id in enumerate(rows["case_id"]):
        image, masks = pixels[case_id]
        if corruption != CLEAN:
            image = to_uint8(corrupt(image / 255.0, corruption, severity, case_seed(seed, corruption, index)))
        arrays[case_id] = (image, masks)
    return type(cohort)(cohort.name, rows.reset_index(drop=True), cohort.columns, cohort.splits, cohort.problems,
                        cohort.root, arrays)


def case_seed(seed: int, corruption: str, index: int) -> list[int]:
    """The generator seed of one case and corruption (the same at every severity)."""
    return [seed, zlib.crc32(corruption.encode()), index]


def _pixels(cohort, rows: pd.DataFrame) -> dict:
    from senolab.cohorts.pixels import case_image, case_masks

    return {r["case_id"]: (case_image(cohort, r), case_masks(cohort, r)) for r in rows.to_dict("records")}


# ----------------------------------------------------------------------------- the test


@dataclass
class StressResult:
    table: pd.DataFrame
    markdown: str
    out: Path


def stress_test(run: str | Path, root: str | Path, out: str | Path | None = None, seed: int = 0,
                corruptions: list[str] | None = None, severities=None, progress: bool = True,
                tracking_uri: str | None = None, n_resamples: int | None = None) -> StressResult:
    """Every model of ``run`` on the cohort at ``root``, clean and under each corruption and
    severity (module docstring); writes OUT and returns the table and its markdown."""
    from tqdm.auto import tqdm

    from senolab.evaluation.corruptions import CORRUPTIONS, SEVERITIES
    from senolab.runners.packaged import PREPROCESSING, read_state
    from senolab.tracking import RunDir, table_fingerprint
    from senolab.tracking.runfolder import claim_folder

    models = run_models(run)
    root = str(root)
    out = writable_folder(Path(out if out is not None else Path(run) / f"stress_{Path(root).name}").absolute(),
                          "stress-test folder")
    corruptions = list(corruptions or CORRUPTIONS.names())
    for name in corruptions:
        if name not in CORRUPTIONS:
            raise InputError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS.names())}")
    severities = list(severities or SEVERITIES)
    settings = {"kind": "stress", "run": str(Path(run)), "on": root, "seed": seed, "corruptions": corruptions,
                "severities": severities, "n_resamples": n_resamples}
    claim_folder(out, settings, "stress.yaml", command="senolab stress")
    config = models[0].config
    cohort = test_cohort(root, config, progress)
    tracked = RunDir.open_or_create(out, config.name, settings, tracking_uri=tracking_uri, command="stress",
                                    data_fingerprint=table_fingerprint(cohort.table))
    plan = [(CLEAN, 0)] + [(c, s) for c in corruptions for s in severities]
    frames, described = [], {}
    with tqdm(total=len(models) * len(plan), desc="stress", unit="pass", disable=not progress) as bar:
        for model in models:
            state = read_state(model.package / "artifacts" / PREPROCESSING)
            rows, described[model.unit] = stressed_cases(model, cohort.table)
            described[model.unit] += _masked_inputs(state)
            frame = _stress_model(model, state, cohort, rows, plan, seed, n_resamples, bar)
            frames.append(frame)
            if not tracked.is_logged(model.unit):
                tracked.log_unit(model.unit, metrics=_unit_metrics(frame), tags=_unit_tags(model),
                                 params={"stressed_cases": described[model.unit]})
    table = pd.concat(frames, ignore_index=True)
    markdown = stress_markdown(table)
    files = _write(out, table, markdown, settings, described, cohort, seed, corruptions, severities)
    tracked.finish(metrics=_headline(table), files=files, echo=progress)
    return StressResult(table, markdown, out)


def _stress_model(model: StressModel, state: dict, cohort, rows: pd.DataFrame, plan, seed: int, n_resamples,
                  bar) -> pd.DataFrame:
    """The model's AUC and Dice (with CIs) on the clean and each corrupted version of ``rows``
    (``state``: its package's preprocessing)."""
    from senolab.engine.predict import predict
    from senolab.engine.trainer import pick_device
    from senolab.evaluation import evaluate
    from senolab.runners.packaged import load_packaged_model, restored_data

    device = pick_device(model.config.train.device)
    harmonise = _harmonise(model)
    pixels = _pixels(cohort, rows)
    predictions, network = [], None
    for corruption, severity in plan:
        data = restored_data(state, corrupted_cohort(cohort, rows, pixels, corruption, severity, seed))
        if network is None:
            network = load_packaged_model(model.package, data).to(device)
        table = predict(network, data.loader("test", model.config.train.batch_size), data, device, harmonise=harmonise)
        predictions.append(table.assign(method=f"{corruption}@{severity}", site="stress"))
        bar.update()
    evaluation = evaluate(pd.concat(predictions, ignore_index=True).drop(columns=["label_name"]),
                          n_resamples=model.config.evaluation.bootstrap if n_resamples is None else n_resamples,
                          seed=model.config.evaluation.seed, progress=False)
    return _rows(model, evaluation.aggregates, plan, len(rows))


def _masked_inputs(state: dict) -> str:
    """What the stressed model (its package's preprocessing ``state``) does without:
    radiomics are features of the clean image's lesion, not recomputed on a corrupted one,
    so they are masked as missing (as a packaged model does with new images) and the clean
    row differs from the study's own score."""
    if not state.get("radiomics_columns"):
        return ""
    return "; its radiomics inputs are masked as missing (never recomputed on corrupted images), so its clean score " \
           "is that of image and metadata alone, not the study's"


def _harmonise(model: StressModel):
    """The study method's input harmonisation of target images (identity for most)."""
    if model.method is None:
        return None
    from senolab.adaptation import METHODS

    method = METHODS.build(model.method.name, **model.method.options)
    return lambda batch: method.harmonise(batch, "target")


def _rows(model: StressModel, aggregates: dict, plan, n_cases: int) -> pd.DataFrame:
    name = model.unit if model.target is None else f"{model.method.label} -> {model.target}"
    rows = []
    for corruption, severity in plan:
        entries = aggregates[f"{corruption}@{severity}"]["stress"]
        row = {"model": name, "unit": model.unit, "corruption": corruption, "severity": severity, "n_cases": n_cases}
        for metric in STRESS_METRICS:
            entry = entries.get(metric, {"value": np.nan, "ci": [np.nan, np.nan]})
            row[metric], (row[f"{metric}_lo"], row[f"{metric}_hi"]) = entry["value"], entry["ci"]
        rows.append(row)
    frame = pd.DataFrame(rows)
    clean = frame[frame["corruption"] == CLEAN].iloc[0]
    for metric in STRESS_METRICS:
        frame[f"delta_{metric}"] = frame[metric] - clean[metric]
    return frame


def _unit_tags(model: StressModel) -> dict[str, str]:
    tags = {"method": model.method.label if model.method is not None else "erm", "stress": "true"}
    if model.target is not None:
        tags["target_site"] = model.target
    return tags


def _unit_metrics(frame: pd.DataFrame) -> dict[str, float]:
    """``<corruption>.s<severity>.<metric>`` (and CIs) for MLflow; defined values only."""
    metrics = {}
    for r in frame.to_dict("records"):
        for metric in STRESS_METRICS:
            for suffix, column in (("", metric), ("_ci_lo", f"{metric}_lo"), ("_ci_hi", f"{metric}_hi")):
                if np.isfinite(r[column]):
                    metrics[f"{r['corruption']}.s{r['severity']}.{metric}{suffix}"] = float(r[column])
    return metrics


def _headline(table: pd.DataFrame) -> dict[str, float]:
    """Per model and corruption, the AUC change at the highest severity."""
    top = table[table["severity"] == table["severity"].max()]
    return {f"{r['unit'].replace('/', '.')}.{r['corruption']}.delta_auc": float(r["delta_auc"])
            for r in top.to_dict("records") if np.isfinite(r["delta_auc"])}


# ----------------------------------------------------------------------------- outputs


def stress_markdown(table: pd.DataFrame) -> str:
    """Per metric, a compact table (model x corruption, one column per severity), then the
    full table with CIs."""
    parts = []
    for metric in STRESS_METRICS:
        if not table[metric].notna().any():
            continue
        clean = table[table["corruption"] == CLEAN].set_index("model")[metric]
        lines = [f"{metric.upper() if metric == 'auc' else metric.capitalize()} by severity (0 = clean):", "",
                 "| model | corruption | " + " | ".join(str(s) for s in range(6)) + " |", "|---|---|" + "---|" * 6]
        for (model, corruption), rows in table[table["corruption"] != CLEAN].groupby(["model", "corruption"],
                                                                                     sort=False):
            values = dict(zip(rows["severity"], rows[metric]))
            cells = [number_text(clean[model])] + [number_text(values.get(s)) for s in range(1, 6)]
            lines.append(f"| {model} | {corruption} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def _full_markdown(table: pd.DataFrame, described: dict, settings: dict) -> str:
    head = [f"Stress test of {settings['run']} on {settings['on']} (seed {settings['seed']}); patient-bootstrap 95% CIs.",
            "", *[f"- {unit}: {what}" for unit, what in described.items()], ""]
    full = ["| model | corruption | severity | n | AUC [95% CI] | ΔAUC | Dice [95% CI] | ΔDice |",
            "|---|---|---|---|---|---|---|---|"]
    for r in table.to_dict("records"):
        full.append(f"| {r['model']} | {r['corruption']} | {r['severity']} | {r['n_cases']} "
                    f"| {interval_text(r, 'auc')} | {number_text(r['delta_auc'])} "
                    f"| {interval_text(r, 'dice')} | {number_text(r['delta_dice'])} |")
    return "\n".join(head) + "\n" + stress_markdown(table) + "\nAll values:\n\n" + "\n".join(full) + "\n"


def _write(out: Path, table: pd.DataFrame, markdown: str, settings: dict, described: dict, cohort, seed: int,
           corruptions: list[str], severities: list[int]) -> list[Path]:
    from senolab.evaluation.clinical_figures import plot_corruption_examples, plot_stress
    from senolab.evaluation.corruptions import CORRUPTIONS, corrupt
    from senolab.evaluation.report import json_safe

    table.to_csv(out / "stress.csv", index=False)
    (out / "stress.md").write_text(_full_markdown(table, described, settings))
    figure = plot_stress(table, out / "stress.png")
    first = cohort.table.iloc[0].to_dict()
    image = _pixels(cohort, cohort.table.iloc[:1])[first["case_id"]][0] / 255.0
    examples = {name: [corrupt(image, name, s, case_seed(seed, name, 0)) for s in severities] for name in corruptions}
    plot_corruption_examples(image, examples, out / "corruption_examples.png")
    summary = {"settings": settings, "cases": described,
               "corruptions": {name: (CORRUPTIONS.get(name).__doc__ or "").strip() for name in corruptions},
               "results": table.to_dict(orient="records")}
    (out / "summary.json").write_text(json.dumps(json_safe(summary), indent=1, allow_nan=False) + "\n")
    return [out / "stress.csv", out / "stress.md", figure, out / "corruption_examples.png", out / "summary.json"]

