"""BrEaST-Lesions_USG (Poland; Pawłowska et al., Scientific Data 2024; TCIA, CC BY 4.0).

Layout: ``BrEaST-Lesions_USG-images_and_masks/caseNNN.png`` with ``caseNNN_tumor.png`` and
``caseNNN_otherK.png`` masks, and the clinical spreadsheet
``BrEaST-Lesions-USG-clinical-data-*.xlsx``. One image per patient.

Typing of the spreadsheet: "not available" is missing; "not applicable" (the lesion
descriptors of normal images) is kept as a level of its own because it carries meaning.
Fields whose values join several findings with ``&`` become sets. ``Pixel_size`` is in
centimetres per pixel of the original image (the data dictionary sheet says so), stored
here as millimetres per pixel of the stored image. A cell that cannot be typed is a
problem named by row and column: a bad number becomes missing, a bad BI-RADS category or
a file path that leaves the images folder skips its case.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from senolab.cohorts.readers import READERS
from senolab.cohorts.readers.base import (CaseFiles, Manifest, ProblemLog, TableRow, load_cases, read_text_table,
                                         table_rows)
from senolab.cohorts.schema import Cohort, CohortError, Column, Kind

IMAGES = "BrEaST-Lesions_USG-images_and_masks"
SHEET_GLOB = "BrEaST-Lesions-USG-clinical-data*.xlsx"
MISSING = "not available"
BIRADS_LEVELS = ("1", "2", "3", "4a", "4b", "4c", "5")

# spreadsheet column -> (table column, kind, outcome)
FIELDS = {
    "Age": ("age", Kind.NUMERIC, False),
    "Tissue_composition": ("tissue_composition", Kind.MULTI, False),
    "Signs": ("signs", Kind.MULTI, False),
    "Symptoms": ("symptoms", Kind.MULTI, False),
    "Shape": ("shape", Kind.CATEGORICAL, False),
    "Margin": ("margin", Kind.MULTI, False),
    "Echogenicity": ("echogenicity", Kind.CATEGORICAL, False),
    "Posterior_features": ("posterior_features", Kind.CATEGORICAL, False),
    "Halo": ("halo", Kind.CATEGORICAL, False),
    "Calcifications": ("calcifications", Kind.CATEGORICAL, False),
    "Skin_thickening": ("skin_thickening", Kind.CATEGORICAL, False),
    "Interpretation": ("interpretation", Kind.MULTI, True),
    "BIRADS": ("birads", Kind.ORDINAL, True),
    "Verification": ("verification", Kind.CATEGORICAL, True),
    "Diagnosis": ("diagnosis", Kind.MULTI, True),
    "Classification": ("classification", Kind.CATEGORICAL, True),
}
REQUIRED = ("CaseID", "Image_filename", "Mask_tumor_filename", "Mask_other_filename", "Pixel_size", *FIELDS)
# Plausible ranges (exclusive) of the numeric cells; a value outside is a typo, kept as missing.
AGE_YEARS = (0.0, 130.0)
PIXEL_SIZE_CM = (0.0, 1.0)  # an ultrasound pixel is a fraction of a millimetre


class BreastReader:
    name = "breast"
    layout = f"{IMAGES}/caseNNN.png, caseNNN_tumor.png, caseNNN_otherK.png and {SHEET_GLOB}"

    def detect(self, root: Path) -> bool:
        return (root / IMAGES).is_dir() and any(root.glob(SHEET_GLOB))

    def read(self, root: Path, strict: bool = False, progress: bool = True) -> Cohort:
        if not self.detect(root):
            raise CohortError(f"{root}: not a BrEaST-Lesions_USG folder; expected {self.layout}")
        sheet = sorted(root.glob(SHEET_GLOB))[-1]
        records = read_text_table(sheet, REQUIRED)
        log = ProblemLog(self.name, strict)
        folder = root / IMAGES
        _report_files_without_rows(folder, records, log)
        manifest = Manifest(root)
        cases = [case for row, rec in table_rows(records, sheet, log) if (case := _case(folder, rec, row, manifest))]
        table = load_cases(cases, log, progress)
        columns = {spec[0]: _column(records[name], *spec) for name, spec in FIELDS.items()}
        return Cohort(self.name, table, columns, {}, log.problems, root).validate()


def _case(folder: Path, rec: dict, row: TableRow, manifest: Manifest) -> CaseFiles | None:
    """The row's case, or None (reported) when a file path or the BI-RADS category is bad."""
    image = rec["Image_filename"].strip()
    image_path = row.path_inside(folder, "Image_filename", image)
    metadata = _metadata(rec, row, image)
    masks = {col: [row.path_inside(folder, col, f) for f in _split(rec[col])]
             for col in ("Mask_tumor_filename", "Mask_other_filename")}
    if image_path is None or metadata is None or None in masks["Mask_tumor_filename"] + masks["Mask_other_filename"]:
        return None
    spacing_cm = _number(rec["Pixel_size"], "Pixel_size", PIXEL_SIZE_CM, row)
    return CaseFiles(
        case_id=f"breast/{Path(image).stem}",
        patient_id=f"breast/{rec['CaseID']}",
        image_path=image_path,
        label=rec["Classification"].strip().lower(),
        site="breast",
        scanner="unknown",
        mask_paths=masks["Mask_tumor_filename"],
        other_mask_paths=masks["Mask_other_filename"],
        pixel_spacing_mm=spacing_cm * 10.0 / manifest.scale(image),
        metadata=metadata,
    )


def _metadata(rec: dict, row: TableRow, image: str) -> dict | None:
    """The typed clinical fields of a row; None (reported) for a BI-RADS outside its levels,
    which would otherwise fail the whole cohort's validation."""
    metadata = {}
    for name, (column, kind, _) in FIELDS.items():
        if kind is Kind.NUMERIC:
            metadata[column] = _number(rec[name], name, AGE_YEARS, row)
            continue
        value = _typed(rec[name], kind, column)
        if kind is Kind.ORDINAL and value is not None and not row.is_level(name, value, BIRADS_LEVELS, image):
            return None
        metadata[column] = value
    return metadata


def _number(cell: str, name: str, plausible: tuple[float, float], row: TableRow) -> float:
    text = _text(cell)
    return float("nan") if text is None else row.number_between(name, text, *plausible)


def _split(value) -> list[str]:
    text = _text(value)
    return [] if text is None else [v.strip() for v in text.split("&") if v.strip()]


def _text(value) -> str | None:
    """A cell's text, None when empty or "not available" (missing, never a problem)."""
    text = str(value).strip()
    return None if not text or text.lower() == MISSING else text


def _typed(value, kind: Kind, column: str):
    """A categorical, ordinal or multi-valued cell as the table stores it (None when missing)."""
    text = _text(value)
    if text is None:
        return None
    if kind is Kind.MULTI:
        if column == "margin":
            # "not circumscribed - spiculated&angular" names the sub-types of one finding
            text = text.removeprefix("not circumscribed - ")
        return sorted(set(_split(text)))
    return text


def _column(values: pd.Series, name: str, kind: Kind, outcome: bool) -> Column:
    if kind is Kind.NUMERIC:
        return Column(name, kind, (), outcome)
    if kind is Kind.ORDINAL:
        return Column(name, kind, BIRADS_LEVELS, outcome)
    typed = [_typed(v, kind, name) for v in values]
    if kind is Kind.MULTI:
        levels = sorted({item for v in typed if v for item in v})
    else:
        levels = sorted({v for v in typed if v is not None})
    return Column(name, kind, tuple(levels), outcome)


def _report_files_without_rows(folder: Path, records: pd.DataFrame, log: ProblemLog) -> None:
    listed = set(records["Image_filename"].str.strip())
    for col in ("Mask_tumor_filename", "Mask_other_filename"):
        listed |= {f for v in records[col] for f in _split(v)}
    for path in sorted(folder.glob("*.png")):
        if path.name not in listed:
            log.add(path, "file without its row in the clinical spreadsheet")


READERS.register("breast")(BreastReader())
