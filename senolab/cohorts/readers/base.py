"""What every reader shares: turning found files and table rows into validated cohort rows.

A reader lists its cases as :class:`CaseFiles`; :func:`load_cases` opens every image and
mask once, checks them, derives the lesion boxes and records each bad case as a
:class:`Problem` (or raises under ``strict``). Nothing is dropped silently. Tables
(spreadsheets, CSVs) are read as text by :func:`read_text_table`, and each cell is typed
through a :class:`TableRow`, so a bad value is named by file, row and column.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from senolab.cohorts.imaging import READ_ERRORS, MaskValueError, bbox_from_mask, load_gray, load_mask
from senolab.cohorts.schema import LABELS, CohortError, Problem
from senolab.errors import InputError
from senolab.paths import describe_path, inside


@dataclass
class CaseFiles:
    """One image as a reader found it, before its files are opened."""

    case_id: str
    patient_id: str
    image_path: Path
    label: str
    site: str
    scanner: str = "unknown"
    modality: str = "US"  # schema.MODALITIES
    mask_kind: str = "outline"  # schema.MASK_KINDS; "circle" and "box" take their lesions from `boxes`
    mask_paths: list[Path] = field(default_factory=list)
    other_mask_paths: list[Path] = field(default_factory=list)
    pixel_spacing_mm: float = float("nan")  # in the stored image's grid
    boxes: list[list[float]] = field(default_factory=list)  # xyxy per lesion, when there are no masks
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
    # an empty table would fail validation with a message about columns, not about the data
    if not rows and not log.problems:
        raise CohortError(f"{log.cohort}: no cases found")
    if not rows:
        count = f"{len(log.problems)} problems"
        raise CohortError(f"{log.cohort}: no case could be read; {count}, the first: {log.problems[0]}")
    return pd.DataFrame(rows)


def _load_case(case: CaseFiles, log: ProblemLog) -> dict | None:
    if case.label not in LABELS:
        log.add(case.image_path, f"unknown label {case.label!r}; expected one of {LABELS}")
        return None
    image = read_pixels(case.image_path, "image", load_gray, log)
    if image is None:
        return None
    boxes = [list(map(float, box)) for box in case.boxes]
    for mask_path in case.mask_paths + case.other_mask_paths:
        mask = read_pixels(mask_path, "mask", load_mask, log)
        if mask is None:
            return None
        if mask.shape != image.shape:
            log.add(mask_path, f"mask size {mask.shape[::-1]} differs from image size {image.shape[::-1]}")
            return None
        if mask_path in case.mask_paths:
            if not mask.any():
                # a lesion target without lesion pixels would teach "no lesion here"
                log.add(mask_path, "lesion mask is empty (all zero)")
                return None
            boxes.append(bbox_from_mask(mask))
    height, width = image.shape
    return {
        "case_id": case.case_id,
        "patient_id": case.patient_id,
        "cohort": log.cohort,
        "site": case.site,
        "scanner": case.scanner,
        "modality": case.modality,
        "image_path": str(case.image_path),
        "mask_paths": [str(p) for p in case.mask_paths],
        "other_mask_paths": [str(p) for p in case.other_mask_paths],
        "label": case.label,
        "pixel_spacing_mm": float(case.pixel_spacing_mm),
        "width": width,
        "height": height,
        "mask_kind": case.mask_kind,
        "lesion_bboxes": boxes,
        **case.metadata,
    }


def not_a_file(path: Path, what: str) -> str | None:
    """Why ``path`` cannot be read as the case's ``what`` ("image", "mask"); None if it is a file."""
    found = describe_path(path)
    if found == "a file":
        return None
    return f"{what} file is missing" if found == "nothing" else f"the {what} is {found}, not a file"


def read_pixels(path: Path, what: str, loader, log: ProblemLog) -> np.ndarray | None:
    """``loader(path)`` (an image or mask), or None after logging why it cannot be read.

    What is at the path is checked first, so a folder named like an image or a symlink
    loop is called what it is rather than reported as an unreadable image."""
    problem = not_a_file(path, what)
    if problem:
        log.add(path, problem)
        return None
    try:
        return loader(path)
    except MaskValueError as err:
        log.add(path, str(err))
    except READ_ERRORS as err:
        log.add(path, f"unreadable or truncated {what} ({err})")
    return None


class Manifest:
    """``derived_manifest.csv``: original and stored sizes of each file, when present.

    Quantities stated in the original pixel grid (BUS-BRA BBOX, BrEaST Pixel_size) are
    rescaled by ``width / orig_width`` of the file they refer to. A bad manifest is an
    error, not a skipped row: every rescaled quantity would be wrong without it.
    """

    def __init__(self, root: Path):
        self.scales: dict[str, float] = {}
        path = root / "derived_manifest.csv"
        if describe_path(path) == "nothing":
            return
        records = read_text_table(path, ("file", "width", "orig_width"))
        for number, rec in enumerate(records.to_dict("records"), start=FIRST_ROW):
            width, orig_width = (_positive_int(path, number, rec, column) for column in ("width", "orig_width"))
            self.scales[rec["file"]] = width / orig_width

    def scale(self, relative_file: str) -> float:
        """Stored width over original width; 1.0 for an official release (no manifest)."""
        return self.scales.get(relative_file, 1.0)


def _positive_int(path: Path, number: int, rec: dict, column: str) -> int:
    text = rec[column]
    if not text.strip().isdigit() or int(text) == 0:
        raise CohortError(f"{path}: row {number}, column {column!r}: {text!r} is not a positive whole number")
    return int(text)


# Row numbers as a spreadsheet shows them: the header is row 1, the first case row 2.
FIRST_ROW = 2


def read_text_table(path: Path, required: Iterable[str]) -> pd.DataFrame:
    """Every cell of a CSV or xlsx table as text ("" when empty), with the ``required``
    columns, or a one-line CohortError naming the file.

    Text, so that each cell is typed by its reader, which can then name the row and column
    of a bad one; an xlsx is read by its first sheet."""
    found = describe_path(path)
    if found != "a file":
        raise CohortError(f"{path}: expected a table file, found {found}")
    if path.stat().st_size == 0:
        raise CohortError(f"{path}: is empty; expected a table with columns {sorted(required)}")
    records = _read_xlsx(path) if path.suffix.lower() == ".xlsx" else _read_csv(path)
    missing = sorted(set(required) - set(records.columns))
    if missing:
        raise CohortError(f"{path}: missing columns {missing}")
    if records.empty:
        raise CohortError(f"{path}: has a header but no rows")
    return records


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except UnicodeDecodeError:
        raise CohortError(f"{path}: not a CSV table (not UTF-8 text; a binary file?)") from None
    except (ValueError, OSError) as err:  # pandas' ParserError and EmptyDataError are ValueErrors
        raise CohortError(f"{path}: not a readable CSV table ({_first_line(err)})") from None


def _read_xlsx(path: Path) -> pd.DataFrame:
    if not zipfile.is_zipfile(path):
        raise CohortError(f"{path}: not an xlsx spreadsheet (an xlsx file is a zip archive; this one is not)")
    try:
        return pd.read_excel(path, sheet_name=0, dtype=str, keep_default_na=False)
    except (ValueError, KeyError, OSError, zipfile.BadZipFile) as err:  # KeyError: a zip without a workbook
        raise CohortError(f"{path}: not a readable xlsx spreadsheet ({_first_line(err)})") from None


def _first_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


@dataclass(frozen=True)
class TableRow:
    """One case row of a table, to type its cells and name a bad one by file, row and column.

    Each check logs its problem and returns a missing value (None, NaN or False); the
    reader decides whether the case goes on without the value or is skipped."""

    file: Path
    number: int  # as a spreadsheet shows it (see FIRST_ROW)
    log: ProblemLog

    def where(self, column: str) -> str:
        return f"row {self.number}, column {column!r}"

    def report(self, column: str, value: str, reason: str) -> None:
        self.log.add(self.file, f"{self.where(column)}: {value!r} {reason}")

    def number_between(self, column: str, text: str, low: float, high: float) -> float:
        """The cell as a float strictly between ``low`` and ``high``; NaN (reported) if not."""
        try:
            value = float(text)
        except ValueError:
            self.report(column, text, "is not a number; kept as missing")
            return float("nan")
        if not low < value < high:  # NaN and inf fail this too
            self.report(column, text, f"is outside the plausible range {low:g} to {high:g}; kept as missing")
            return float("nan")
        return value

    def is_level(self, column: str, value: str, levels: tuple[str, ...], case: str) -> bool:
        """Whether the cell is one of ``levels``; a case with another value is skipped."""
        if value in levels:
            return True
        self.report(column, value, f"is not one of {levels}; case {case} skipped")
        return False

    def path_inside(self, folder: Path, column: str, relative: str) -> Path | None:
        """``folder / relative`` if it stays inside ``folder``; None (reported) if it leaves it."""
        try:
            return inside(folder, relative, f"{self.where(column)}:")
        except InputError as err:
            self.log.add(self.file, f"{err}; case skipped")
            return None


def table_rows(records: pd.DataFrame, file: Path, log: ProblemLog) -> Iterator[tuple[TableRow, dict]]:
    """Each row of ``records`` (read from ``file``) as a :class:`TableRow` and its cells."""
    for number, rec in enumerate(records.to_dict("records"), start=FIRST_ROW):
        yield TableRow(file, number, log), rec
