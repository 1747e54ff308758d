"""BUS-BRA (Brazil; Gómez-Flores et al., Medical Physics 2023).

Layout: ``BUSBRA/bus_data.csv`` (ID, Case = patient, Pathology, Histology, BIRADS, Device
= scanner, Side, BBOX as [x, y, w, h] in the original pixel grid), ``BUSBRA/Images/<ID>.png``,
``BUSBRA/Masks/mask_<NNNN-s>.png``, and the official patient-grouped fold files
``5-fold-cv.csv`` / ``10-fold-cv.csv`` (column ``kFold`` is the test fold of each image).
"""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd

from senolab.cohorts.readers import READERS
from senolab.cohorts.readers.base import CaseFiles, Manifest, ProblemLog, load_cases
from senolab.cohorts.schema import Cohort, CohortError, Column, Kind

FOLDER = "BUSBRA"
BIRADS_LEVELS = ("2", "3", "4", "5")
FOLD_FILES = {"official_5fold": "5-fold-cv.csv", "official_10fold": "10-fold-cv.csv"}

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

    def read(self, root: Path, strict: bool = False) -> Cohort:
        base = _base(root)
        if base is None:
            raise CohortError(f"{root}: not a BUS-BRA folder; expected {self.layout}")
        log = ProblemLog(self.name, strict)
        records = pd.read_csv(base / "bus_data.csv", dtype=str, keep_default_na=False)
        _require_columns(records, base / "bus_data.csv")
        manifest = Manifest(root if (root / "derived_manifest.csv").exists() else base.parent)
        listed = set(records["ID"])
        for image in sorted((base / "Images").glob("*.png")):
            if image.stem not in listed:
                log.add(image, "image without its row in bus_data.csv")
        table = load_cases((_case(base, rec) for rec in records.to_dict("records")), log)
        by_id = {rec["ID"]: rec for rec in records.to_dict("records")}
        table["bbox_reported"] = [_reported_box(by_id[i], manifest) for i in _ids(table)]
        columns = dict(COLUMNS)
        columns["histology"] = Column("histology", Kind.CATEGORICAL, tuple(sorted(set(records["Histology"]))), True)
        splits = {name: _folds(base / fname, table) for name, fname in FOLD_FILES.items() if (base / fname).exists()}
        return Cohort(self.name, table, columns, splits, log.problems, root).validate()


def _base(root: Path) -> Path | None:
    for base in (root / FOLDER, root):
        if (base / "bus_data.csv").is_file() and (base / "Images").is_dir():
            return base
    return None


def _require_columns(records: pd.DataFrame, path: Path) -> None:
    needed = {"ID", "Case", "Pathology", "Histology", "BIRADS", "Device", "Side", "BBOX"}
    missing = sorted(needed - set(records.columns))
    if missing:
        raise CohortError(f"{path}: missing columns {missing}")


def _case(base: Path, rec: dict) -> CaseFiles:
    image_id = rec["ID"]
    mask = base / "Masks" / f"mask_{image_id.split('_', 1)[1]}.png"
    return CaseFiles(
        case_id=f"busbra/{image_id}",
        patient_id=f"busbra/{rec['Case']}",
        image_path=base / "Images" / f"{image_id}.png",
        label=rec["Pathology"].strip().lower(),
        site="busbra",
        scanner=rec["Device"],
        mask_paths=[mask],
        metadata={
            "side": rec["Side"] or None,
            "birads": rec["BIRADS"] or None,
            "histology": rec["Histology"] or None,
            "pathology": rec["Pathology"] or None,
        },
    )


def _ids(table: pd.DataFrame) -> list[str]:
    return [case_id.split("/", 1)[1] for case_id in table["case_id"]]


def _reported_box(rec: dict, manifest: Manifest) -> list[float] | None:
    """The official BBOX [x, y, w, h] (original grid) as xyxy in the stored image's pixels."""
    try:
        x, y, w, h = (float(v) for v in ast.literal_eval(rec["BBOX"]))
    except (ValueError, SyntaxError, TypeError):
        return None
    s = manifest.scale(f"Images/{rec['ID']}.png")
    return [x * s, y * s, (x + w) * s, (y + h) * s]


def _folds(path: Path, table: pd.DataFrame) -> pd.Series:
    folds = pd.read_csv(path, dtype={"ID": str})
    by_case = pd.Series(folds["kFold"].astype(int).values, index="busbra/" + folds["ID"])
    return by_case.reindex(table["case_id"]).dropna().astype(int).rename("fold")


READERS.register("busbra")(BusBraReader())
