"""A synthetic cohort written by :func:`senolab.cohorts.synthetic.write`, read back.

Layout: ``senolab_synthetic.json`` (the generating config), ``metadata.csv`` (one row per
image) and ``<site>/Dataset_BUSI_with_GT/<label>/<name>.png`` with ``<name>_mask[_k].png``.
The CSV is the source of truth for labels, patients and metadata; images and masks go
through :func:`load_cases` like every real cohort's, so bad files are reported the same
way. The table equals :func:`generate`'s for the same config, except ``image_path`` and
``mask_paths``, which name the files here.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from senolab.cohorts.readers import READERS
from senolab.cohorts.readers.base import CaseFiles, ProblemLog, finite_or_nan, load_cases
from senolab.cohorts.schema import Cohort, CohortError
from senolab.cohorts.synthetic import (
    BUSI_FOLDER,
    COHORT,
    CONFIG_FILE,
    CSV_COLUMNS,
    METADATA_COLUMNS,
    METADATA_FILE,
    MULTI_SEPARATOR,
    metadata_columns,
    parse_cell,
    read_config,
)


class SyntheticReader:
    name = COHORT
    layout = (
        f"{CONFIG_FILE}, {METADATA_FILE} and <site>/{BUSI_FOLDER}/<label>/<name>.png with <name>_mask[_k].png "
        "(written by senolab.cohorts.synthetic.write)"
    )

    def detect(self, root: Path) -> bool:
        return (Path(root) / CONFIG_FILE).is_file()

    def read(self, root: Path, strict: bool = False) -> Cohort:
        root = Path(root)
        if not self.detect(root):
            raise CohortError(f"{root}: not a synthetic cohort folder; expected {self.layout}")
        read_config(root)  # a wrong or foreign config is an error before any file is opened
        records = _metadata(root)
        log = ProblemLog(self.name, strict)
        _report_files_without_rows(root, records, log)
        cases = [case for rec in records.to_dict("records") if (case := _case(root, rec, log)) is not None]
        table = load_cases(cases, log)
        return Cohort(self.name, table, metadata_columns(), {}, log.problems, root).validate()


def _metadata(root: Path) -> pd.DataFrame:
    path = root / METADATA_FILE
    if not path.is_file():
        raise CohortError(f"{path}: missing; a synthetic cohort folder holds {SyntheticReader.layout}")
    # Every cell as text: an empty cell is a missing value, parsed per declared column.
    records = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in CSV_COLUMNS if c not in records.columns]
    if missing:
        raise CohortError(f"{path}: missing columns {missing}; expected {list(CSV_COLUMNS)}")
    return records


def _case(root: Path, rec: dict, log: ProblemLog) -> CaseFiles | None:
    image = root / rec["image"]
    try:
        metadata = {name: parse_cell(rec[name], col) for name, col in METADATA_COLUMNS.items()}
    except ValueError as err:
        log.add(image, f"{METADATA_FILE} row {rec['case_id']!r}: {err}")
        return None
    metadata["duplicate_of"] = rec["duplicate_of"] or None
    return CaseFiles(
        case_id=rec["case_id"],
        patient_id=rec["patient_id"],
        image_path=image,
        label=rec["label"],
        site=rec["site"],
        scanner=rec["scanner"],
        mask_paths=[root / m for m in _split(rec["masks"])],
        pixel_spacing_mm=finite_or_nan(rec["pixel_spacing_mm"]),
        metadata=metadata,
    )


def _split(cell: str) -> list[str]:
    return [v for v in cell.split(MULTI_SEPARATOR) if v]


def _report_files_without_rows(root: Path, records: pd.DataFrame, log: ProblemLog) -> None:
    listed = set(records["image"]) | {m for cell in records["masks"] for m in _split(cell)}
    for path in sorted(root.glob(f"*/{BUSI_FOLDER}/*/*.png")):
        if path.relative_to(root).as_posix() not in listed:
            log.add(path, f"file without its row in {METADATA_FILE}")


READERS.register(COHORT)(SyntheticReader())
