"""BrEaST-Lesions_USG (Poland; Pawłowska et al., Scientific Data 2024; TCIA, CC BY 4.0).

Layout: ``BrEaST-Lesions_USG-images_and_masks/caseNNN.png`` with ``caseNNN_tumor.png`` and
``caseNNN_otherK.png`` masks, and the clinical spreadsheet
``BrEaST-Lesions-USG-clinical-data-*.xlsx``. One image per patient.

Typing of the spreadsheet: "not available" is missing; "not applicable" (the lesion
descriptors of normal images) is kept as a level of its own because it carries meaning.
Fields whose values join several findings with ``&`` become sets. ``Pixel_size`` is in
centimetres per pixel of the original image (the data dictionary sheet says so), stored
here as millimetres per pixel of the stored image.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from senolab.cohorts.readers import READERS
from senolab.cohorts.readers.base import CaseFiles, Manifest, ProblemLog, finite_or_nan, load_cases
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


class BreastReader:
    name = "breast"
    layout = f"{IMAGES}/caseNNN.png, caseNNN_tumor.png, caseNNN_otherK.png and {SHEET_GLOB}"

    def detect(self, root: Path) -> bool:
        return (root / IMAGES).is_dir() and any(root.glob(SHEET_GLOB))

    def read(self, root: Path, strict: bool = False) -> Cohort:
        if not self.detect(root):
            raise CohortError(f"{root}: not a BrEaST-Lesions_USG folder; expected {self.layout}")
        sheet = sorted(root.glob(SHEET_GLOB))[-1]
        records = pd.read_excel(sheet, sheet_name=0, dtype=str)
        missing = [c for c in REQUIRED if c not in records.columns]
        if missing:
            raise CohortError(f"{sheet}: missing columns {missing}")
        log = ProblemLog(self.name, strict)
        folder = root / IMAGES
        _report_files_without_rows(folder, records, log)
        manifest = Manifest(root)
        cases = [_case(folder, rec, manifest) for rec in records.to_dict("records")]
        table = load_cases(cases, log)
        columns = {spec[0]: _column(records[name], *spec) for name, spec in FIELDS.items()}
        return Cohort(self.name, table, columns, {}, log.problems, root).validate()


def _case(folder: Path, rec: dict, manifest: Manifest) -> CaseFiles:
    image = rec["Image_filename"].strip()
    spacing_cm = finite_or_nan(rec["Pixel_size"])
    case_id = f"breast/{Path(image).stem}"
    return CaseFiles(
        case_id=case_id,
        patient_id=f"breast/{rec['CaseID']}",
        image_path=folder / image,
        label=str(rec["Classification"]).strip().lower(),
        site="breast",
        scanner="unknown",
        mask_paths=[folder / f for f in _split(rec["Mask_tumor_filename"])],
        other_mask_paths=[folder / f for f in _split(rec["Mask_other_filename"])],
        pixel_spacing_mm=spacing_cm * 10.0 / manifest.scale(image),
        metadata={spec[0]: _typed(rec[name], spec[1], spec[0]) for name, spec in FIELDS.items()},
    )


def _split(value) -> list[str]:
    if value is None or (isinstance(value, float) and np.isnan(value)) or not str(value).strip():
        return []
    return [v.strip() for v in str(value).split("&") if v.strip()]


def _typed(value, kind: Kind, column: str):
    text = None if value is None or (isinstance(value, float) and np.isnan(value)) else str(value).strip()
    if text is None or text.lower() == MISSING or text == "":
        return np.nan if kind is Kind.NUMERIC else None
    if kind is Kind.NUMERIC:
        return finite_or_nan(text)
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
    listed = set(records["Image_filename"].dropna().str.strip())
    for col in ("Mask_tumor_filename", "Mask_other_filename"):
        listed |= {f for v in records[col] for f in _split(v)}
    for path in sorted(folder.glob("*.png")):
        if path.name not in listed:
            log.add(path, "file without its row in the clinical spreadsheet")


READERS.register("breast")(BreastReader())
