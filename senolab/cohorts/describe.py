"""What a cohort holds: counts, classes, lesions, metadata coverage, sizes, duplicates."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from senolab.cohorts.dedup import duplicate_report
from senolab.cohorts.pixels import case_image
from senolab.cohorts.schema import LABELS, Cohort, is_present


def describe(cohort: Cohort) -> dict:
    """A JSON-ready summary of one cohort (``mark_duplicates`` must have run)."""
    t = cohort.table
    coverage = {
        name: round(float(t[name].map(is_present).mean()), 4) if len(t) else 0.0
        for name in cohort.columns
    }
    dups = duplicate_report(t)
    return {
        "cohort": cohort.name,
        "sites": sorted(t["site"].unique().tolist()),
        "scanners": {str(k): int(v) for k, v in t["scanner"].value_counts().sort_index().items()},
        "modalities": {str(k): int(v) for k, v in t["modality"].value_counts().sort_index().items()},
        "mask_kinds": {str(k): int(v) for k, v in t["mask_kind"].value_counts().sort_index().items()},
        "n_images": int(len(t)),
        "n_patients": int(t["patient_id"].nunique()),
        "classes": {label: int((t["label"] == label).sum()) for label in LABELS},
        "n_images_with_masks": int(t["lesion_bboxes"].map(len).gt(0).sum()),
        "n_lesions": int(t["lesion_bboxes"].map(len).sum()),
        "n_other_findings": int(t["other_mask_paths"].map(len).sum()),
        "metadata_coverage": coverage,
        "outcome_columns": cohort.outcome_columns(),
        "width_range": [int(t["width"].min()), int(t["width"].max())] if len(t) else [],
        "height_range": [int(t["height"].min()), int(t["height"].max())] if len(t) else [],
        "pixel_spacing_mm_known": int(t["pixel_spacing_mm"].notna().sum()),
        "duplicate_groups": int(len(dups)),
        "images_in_duplicate_groups": int(dups["n_images"].sum()) if len(dups) else 0,
        "cross_label_duplicate_groups": int(dups["labels"].map(len).gt(1).sum()) if len(dups) else 0,
        "problems": [str(p) for p in cohort.problems],
    }


def format_table(summaries: list[dict]) -> str:
    """The plain-text table `senolab cohorts describe` prints."""
    rows = []
    for s in summaries:
        rows.append(
            {
                "cohort": s["cohort"],
                "images": s["n_images"],
                "patients": s["n_patients"],
                "normal/benign/malignant": "/".join(str(s["classes"][k]) for k in LABELS),
                "with masks": s["n_images_with_masks"],
                "lesions": s["n_lesions"],
                "width": "{}-{}".format(*s["width_range"]) if s["width_range"] else "-",
                "height": "{}-{}".format(*s["height_range"]) if s["height_range"] else "-",
                "dup groups": s["duplicate_groups"],
                "problems": len(s["problems"]),
            }
        )
    text = pd.DataFrame(rows).to_string(index=False)
    for s in summaries:
        if s["metadata_coverage"]:
            cov = ", ".join(
                f"{k}{'*' if k in s['outcome_columns'] else ''} {v:.0%}" for k, v in s["metadata_coverage"].items()
            )
            text += f"\n{s['cohort']} metadata coverage (* = outcome, never an input by default): {cov}"
        for problem in s["problems"][:10]:
            text += f"\n  problem: {problem}"
        if len(s["problems"]) > 10:
            text += f"\n  ... and {len(s['problems']) - 10} more problems"
    return text


def describe_figure(cohorts: list[Cohort], path: str | Path, sample: int = 60, seed: int = 0) -> Path:
    """Class balance per cohort and per-site intensity histograms, as one PNG."""
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(11, 4))
    ax_cls, ax_hist = fig.subplots(1, 2)
    width = 0.8 / max(1, len(cohorts))
    for i, cohort in enumerate(cohorts):
        counts = [int((cohort.table["label"] == label).sum()) for label in LABELS]
        ax_cls.bar(np.arange(len(LABELS)) + i * width, counts, width, label=cohort.name)
    ax_cls.set_xticks(np.arange(len(LABELS)) + width * (len(cohorts) - 1) / 2, LABELS)
    ax_cls.set_ylabel("images")
    ax_cls.set_title("class balance")
    ax_cls.legend()
    rng = np.random.default_rng(seed)
    for cohort in cohorts:
        for site, rows in cohort.table.groupby("site"):
            picked = rows.iloc[rng.permutation(len(rows))[:sample]]
            values = np.concatenate([case_image(cohort, r).ravel() for r in picked.to_dict("records")])
            ax_hist.hist(values, bins=64, range=(0, 255), density=True, histtype="step", label=f"{cohort.name}:{site}")
    ax_hist.set_xlabel("pixel intensity")
    ax_hist.set_ylabel("density")
    ax_hist.set_title(f"intensity per site ({sample} images each)")
    ax_hist.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
