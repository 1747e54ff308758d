"""The fusion ablation: what metadata and radiomics add to the image model, fused three ways.

``senolab fusion ablate CONFIG --out DIR``. CONFIG is an experiment config (the base
model, data and training) with an ``ablation`` section::

    ablation:
      folds: 5                                   # patient-level k-fold
      fusions: [concat, cross_attention, graph]
      modalities: [[metadata], [radiomics], [metadata, radiomics]]
      fusion_options: {graph: {k: 8, conv: sage}}  # per fusion
      finetune: {train: {epochs: 6, lr: 0.001}}  # stage-2 overrides of the config (null: from scratch)
      radiomics_params: null                     # pyradiomics parameters, when data.radiomics is unset

Two stages per fold, both with the engine's :class:`~senolab.engine.trainer.Trainer`
on the same split and seed. Stage 1 trains the image model of the base config. Stage 2
trains every variant (image only, then each fusion x each modality set) end to end,
starting from the stage-1 encoder, with the ``finetune`` overrides of the config (e.g.
fewer epochs, a lower learning rate, no segmentation head; ``finetune: null`` trains
every variant from scratch with the base settings instead). The image-only reference goes through the same stage 2 without fusion, so a
variant differs from it by its fusion alone, not by extra training. Why the warm
start: a small cohort does not teach an image encoder from scratch in the few epochs
each of ten variants per fold can afford on a CPU, and a fusion trained from scratch
would then be compared with an image model that never converged.

Each variant predicts its fold's test part; the out-of-fold predictions of all folds are
pooled so every case is predicted once per variant. Per variant: AUC (malignant vs
benign) with a patient-bootstrap interval, and DeLong's paired test against image only.

Outcome columns (BI-RADS, diagnosis, ...) are inputs only when the config opts in by
name (``data.opt_in_outcomes``), and an opt-in is printed with the results.

Missing modalities are measured, not assumed: every fused variant also predicts its
test part with all tabular inputs withheld (as for a cohort that records none, such as
BUSI), and the table reports that AUC next to the full one.

Written to DIR: ``results.csv`` (one row per variant: pooled AUC with CI, difference and
DeLong p against image only, AUC with the tabular inputs withheld), ``ablation.md`` (the same table), ``ablation_auc.png``
(AUC with CI bars per variant), ``summary.json`` (docs/contracts.md#evaluation-outputs shape, per-site aggregates
of every variant, plus an ``ablation`` section), ``predictions.parquet`` (every
out-of-fold prediction) and ``runs/fold<k>/<variant>/`` (each run's predictions and
history, and the stage-1 encoder in ``runs/fold<k>/pretrained_image/``; a rerun with
the same config reuses every run marked done, and another config is refused: the run-folder
convention of :mod:`senolab.tracking.runfolder`).
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from senolab.engine.config import (AblationOptions, ConfigError, ExperimentConfig,  # noqa: F401 (callers import them from here)
                                   load_ablation)
from senolab.runners.packaged import save_package
from senolab.tracking.records import slug
from senolab.tracking.runfolder import claim_folder, done_record, mark_done
from senolab.tracking.rundir import unit_name

SECTION = "ablation"
REFERENCE = "image_only"


@dataclass(frozen=True)
class Variant:
    """One model of the ablation: a fusion (None: the image alone) of some modalities."""

    fusion: str | None
    modalities: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def transductive(self) -> bool:
        return bool(self.options.get("transductive", False))

    @property
    def name(self) -> str:
        if self.fusion is None:
            return REFERENCE
        return "+".join([self.fusion, *self.modalities]) + (" (transductive)" if self.transductive else "")

    @property
    def withheld(self) -> str:
        """The method name of this variant's predictions with every tabular input withheld at test."""
        return f"{self.name} [tabular withheld]"

    @property
    def methods(self) -> list[str]:
        return [self.name, self.withheld] if self.fusion else [self.name]

    @property
    def slug(self) -> str:
        return self.name.replace(" (transductive)", "_transductive")

    def configure(self, config: ExperimentConfig) -> ExperimentConfig:
        """The experiment config of this variant."""
        options = {**self.options, "modalities": list(self.modalities)} if self.fusion else {}
        model = config.model.model_copy(update={"fusion": self.fusion, "fusion_options": options})
        return config.model_copy(update={"model": model})


def plan_variants(options: AblationOptions) -> list[Variant]:
    """Image only first, then every fusion with every modality set."""
    fused = [Variant(f, tuple(m), dict(options.fusion_options.get(f, {}))) for f in options.fusions for m in options.modalities]
    return [Variant(None), *fused]


# ------------------------------------------------------------------------- running


@dataclass
class AblationResult:
    table: pd.DataFrame  # one row per variant
    summary: dict
    markdown: str
    seconds: float


def run_ablation(config: ExperimentConfig, options: AblationOptions, out_dir: str | Path,
                 progress: bool = True, tracking_uri: str | None = None) -> AblationResult:
    """Train and evaluate every variant on every fold; write the results (module docstring).

    Tracked in MLflow as it runs: a parent run for the ablation, a child per (fold,
    variant) with its epochs live and its fold's test AUC, the pooled table on the parent."""
    from senolab.engine.data import load_cohorts, prepare
    from senolab.paths import writable_folder
    from senolab.tracking import RunDir, table_fingerprint

    began = time.perf_counter()
    out = writable_folder(Path(out_dir).absolute(), "ablation folder")  # before any work
    claim_folder(out, _recorded(config, options), command="senolab fusion ablate")
    cohort = load_cohorts(config.data, progress)
    run = RunDir.open_or_create(out, config.name, _recorded(config, options),
                                tracking_uri=tracking_uri, data_fingerprint=table_fingerprint(cohort.table),
                                command="ablation")
    config = _with_radiomics(config, options, cohort, out, progress)
    variants = plan_variants(options)
    _check_inputs(cohort, variants)
    tables, opted_in = [], []
    for fold in range(options.folds):
        fold_config = _fold_config(config, options.folds, fold)
        data = prepare(fold_config.data, cohort=cohort, progress=False)
        opted_in = data.metadata.opted_in if data.metadata is not None else []
        runs = out / "runs" / f"fold{fold}"
        if options.finetune is not None:
            stage1 = Tracked(run, unit_name("pretrained_image", f"fold{fold}"), {"fold": str(fold)})
            encoder = _pretrained_encoder(Variant(None).configure(fold_config), data, runs / "pretrained_image",
                                          progress, stage1)
            fold_config = options.finetuning(fold_config, encoder)
        for variant in variants:
            tracked = Tracked(run, unit_name(variant.slug, f"fold{fold}"), {"method": variant.name, "fold": str(fold)})
            predicted = _run_variant(variant.configure(fold_config), data, runs / variant.slug, progress, tracked)
            tables += [table.assign(method=name, fold=fold) for name, table in zip(variant.methods, predicted)]
    predictions = pd.concat(tables, ignore_index=True)
    predictions.to_parquet(out / "predictions.parquet")
    table, summary, markdown = _report(predictions, variants, config, options, opted_in, out, progress)
    headline = {f"{slug(row['method'])}.{name}": float(row[name]) for row in table.to_dict("records")
                for name in ("auc", "auc_lo", "auc_hi") if name in row and np.isfinite(row[name])}
    run.finish(metrics=headline, echo=False, files=[out / name for name in (
        "results.csv", "ablation.md", "ablation_auc.png", "summary.json")])
    return AblationResult(table, summary, markdown, time.perf_counter() - began)


@dataclass
class Tracked:
    """Where one training of the ablation is logged: the run directory and its unit."""

    run: object
    unit: str
    tags: dict

    def log(self, run_dir: Path, tables: list[pd.DataFrame], names: list[str], start_ms: int | None) -> None:
        """The unit's MLflow child: its fold's test AUC per prediction table, files and epochs."""
        if self.run.is_logged(self.unit):
            return
        metrics = {f"{slug(name)}.fold_auc": auc for name, table in zip(names, tables)
                   if (auc := _fold_auc(table)) is not None}
        files = [p for p in sorted(run_dir.glob("*.parquet")) + [run_dir / "history.csv", run_dir / "model"]
                 if p.exists()]
        self.run.log_unit(self.unit, metrics=metrics, tags=self.tags, files=files, history=run_dir / "history.csv",
                          start_ms=start_ms, folder=run_dir)


def _fold_auc(table: pd.DataFrame) -> float | None:
    """Malignant-vs-benign AUC of one fold's test part (no interval: the pooled one has it)."""
    from sklearn.metrics import roc_auc_score

    labelled = table[table["label"].notna()]
    y = (labelled["label_name"] == "malignant").astype(int)
    return float(roc_auc_score(y, labelled["score"])) if y.nunique() == 2 else None


def _recorded(config: ExperimentConfig, options) -> dict:
    """The ablation's config as recorded (config.yaml, MLflow, summary.json): readable again as one."""
    return {**config.model_dump(), "kind": "ablation", SECTION: options.model_dump()}


def _fold_config(config: ExperimentConfig, folds: int, fold: int) -> ExperimentConfig:
    split = config.data.split.model_copy(update={"kind": "kfold", "k": folds, "fold": fold})
    return config.model_copy(update={"data": config.data.model_copy(update={"split": split})})


def _with_radiomics(config: ExperimentConfig, options: AblationOptions, cohort, out: Path,
                    progress: bool) -> ExperimentConfig:
    """Extract (cached) radiomics into DIR/radiomics.parquet when a variant needs them and none are given."""
    if not options.uses_radiomics or config.data.radiomics is not None:
        return config
    from senolab.radiomics import extract_features

    features = extract_features(cohort, options.radiomics_params, jobs=options.radiomics_jobs, progress=progress)
    path = features.write(out / "radiomics.parquet")
    if progress:
        print(features.summary())
    return config.model_copy(update={"data": config.data.model_copy(update={"radiomics": str(path)})})


def _check_inputs(cohort, variants: list[Variant]) -> None:
    if any("metadata" in v.modalities for v in variants) and not cohort.metadata_columns():
        raise ValueError(f"cohort {cohort.name!r} has no metadata columns; drop 'metadata' from ablation.modalities")


def _pretrained_encoder(config: ExperimentConfig, data, run_dir: Path, progress: bool, tracked: Tracked) -> Path:
    """Stage 1: the fold's image-only model; its encoder weights start every variant of stage 2."""
    weights = run_dir / "encoder.pt"
    start_ms = None
    if done_record(run_dir) is None:
        model, start_ms = _train(config, data, run_dir, progress, tracked)
        torch.save(model.encoder.state_dict(), weights)
        mark_done(run_dir, {"encoder": weights.name})
    tracked.log(run_dir, [], [], start_ms)
    return weights


def _run_variant(config: ExperimentConfig, data, run_dir: Path, progress: bool, tracked: Tracked) -> list[pd.DataFrame]:
    """Test-part predictions of one variant on one fold: as is, and (fused variants) with the
    tabular inputs withheld, as for a cohort that records none. Reused when the run is done
    (the ablation folder is only resumed with the config that started it)."""
    from senolab.engine.predict import predict
    from senolab.engine.trainer import pick_device
    from senolab.fusion.graph import refresh_population

    products = [run_dir / "predictions.parquet"]
    if config.model.fusion is not None:
        products.append(run_dir / "predictions_tabular_withheld.parquet")
    if done_record(run_dir) is not None:
        tables = [pd.read_parquet(p) for p in products]
        tracked.log(run_dir, tables, [p.stem for p in products], None)
        return tables
    model, start_ms = _train(config, data, run_dir, progress, tracked)
    device, batch = pick_device(config.train.device), config.train.batch_size
    # the population graph's nodes: the training cases, embedded by the final encoder
    refresh_population(model, data.loader("train", batch, augment=False), device)
    without_tabular = dataclasses.replace(data, metadata=None, radiomics=None)
    tables = [predict(model, source.loader("test", batch), source, device)
              for source in (data, without_tabular)[: len(products)]]
    for table, path in zip(tables, products):
        table.to_parquet(path)
    shutil.rmtree(run_dir / "model", ignore_errors=True)  # left by a run stopped before it was done
    save_package(run_dir / "model", model, config, data)
    mark_done(run_dir, {"predictions": [p.name for p in products]})
    tracked.log(run_dir, tables, [p.stem for p in products], start_ms)
    return tables


def _train(config: ExperimentConfig, data, run_dir: Path, progress: bool,
           tracked: Tracked) -> tuple[torch.nn.Module, int | None]:
    """The engine's Trainer, its epochs live in MLflow; checkpoints go to a temporary
    folder, the history to ``run_dir``. Returns the model and when training started."""
    from senolab.engine.trainer import Trainer

    run_dir.mkdir(parents=True, exist_ok=True)
    live = tracked.run.live(tracked.unit, tags=tracked.tags)
    with tempfile.TemporaryDirectory(prefix="senolab-ablation-") as checkpoints:
        result = Trainer(config, data, checkpoints, callbacks=[live]).fit(resume=False, progress=progress)
    pd.DataFrame(result.history).to_csv(run_dir / "history.csv", index=False)
    return result.model, live.start_ms


# ------------------------------------------------------------------------- reporting


def _report(predictions: pd.DataFrame, variants: list[Variant], config: ExperimentConfig, options: AblationOptions,
            opted_in: list[str], out: Path, progress: bool) -> tuple[pd.DataFrame, dict, str]:
    from senolab.evaluation import compare_methods, evaluate

    scored = predictions.drop(columns=["label_name"])
    evaluation = evaluate(scored, n_resamples=config.evaluation.bootstrap, seed=config.evaluation.seed,
                          progress=progress)
    comparisons = {v.name: compare_methods(scored, REFERENCE, v.name) for v in variants if v.fusion is not None}
    table = ablation_table(evaluation.aggregates, comparisons, variants)
    table.to_csv(out / "results.csv", index=False)
    markdown = markdown_report(table, opted_in, options.folds, config.name)
    (out / "ablation.md").write_text(markdown)
    plot_ablation(table, out / "ablation_auc.png", config.name)
    summary = evaluation.to_summary(_recorded(config, options))
    summary[SECTION] = {
        "reference": REFERENCE,
        "folds": options.folds,
        "opted_in_outcomes": opted_in,
        "variants": json.loads(table.to_json(orient="records")),
        "delong": {name: json.loads(c.to_json(orient="records")) for name, c in comparisons.items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, allow_nan=False) + "\n")
    return table, summary, markdown


def ablation_table(aggregates: dict, comparisons: dict[str, pd.DataFrame], variants: list[Variant]) -> pd.DataFrame:
    """One row per variant: pooled AUC with CI, and its difference and DeLong p against image only."""
    from senolab.evaluation import POOLED

    rows = []
    for variant in variants:
        auc = _pooled_auc(aggregates, variant.name)
        row = {"method": variant.name, "site": POOLED, "fusion": variant.fusion or REFERENCE,
               "modalities": "+".join(variant.modalities) or "image", "transductive": variant.transductive,
               "n_cases": auc.get("n", 0), "auc": auc["value"], "auc_lo": auc["ci"][0], "auc_hi": auc["ci"][1],
               "delta_auc": np.nan, "delong_p": np.nan}
        if variant.name in comparisons:
            pooled = comparisons[variant.name].set_index("site").loc[POOLED]
            row["delta_auc"], row["delong_p"] = pooled["auc_b"] - pooled["auc_a"], pooled["p"]
        withheld = _pooled_auc(aggregates, variant.withheld)  # none for image only
        row.update(auc_tabular_withheld=withheld["value"], auc_tabular_withheld_lo=withheld["ci"][0],
                   auc_tabular_withheld_hi=withheld["ci"][1])
        rows.append(row)
    return pd.DataFrame(rows)


def _pooled_auc(aggregates: dict, method: str) -> dict:
    from senolab.evaluation import POOLED

    missing = {"value": np.nan, "ci": [np.nan, np.nan], "n": 0}
    return aggregates.get(method, {}).get(POOLED, {}).get("auc", missing)


def markdown_report(table: pd.DataFrame, opted_in: list[str], folds: int, name: str) -> str:
    """The results table in markdown, the outcome opt-in if any, and what fusion adds."""
    lines = [f"## Fusion ablation: {name} ({folds}-fold, patient-level, out-of-fold predictions pooled)", ""]
    if opted_in:
        lines += [f"**OUTCOME OPT-IN: {', '.join(opted_in)} are model inputs (they encode the answer).**", ""]
    else:
        lines += ["Outcome columns (BI-RADS, diagnosis, ...) are not inputs.", ""]
    lines += ["| variant | AUC | 95% CI | ΔAUC vs image only | DeLong p | AUC, tabular withheld at test |",
              "|---|---|---|---|---|---|"]
    for row in table.itertuples(index=False):
        delta = "" if np.isnan(row.delta_auc) else f"{row.delta_auc:+.3f}"
        p = "" if np.isnan(row.delong_p) else f"{row.delong_p:.3g}"
        withheld = ("" if np.isnan(row.auc_tabular_withheld) else
                    f"{row.auc_tabular_withheld:.3f} [{row.auc_tabular_withheld_lo:.3f}, {row.auc_tabular_withheld_hi:.3f}]")
        lines.append(f"| {row.method} | {row.auc:.3f} | [{row.auc_lo:.3f}, {row.auc_hi:.3f}] | {delta} | {p} | {withheld} |")
    lines += ["", verdict(table)]
    return "\n".join(lines) + "\n"


def verdict(table: pd.DataFrame, alpha: float = 0.05) -> str:
    """One sentence on what fusion adds, from the numbers in ``table``."""
    fused = table[table["fusion"] != REFERENCE].dropna(subset=["delta_auc"])
    if fused.empty:
        return "No fused variant could be compared with image only."
    best = fused.loc[fused["delta_auc"].idxmax()]
    better = fused[(fused["delta_auc"] > 0) & (fused["delong_p"] < alpha)]
    worse = fused[(fused["delta_auc"] < 0) & (fused["delong_p"] < alpha)]
    text = (f"Best fused variant: {best['method']} (ΔAUC {best['delta_auc']:+.3f}, DeLong p {best['delong_p']:.3g}). "
            f"{len(better)} of {len(fused)} fused variants beat image only at p < {alpha}")
    text += f"; {len(worse)} are significantly worse." if len(worse) else "; none is significantly worse."
    if better.empty:
        text += " On these data, fusion adds no significant discrimination over the image model."
    withheld = fused["auc_tabular_withheld"].dropna()
    if len(withheld):
        reference = table.loc[table["fusion"] == REFERENCE, "auc"]
        text += (f" With every tabular input withheld at test, the fused variants reach AUC {withheld.min():.3f} to "
                 f"{withheld.max():.3f}" + (f" (image only: {float(reference.iloc[0]):.3f})." if len(reference) else "."))
    return text


def plot_ablation(table: pd.DataFrame, path: Path, title: str) -> Path:
    """AUC with its CI per variant, image only as a reference line."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 0.45 * len(table) + 1.4))
    ax = fig.subplots()
    y = np.arange(len(table))[::-1]
    for row, position in zip(table.itertuples(index=False), y):
        colour = "black" if row.fusion == REFERENCE else "tab:blue"
        ax.errorbar([row.auc], [position], xerr=[[row.auc - row.auc_lo], [row.auc_hi - row.auc]], fmt="o",
                    color=colour, capsize=3)
    reference = table.loc[table["fusion"] == REFERENCE, "auc"]
    if len(reference):
        ax.axvline(float(reference.iloc[0]), color="grey", linestyle="--", linewidth=1)
    ax.set_yticks(y, table["method"])
    ax.set_xlabel("AUC, malignant vs benign (95% patient-bootstrap CI)\ndashed line: image only")
    ax.set_title(f"Fusion ablation: {title}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path
