"""What one extraction read, extracted, failed and skipped: the lines printed at the end of
`senolab radiomics extract` and the summary file written beside its table.

The summary of ``F.parquet`` is ``F.summary.json`` (:func:`summary_path`), a JSON object:

- ``features``: the parquet table it describes; ``params_hash``, ``pyradiomics_version``.
- ``cases_read``: images the readers accepted; ``cases_skipped``: the problems the readers
  met (an unreadable image, a missing mask, a file without its row...), listed in
  ``skipped_cases`` as ``{"cohort", "file", "reason"}``.
- ``lesions``: lesion masks of the cases read; ``lesions_extracted`` (status ``ok``) and
  ``lesions_failed`` (status ``failed``), these listed in ``failures`` as
  ``{"case_id", "lesion_index", "image", "mask", "reason"}``; ``normal_images``: cases
  without lesion.
- ``computed``, ``from_cache``: lesions computed by this run and taken from the cache;
  ``recomputed_invalid``: computed ones whose cache entry did not validate.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from senolab.cohorts.schema import Cohort, Problem
from senolab.radiomics.table import FAILED, NO_LESION, OK, FeatureTable, grouped_reasons

SUMMARY_SUFFIX = ".summary.json"


def summary_path(features_path: str | Path) -> Path:
    """Where the summary of the table at ``features_path`` goes: ``F.parquet`` -> ``F.summary.json``."""
    features_path = Path(features_path)
    return features_path.with_name(features_path.stem + SUMMARY_SUFFIX)


def extraction_summary(cohort: Cohort, result: FeatureTable, features_path: str | Path) -> dict[str, Any]:
    """The summary described in the module docstring, as plain JSON types."""
    statuses = result.table["status"].value_counts()
    return {
        "features": str(Path(features_path).resolve()),
        "params_hash": result.provenance["params_hash"],
        "pyradiomics_version": result.provenance["pyradiomics_version"],
        "cases_read": len(cohort.table),
        "cases_skipped": len(cohort.problems),
        "lesions": int(statuses.get(OK, 0) + statuses.get(FAILED, 0)),
        "lesions_extracted": int(statuses.get(OK, 0)),
        "lesions_failed": int(statuses.get(FAILED, 0)),
        "normal_images": int(statuses.get(NO_LESION, 0)),
        "computed": result.stats["computed"],
        "from_cache": result.stats["from_cache"],
        "recomputed_invalid": result.recomputed_invalid,
        "skipped_cases": [{"cohort": p.cohort, "file": p.file, "reason": p.reason} for p in cohort.problems],
        "failures": _failures(cohort, result),
    }


def write_summary(summary: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(summary, indent=1) + "\n")
    return path


def skipped_lines(problems: list[Problem], limit: int = 10) -> list[str]:
    """The readers' problems grouped by reason, then the first few with their file."""
    cases = "1 case" if len(problems) == 1 else f"{len(problems)} cases"
    heading = f"skipped {cases} while reading the cohort, by reason:"
    return grouped_reasons(heading, [(p.file, p.reason) for p in problems], limit)


def _failures(cohort: Cohort, result: FeatureTable) -> list[dict[str, Any]]:
    files = {row.case_id: (row.image_path, list(row.mask_paths)) for row in cohort.table.itertuples()}
    failures = []
    for rec in result.failures().itertuples():
        image, masks = files[rec.case_id]
        lesion = int(rec.lesion_index)
        failures.append({
            "case_id": rec.case_id,
            "lesion_index": lesion,
            "image": image,
            # an in-memory cohort (the synthetic generator's) has no files
            "mask": masks[lesion] if lesion < len(masks) else None,
            "reason": rec.error,
        })
    return failures
