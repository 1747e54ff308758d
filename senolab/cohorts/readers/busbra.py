"""BUS-BRA (Brazil; Gómez-Flores et al., Medical Physics 2023).

Layout: ``BUSBRA/bus_data.csv`` (ID, Case = patient, Pathology, Histology, BIRADS, Device
= scanner, Side, BBOX as [x, y, w, h] in the original pixel grid), ``BUSBRA/Images/<ID>.png``,
``BUSBRA/Masks/mask_<NNNN-s>.png``, and the official patient-grouped fold files
``5-fold-cv.csv`` / ``10-fold-cv.csv`` (column ``kFold`` is the test fold of each image).
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from senolab.cohorts.readers import READERS
from senolab.cohorts.readers.base import (CaseFiles, Manifest, ProblemLog, TableRow, load_cases, read_text_table,
                                         table_rows)
from senolab.cohorts.schema import Cohort, CohortError, Column, Kind

FOLDER = "BUSBRA"
BIRADS_LEVELS = ("2", "3", "4", "5")
FOLD_FILES = {"official_5fold": "5-fold-cv.csv", "official_10fold": "10-fold-cv.csv"}
ID_PREFIX = "bus_"  # bus_0001-l.png has the mask mask_0001-l.png
REQUIRED = ("ID", "Case", "Pathology", "Histology", "BIRADS", "Device", "Side", "BBOX")

COLUMNS = {
    "side": Column("side", Kind.CATEGORICAL, ("left", "right", "single"), description="breast side"),
    "birads": Column("birads", Kind.ORDINAL, BIRADS_LEVELS, outcome=True, description="BI-RADS category"),
    "histology": Column("histology", Kind.CATEGORICAL, (), outcome=True, description="histological type"),
    "pathology": Column("pathology", Kind.CATEGORICAL, ("benign", "malignant"), outcome=True),
}


class BusBraReader:
    name = "busbra"
    layout = f"{FOLDER}/bus_data.csv, {FOLDER}/Images/bus_NNNN-s.png, {FOLDER}/Masks/mask_NNNN-s.png"

    def detect(self, root: Path) -> bool:
        return _base(root) is not None

    def read(self, root: Path, strict: bool = False, progress: bool = True) -> Cohort:
        base = _base(root)
        if base is None:
            raise CohortError(f"{root}: not a BUS-BRA folder; expected {self.layout}")
        log = ProblemLog(self.name, strict)
        table_file = base / "bus_data.csv"
        records = read_text_table(table_file, REQUIRED)
        manifest = Manifest(root if (root / "derived_manifest.csv").exists() else base.parent)
        listed = set(records["ID"])
        for image in sorted((base / "Images").glob("*.png")):
            if image.stem not in listed:
                log.add(image, "image without its row in bus_data.csv")
        cases = [case for row, rec in table_rows(records, table_file, log) if (case := _case(base, rec, row, manifest))]
        table = load_cases(cases, log, progress)
        columns = dict(COLUMNS)
        columns["histology"] = Column("histology", Kind.CATEGORICAL, tuple(sorted(set(records["Histology"]))), True)
        splits = {name: _folds(base / fname, table, log)
                  for name, fname in FOLD_FILES.items() if (base / fname).exists()}
        return Cohort(self.name, table, columns, splits, log.problems, root).validate()


def _base(root: Path) -> Path | None:
    for base in (root / FOLDER, root):
        if (base / "bus_data.csv").is_file() and (base / "Images").is_dir():
            return base
    return None


def _case(base: Path, rec: dict, row: TableRow, manifest: Manifest) -> CaseFiles | None:
    """The row's case, or None (reported) when its ID names no file inside the dataset or a
    BI-RADS or side cell is outside its levels (which would fail the whole cohort)."""
    image_id = rec["ID"]
    if not image_id.startswith(ID_PREFIX):
        row.report("ID", image_id, f"does not start with {ID_PREFIX!r}, so its mask cannot be named; case skipped")
        return None
    image = row.path_inside(base / "Images", "ID", f"{image_id}.png")
    if image is None:
        return None
    # the same depth as the image's, so inside Masks/ whenever the image is inside Images/
    mask = base / "Masks" / f"mask_{image_id.removeprefix(ID_PREFIX)}.png"
    metadata = {
        "side": rec["Side"] or None,
        "birads": rec["BIRADS"] or None,
        "histology": rec["Histology"] or None,
        "pathology": rec["Pathology"] or None,
    }
    levels_ok = all(
        metadata[key] is None or row.is_level(name, metadata[key], COLUMNS[key].levels, image_id)
        for name, key in (("BIRADS", "birads"), ("Side", "side"))
    )
    if not levels_ok:
        return None
    metadata["bbox_reported"] = _reported_box(rec["BBOX"], row, manifest.scale(f"Images/{image_id}.png"))
    return CaseFiles(
        case_id=f"busbra/{image_id}",
        patient_id=f"busbra/{rec['Case']}",
        image_path=image,
        label=rec["Pathology"].strip().lower(),
        site="busbra",
        scanner=rec["Device"],
        mask_paths=[mask],
        metadata=metadata,
    )


def _reported_box(text: str, row: TableRow, scale: float) -> list[float] | None:
    """The official BBOX "[x, y, w, h]" (original grid) as xyxy in the stored image's pixels;
    None when empty, or (reported) when it is not four numbers with a positive size."""
    if not text.strip():
        return None
    try:
        x, y, w, h = (float(v) for v in text.strip().removeprefix("[").removesuffix("]").split(","))
    except ValueError:  # not numbers, or not four of them
        row.report("BBOX", text, "is not [x, y, w, h]; kept as missing")
        return None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or min(x, y) < 0 or min(w, h) <= 0:
        row.report("BBOX", text, "is not a box inside the image with a positive width and height; kept as missing")
        return None
    return [x * scale, y * scale, (x + w) * scale, (y + h) * scale]


def _folds(path: Path, table: pd.DataFrame, log: ProblemLog) -> pd.Series:
    """The official test fold of each case read; a row whose fold is not a whole number
    is reported and its case left out of this split."""
    folds = {}
    for row, rec in table_rows(read_text_table(path, ("ID", "kFold")), path, log):
        fold = rec["kFold"].strip()
        if fold.isdigit():
            folds[f"busbra/{rec['ID']}"] = int(fold)
        else:
            row.report("kFold", rec["kFold"], "is not a fold number; case left out of this split")
    by_case = pd.Series(folds, dtype=float)
    return by_case.reindex(table["case_id"]).dropna().astype(int).rename("fold")


READERS.register("busbra")(BusBraReader())
