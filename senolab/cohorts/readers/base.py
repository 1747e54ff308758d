"""What every reader shares: turning found files into validated cohort rows.

A reader lists its cases as :class:`CaseFiles`; :func:`load_cases` opens every image and
mask once, checks them, derives the lesion boxes and records each bad case as a
:class:`Problem` (or raises under ``strict``). Nothing is dropped silently.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from senolab.cohorts.imaging import READ_ERRORS, bbox_from_mask, load_gray, load_mask
from senolab.cohorts.schema import LABELS, CohortError, Problem


@dataclass
class CaseFiles:
    """One image as a reader found it, before its files are opened."""

    case_id: str
    patient_id: str
    image_path: Path
    label: str
    site: str
    scanner: str = "unknown"
    mask_paths: list[Path] = field(default_factory=list)
    other_mask_paths: list[Path] = field(default_factory=list)
    pixel_spacing_mm: float = float("nan")  # in the stored image's grid
    metadata: dict[str, Any] = field(default_factory=dict)


class ProblemLog:
    """Collects bad cases; under ``strict`` the first one is fatal."""

    def __init__(self, cohort: str, strict: bool):
        self.cohort = cohort
        self.strict = strict
        self.problems: list[Problem] = []

    def add(self, file: str | Path, reason: str) -> None:
        problem = Problem(self.cohort, str(file), reason)
        if self.strict:
            raise CohortError(f"{problem} (--strict)")
        self.problems.append(problem)


def load_cases(cases: Iterable[CaseFiles], log: ProblemLog, progress: bool = True) -> pd.DataFrame:
    """Open and check each case's files; return the table of the good ones."""
    cases = list(cases)
    rows = []
    for case in tqdm(cases, desc=f"reading {log.cohort}", unit="img", disable=not progress, leave=False):
        row = _load_case(case, log)
        if row is not None:
            rows.append(row)
    return pd.DataFrame(rows)


def _load_case(case: CaseFiles, log: ProblemLog) -> dict | None:
    if case.label not in LABELS:
        log.add(case.image_path, f"unknown label {case.label!r}; expected one of {LABELS}")
        return None
    try:
        image = load_gray(case.image_path)
    except FileNotFoundError:
        log.add(case.image_path, "image file is missing")
        return None
    except READ_ERRORS as err:
        log.add(case.image_path, f"unreadable or truncated image ({err})")
        return None
    boxes = []
    for mask_path in case.mask_paths + case.other_mask_paths:
        try:
            mask = load_mask(mask_path)
        except FileNotFoundError:
            log.add(mask_path, "mask file is missing")
            return None
        except READ_ERRORS as err:
            log.add(mask_path, f"unreadable mask ({err})")
            return None
        if mask.shape != image.shape:
            log.add(mask_path, f"mask size {mask.shape[::-1]} differs from image size {image.shape[::-1]}")
            return None
        if mask_path in case.mask_paths:
            boxes.append(bbox_from_mask(mask))
    height, width = image.shape
    return {
        "case_id": case.case_id,
        "patient_id": case.patient_id,
        "cohort": log.cohort,
        "site": case.site,
        "scanner": case.scanner,
        "image_path": str(case.image_path),
        "mask_paths": [str(p) for p in case.mask_paths],
        "other_mask_paths": [str(p) for p in case.other_mask_paths],
        "label": case.label,
        "pixel_spacing_mm": float(case.pixel_spacing_mm),
        "width": width,
        "height": height,
        # An all-zero lesion mask (BUSI normals ship one) gives no box: kept as None.
        "lesion_bboxes": boxes,
        **case.metadata,
    }


class Manifest:
    """``derived_manifest.csv``: original and stored sizes of each file, when present.

    Quantities stated in the original pixel grid (BUS-BRA BBOX, BrEaST Pixel_size) are
    rescaled by ``width / orig_width`` of the file they refer to.
    """

    def __init__(self, root: Path):
        self.scales: dict[str, float] = {}
        path = root / "derived_manifest.csv"
        if path.exists():
            with open(path, newline="") as f:
                for rec in csv.DictReader(f):
                    self.scales[rec["file"]] = int(rec["width"]) / int(rec["orig_width"])

    def scale(self, relative_file: str) -> float:
        """Stored width over original width; 1.0 for an official release (no manifest)."""
        return self.scales.get(relative_file, 1.0)


def finite_or_nan(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return out if np.isfinite(out) else float("nan")
