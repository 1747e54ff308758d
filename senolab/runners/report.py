"""The run report, read like a paper's methods and results: markdown and a self-contained
HTML page (figures embedded as base64).

It is written from the dict :func:`senolab.runners.main_job.run_main` builds; what that
dict does not hold is read from the run folder: the study config (``study/study.yaml``)
and, in each unit's folder (a method entry's ``folder``), its aggregates with CIs
(``summary.json``: sensitivity, specificity) and its ``history.csv``, from which the
training curves are drawn here. Both renderings come from one list of blocks, so they
never differ.
"""
from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import PIL.Image

from senolab.evaluation.plots import plot_training_curves
from senolab.evaluation.report import load_summary
from senolab.explain.figures import case_grid_path
from senolab.runners.study import StudyConfig, load_study_config, study_pairs


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Table:
    frame: pd.DataFrame


@dataclass(frozen=True)
class Image:
    path: Path
    caption: str


@dataclass(frozen=True)
class Code:
    text: str


Block = Heading | Paragraph | Table | Image | Code


@dataclass(frozen=True)
class Unit:
    """One (target, method, seed): the main job's entry, its study result row, its target-site
    aggregates (metric -> {value, ci, n, n_patients}), its folder and its training history
    (None when the run kept none)."""
    entry: dict
    row: dict
    aggregates: dict
    folder: Path
    history: pd.DataFrame | None

    @property
    def title(self) -> str:
        return f"{self.entry['method']} -> {self.entry['target']}"


def write_report(report: dict, out: str | Path) -> tuple[Path, Path]:
    """``report.md`` and ``report.html`` in ``out``, the run folder."""
    out = Path(out)
    blocks = _numbered(_document(report, out))
    md_path, html_path = out / "report.md", out / "report.html"
    md_path.write_text(_markdown(blocks, out))
    html_path.write_text(_html(blocks, f"senolab run: {report['name']}"))
    return md_path, html_path


# ---------------------------------------------------------------- the document


def _document(report: dict, out: Path) -> list[Block]:
    study = load_study_config(out / "study" / "study.yaml")
    units = [_unit(entry, report["study"]) for entry in report["methods"]]
    return [Heading(1, f"senolab run: {report['name']}"), *_methods(report, study, units, out),
            *_results(report, study, units, out), *_tracking(report)]


def _unit(entry: dict, results: pd.DataFrame) -> Unit:
    method, target, seed = entry["method"], entry["target"], entry["seed"]
    row = results[(results["method"] == method) & (results["target_site"] == target) & (results["seed"] == seed)]
    folder = Path(entry["folder"])
    history = folder / "history.csv"
    return Unit(entry, row.iloc[0].to_dict(), load_summary(folder)["aggregates"][method][target], folder,
                pd.read_csv(history) if history.exists() else None)


def _methods(report: dict, study: StudyConfig, units: list[Unit], out: Path) -> list[Block]:
    cohorts = report["cohorts"]
    blocks = [Heading(2, "Methods"),
              Paragraph(" ".join([_data_sentence(cohorts), *_protocol_sentences(study, cohorts["sites"], units)])),
              Paragraph(" ".join([_model_sentence(study), _training_sentence(study, units),
                                  SELECTIONS[study.selection]])),
              Paragraph(_evaluation_sentence(study)),
              Table(_cohort_table(cohorts)),
              Image(out / "figures" / "cohorts.png", f"The {cohorts['cohort']} cohort.")]
    if "radiomics" in report:
        blocks += [Paragraph("Radiomics features per lesion (pyradiomics):"), Code(str(report["radiomics"]["summary"]))]
    return blocks


def _data_sentence(cohorts: dict) -> str:
    classes = ", ".join(f"{n} {label}" for label, n in cohorts["classes"].items())
    return (f"The {cohorts['cohort']} cohort holds {cohorts['n_images']} images of {cohorts['n_patients']} "
            f"patients ({classes}) from {len(cohorts['sites'])} sites ({_listing(cohorts['sites'])}).")


def _protocol_sentences(study: StudyConfig, sites: list[str], units: list[Unit]) -> list[str]:
    if study.protocol == "loso":
        sentences = [f"Leave-one-site-out: each of {_listing(sites)} in turn was the unseen target site, "
                     "the other sites the sources."]
    else:
        sentences = [f"Models were trained at {_listing(p.sources)} (sources) and tested at {p.target}, "
                     "a site unseen in training." for p in study_pairs(study, sites)]
    sentences.append(f"Source patients were split into training, validation and a held-out source test "
                     f"({study.source_test_fraction:.0%}), patient- and duplicate-disjoint; no target label "
                     "reached training.")
    transductive = sorted({u.entry["method"] for u in units if u.entry["transductive"]})
    if transductive:
        sentences.append(f"Transductive methods ({_listing(transductive)}) also used the target's unlabelled "
                         "images, in training or at inference.")
    return sentences


HEAD_NAMES = {"classification": "classification", "segmentation": "segmentation", "bbox": "box"}
CLASS_TASKS = {  # classes setting -> (what the AUC measures, when a case counts as called malignant)
    "binary": ("malignant vs benign", "its malignancy probability exceeds 0.5"),
    "three": ("the mean one-vs-rest AUC over normal, benign and malignant", "malignant is its most probable class"),
}
SELECTIONS = {
    "source_val": "The checkpoint of the epoch with the best source-validation score (mean of validation AUC "
                  "and Dice) was kept.",
    "target_entropy": "The checkpoint of the epoch with the lowest prediction entropy on the unlabelled target "
                      "images was kept (unsupervised selection).",
    "oracle": "The checkpoint of the epoch with the best target AUC was kept: an oracle that reads target "
              "labels, an upper bound rather than a usable result.",
}


def _model_sentence(study: StudyConfig) -> str:
    base = study.base
    heads = [name for key, name in HEAD_NAMES.items() if getattr(base.model.heads, key)]
    modalities = base.model.fusion_options.get("modalities", [])
    fusion = (f", fusing the image with {_listing(modalities)} by {base.model.fusion} fusion"
              if modalities and base.model.fusion != "image_only" else "")
    return (f"Each model is a {base.model.encoder} encoder with {_listing(heads)} heads{fusion}, on images "
            f"letterboxed to {base.data.image_size} px, its task losses balanced by {base.loss.balancer} weighting.")


def _training_sentence(study: StudyConfig, units: list[Unit]) -> str:
    train = study.base.train
    budget = f" or after {_duration(train.time_budget_s)}" if train.time_budget_s else ""
    epochs = [len(u.history) for u in units if u.history is not None]
    ran = f" (the runs took {_span(epochs, 'epoch')})" if epochs else ""
    return (f"Training: AdamW for at most {_count(train.epochs, 'epoch')}{ran}, batch {train.batch_size}, "
            f"learning rate {train.lr:g} with {_count(train.warmup_epochs, 'warm-up epoch')} then cosine decay, "
            f"weight decay {train.weight_decay:g}, stopped after {_count(train.early_stopping.patience, 'epoch')} "
            f"without improvement{budget}; {'seeds' if len(study.seeds) > 1 else 'seed'} "
            f"{_listing([str(s) for s in study.seeds])}.")


def _evaluation_sentence(study: StudyConfig) -> str:
    auc, called = CLASS_TASKS[study.base.data.classes]
    return (f"At the target site, the AUC ({auc}), sensitivity and specificity (a case is called malignant when "
            f"{called}) and Dice carry 95% confidence intervals from {study.base.evaluation.bootstrap} "
            "patient-level bootstrap resamples. In-site AUC is measured on the held-out source cases, the gap is "
            "target minus in-site AUC, and DeLong's paired test compares each method with erm on the same cases. "
            "The site-classifier accuracy is the cross-validated balanced accuracy of a logistic regression telling "
            "source from target embeddings: 0.5 means the model no longer tells the sites apart.")


def _cohort_table(cohorts: dict) -> pd.DataFrame:
    return pd.DataFrame([{"cohort": cohorts["cohort"], "sites": len(cohorts["sites"]), "images": cohorts["n_images"],
                          "patients": cohorts["n_patients"], **cohorts["classes"], "lesions": cohorts["n_lesions"],
                          "duplicate groups": cohorts["duplicate_groups"]}])


def _results(report: dict, study: StudyConfig, units: list[Unit], out: Path) -> list[Block]:
    blocks = [Heading(2, "Results"), Heading(3, "Cross-site results"),
              Paragraph("Performance at the target site, unseen in training; 95% confidence intervals in brackets."),
              Table(_results_table(units, several_seeds=len(study.seeds) > 1))]
    tsne = out / "study" / "embeddings_tsne.png"
    if tsne.exists():
        blocks.append(Image(tsne, "t-SNE of the embeddings of held-out source and target cases, per method."))
    blocks += _clinical(units, out / "study")
    for unit in units:
        blocks += _unit_section(unit, several_seeds=len(study.seeds) > 1)
    return blocks


RULE_NAMES = {"youden": "Youden", "sens90": "sensitivity 0.90", "spec90": "specificity 0.90"}


def _clinical(units: list[Unit], study: Path) -> list[Block]:
    """Operating points at the source thresholds (oracle beside), calibration, decision
    curves, then, apart, the local recalibration that uses target labels."""
    operating = _operating_table(units)
    if operating.empty:
        return []
    blocks = [Heading(3, "Operating points"),
              Paragraph("Thresholds were chosen on the source validation cases only (Youden's index, sensitivity 0.90, "
                        "specificity 0.90; a case is called malignant when its malignancy probability reaches the "
                        "threshold) and applied unchanged at the target, with 95% patient-bootstrap CIs. The oracle "
                        "threshold is the target's own by the same rule, chosen with its labels: it shows the "
                        "threshold shift and is never used to choose anything."),
              Table(operating),
              Heading(3, "Calibration"),
              Paragraph("ECE of the malignancy probability (10 equal-width bins) and Brier score at the target, as "
                        "trained and after temperature scaling (one temperature fitted on the log-odds of the "
                        "malignancy probability of the source validation cases)."),
              Table(_calibration_table(units))]
    captions = {"calibration.png": "Reliability of the malignancy probability at each target site, as trained "
                                   "(solid) and temperature-scaled (dashed).",
                "decision_curves.png": "Decision curves at each target site: net benefit of biopsying the cases at "
                                       "or above each threshold probability, against biopsying all or none."}
    blocks += [Image(study / name, caption) for name, caption in captions.items() if (study / name).exists()]
    return blocks + _recalibration(study)


def _operating_table(units: list[Unit]) -> pd.DataFrame:
    rows = []
    for unit in units:
        row = unit.row
        for rule, name in RULE_NAMES.items():
            if _missing(row.get(f"threshold_{rule}")):
                continue
            rows.append({"method": unit.entry["method"], "target": unit.entry["target"], "threshold rule": name,
                         "source threshold": _number(row[f"threshold_{rule}"]),
                         **{f"{label} [95% CI]": _row_metric(row, f"{key}_{rule}")
                            for key, label in (("sensitivity", "sensitivity"), ("specificity", "specificity"),
                                               ("ppv", "PPV"), ("npv", "NPV"))},
                         "oracle threshold": _number(row.get(f"oracle_threshold_{rule}")),
                         "oracle sensitivity": _number(row.get(f"oracle_sensitivity_{rule}")),
                         "oracle specificity": _number(row.get(f"oracle_specificity_{rule}"))})
    return pd.DataFrame(rows)


def _calibration_table(units: list[Unit]) -> pd.DataFrame:
    return pd.DataFrame([{"method": u.entry["method"], "target": u.entry["target"],
                          "temperature": _number(u.row.get("temperature"), 2),
                          "ECE [95% CI]": _row_metric(u.row, "ece_score"),
                          "ECE, scaled": _row_metric(u.row, "ece_score_scaled"),
                          "Brier [95% CI]": _row_metric(u.row, "brier"),
                          "Brier, scaled": _row_metric(u.row, "brier_scaled")} for u in units])


def _recalibration(study: Path) -> list[Block]:
    """The local recalibration: a section of its own, as it uses k labelled target cases."""
    path = study / "recalibration.csv"
    if not path.exists() or path.stat().st_size < 2:
        return []
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return []
    if frame.empty:
        return []
    table = pd.DataFrame([{"method": r["method"], "target": r["target_site"], "uses target labels (k)":
                           r["uses_target_labels"], "threshold rule": RULE_NAMES.get(r["rule"], r["rule"]),
                           "sensitivity [draws 2.5-97.5%]": _row_metric(r, "sensitivity"),
                           "specificity [draws 2.5-97.5%]": _row_metric(r, "specificity"),
                           "at the source threshold": _number(r.get("source_specificity")),
                           "oracle specificity": _number(r.get("oracle_specificity"))}
                          for r in frame.to_dict("records")])
    blocks = [Heading(3, "Local recalibration (uses target labels)"),
              Paragraph(f"Kept apart from the results above because it USES TARGET LABELS: k labelled cases of the "
                        f"target site (drawn by patient, stratified by class, {int(frame['n_draws'].max())} random "
                        "draws) re-set each threshold, evaluated on the remaining target cases only; mean over draws "
                        "with the 2.5th-97.5th percentiles, beside the specificity of the frozen source threshold on "
                        "the same cases and of the oracle threshold. Never used to choose a method."),
              Table(table)]
    figure = study / "recalibration.png"
    if figure.exists():
        blocks.append(Image(figure, "Specificity (and sensitivity) at the sensitivity-0.90 threshold re-set on k "
                                    "labelled target cases, against k (0: the source threshold); dashed: the oracle."))
    return blocks


def _row_metric(row: dict, name: str) -> str:
    """``0.781 [0.606, 0.922]`` from a results row's ``name``, ``name_lo``, ``name_hi``."""
    if _missing(row.get(name)):
        return "-"
    return f"{_number(row[name])} [{_number(row.get(name + '_lo'))}, {_number(row.get(name + '_hi'))}]"


def _results_table(units: list[Unit], several_seeds: bool) -> pd.DataFrame:
    rows = []
    for unit in units:
        row, aggregates = unit.row, unit.aggregates
        rows.append({"method": unit.entry["method"], "target": unit.entry["target"],
                     **({"seed": unit.entry["seed"]} if several_seeds else {}),
                     "transductive": _yes_no(unit.entry["transductive"]),
                     "AUC [95% CI]": _metric(aggregates, "auc"),
                     "sensitivity [95% CI]": _metric(aggregates, "sensitivity"),
                     "specificity [95% CI]": _metric(aggregates, "specificity"),
                     "in-site AUC": _number(row.get("insite_auc")),
                     "AUC gap (target - in-site)": _number(row.get("gap_auc")),
                     "Dice [95% CI]": _metric(aggregates, "dice"),
                     "site-classifier accuracy": _number(row.get("site_classifier_acc")),
                     "DeLong p vs erm": _p_value(row.get("auc_p_vs_erm"))})
    return pd.DataFrame(rows)


def _unit_section(unit: Unit, several_seeds: bool) -> list[Block]:
    method, target = unit.entry["method"], unit.entry["target"]
    blocks = [Heading(3, unit.title + (f" (seed {unit.entry['seed']})" if several_seeds else "")),
              Paragraph(_unit_summary(unit))]
    if unit.entry["pointing_game"]:
        blocks += [Paragraph(f"Do {method}'s attributions fall on the lesion? Share of positive attribution inside "
                             "the lesion mask against the share expected by chance (the mask's area):"),
                   Table(_pointing_game_table(unit.entry["pointing_game"]))]
    # the curves are drawn below: an entry read from the folder again lists the ones drawn last time
    figures = [Path(f) for f in unit.entry["figures"] if f.endswith(".png") and Path(f).name != CURVES_FILE]
    performance = sorted((f for f in figures if f.stem in PERFORMANCE_CAPTIONS),
                         key=lambda f: list(PERFORMANCE_CAPTIONS).index(f.stem))
    blocks += [Image(f, PERFORMANCE_CAPTIONS[f.stem].format(method=method, target=target)) for f in performance]
    curves = _training_curves(unit)
    if curves is not None:
        blocks.append(Image(curves, f"Training of {method} for target {target}: training loss per task, AUC and "
                                    "Dice on the source validation cases, and task weights, per epoch; the dotted "
                                    "line marks the selected epoch."))
    blocks += [Image(f, _explanation_caption(f, unit)) for f in figures if f not in performance]
    return blocks


CURVES_FILE = "training_curves.png"
PERFORMANCE_CAPTIONS = {  # in the order shown
    "roc": "ROC curve of {method} at {target}.",
    "reliability": "Reliability of {method} at {target}: accuracy per confidence bin against perfect calibration.",
}


def _unit_summary(unit: Unit) -> str:
    entry, row, aggregates = unit.entry, unit.row, unit.aggregates
    method, target = entry["method"], entry["target"]
    seen = (f"{method} is transductive: it used the unlabelled images of {target}." if entry["transductive"]
            else f"{method} is not transductive: it never saw {target}.")
    auc = aggregates.get("auc", {})
    cases = f" ({auc['n']} labelled cases of {auc['n_patients']} patients)" if "n" in auc else ""
    history = unit.history
    trained = (f"Training ran {_count(len(history), 'epoch')} in {_duration(history['seconds'].iloc[-1])}; "
               if history is not None and len(history) else "")
    return (f"{seen} At {target}{cases}: AUC {_metric(aggregates, 'auc')}, sensitivity "
            f"{_metric(aggregates, 'sensitivity')}, specificity {_metric(aggregates, 'specificity')}; in-site AUC "
            f"{_number(row.get('insite_auc'))}, gap {_number(row.get('gap_auc'))}. {trained}the model of epoch "
            f"{int(row['best_epoch']) + 1} was selected.")


def _pointing_game_table(games: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([{"explainer": g["explainer"], "site": g["cohort"], "cases": g["n_cases"],
                          "attribution inside the lesion": _percent(g["in_mask_share"]),
                          "expected by chance": _percent(g["chance_share"]),
                          "ratio to chance": _times(g["ratio"]),
                          "cases above chance": _percent(g["above_chance"])} for g in games])


def _explanation_caption(figure: Path, unit: Unit) -> str:
    method = unit.entry["method"]
    for game in unit.entry["pointing_game"]:
        if case_grid_path(figure.parent, game["explainer"], game["cohort"]) == figure:
            return (f"{game['explainer']} attributions of {method} at {game['cohort']}: each case, its lesion "
                    "outline (cyan) and its positive attribution; the colour bar is scaled to each case's 99th "
                    "percentile.")
    if figure.stem == "tabular_attributions":
        return (f"Tabular attributions of {method} (feature ablation): mean absolute attribution of each clinical "
                "field and radiomics feature class, per site.")
    return f"{figure.stem} of {method} ({unit.entry['target']} target)."


def _training_curves(unit: Unit) -> Path | None:
    """The unit's training curves: drawn by the study (and logged with the unit), or drawn
    here for a folder that lacks them."""
    if (unit.folder / "figures" / CURVES_FILE).exists():
        return unit.folder / "figures" / CURVES_FILE
    if unit.history is None or unit.history.empty:
        return None
    return plot_training_curves(unit.history, unit.folder / "figures" / CURVES_FILE,
                                title=f"{unit.title}: training", selected_epoch=int(unit.row["best_epoch"]))


def _tracking(report: dict) -> list[Block]:
    timings = report["timings"]
    table = pd.DataFrame([{"step": step, "wall time": _duration(s)} for step, s in timings.items()]
                         + [{"step": "total", "wall time": _duration(sum(timings.values()))}])
    return [Heading(2, "Tracking and timings"), Code(report["tracking"]), Table(table)]


def _numbered(blocks: list[Block]) -> list[Block]:
    """Figure captions prefixed "Figure 1.", "Figure 2."... in reading order."""
    numbered, count = [], 0
    for block in blocks:
        if isinstance(block, Image):
            count += 1
            block = replace(block, caption=f"Figure {count}. {block.caption}")
        numbered.append(block)
    return numbered


# ---------------------------------------------------------------- formatting


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def _number(value, digits: int = 3) -> str:
    return "-" if _missing(value) else f"{value:.{digits}f}"


def _metric(aggregates: dict, metric: str) -> str:
    """``0.781 [0.606, 0.922]``: a value with its 95% CI, from a summary.json aggregate."""
    entry = aggregates.get(metric, {})
    if _missing(entry.get("value")):
        return "-"
    low, high = entry.get("ci") or (None, None)
    return f"{_number(entry['value'])} [{_number(low)}, {_number(high)}]"


def _p_value(value) -> str:
    return "-" if _missing(value) else f"{value:.2g}"


def _times(value) -> str:
    return "-" if _missing(value) else f"{value:.2f}x"


def _percent(value) -> str:
    return "-" if _missing(value) else f"{value:.1%}"


def _yes_no(flag) -> str:
    return "yes" if flag else "no"


def _duration(seconds: float) -> str:
    """``0.5 s``, ``54 s``, ``3 min 20 s``."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s"


def _listing(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    items = list(items)
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _count(n: float, noun: str) -> str:
    """``1 epoch``, ``4 epochs``, ``0.5 epochs``."""
    return f"{n:g} {noun}" + ("" if n == 1 else "s")


def _span(values: list[int], noun: str) -> str:
    """``4 epochs``, ``2 to 4 epochs``."""
    low, high = min(values), max(values)
    return _count(low, noun) if low == high else f"{low} to {high} {noun}s"


# ---------------------------------------------------------------- rendering


def _markdown(blocks: list[Block], out: Path) -> str:
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Paragraph):
            parts.append(block.text)
        elif isinstance(block, Table):
            parts.append(_md_table(block.frame))
        elif isinstance(block, Image):
            target = block.path.relative_to(out) if block.path.is_relative_to(out) else block.path
            parts.append(f"![{block.path.stem}]({target})\n\n*{block.caption}*")
        else:
            parts.append(f"```\n{block.text}\n```")
    return "\n\n".join(parts) + "\n"


def _md_table(frame: pd.DataFrame) -> str:
    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *rows])


# Figures sit two to a row; wide ones (several panels side by side) take the whole row.
STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222;line-height:1.45}"
         "table{border-collapse:collapse;font-size:13px;margin:0.5em 0}"
         "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}th{background:#f3f3f3}"
         "td{white-space:nowrap}"  # an estimate and its CI stay on one line
         "figure{display:inline-block;vertical-align:top;width:48%;margin:0.5em 1% 0.5em 0}"
         "figure.wide{display:block;width:auto}img{max-width:100%;border:1px solid #eee}"
         "figcaption{font-size:13px;color:#555}pre{background:#f7f7f7;padding:6px}")
WIDE = 1.8  # width / height above which a figure takes a whole row


def _html(blocks: list[Block], title: str) -> str:
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            parts.append(f"<p>{html.escape(block.text)}</p>")
        elif isinstance(block, Table):
            parts.append(block.frame.to_html(index=False, border=0))
        elif isinstance(block, Image):
            data = base64.b64encode(block.path.read_bytes()).decode()
            width = "wide" if _aspect(block.path) > WIDE else "half"
            parts.append(f"<figure class='{width}'><img alt='{html.escape(block.path.stem)}' "
                         f"src='data:image/png;base64,{data}'><figcaption>{html.escape(block.caption)}</figcaption>"
                         "</figure>")
        else:
            parts.append(f"<pre>{html.escape(block.text)}</pre>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>")


def _aspect(path: Path) -> float:
    with PIL.Image.open(path) as image:
        return image.width / image.height
