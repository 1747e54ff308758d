"""The synthetic cohort as a source: made in memory by :func:`senolab.cohorts.synthetic.generate`
(source ``synthetic``, options a ``SyntheticConfig``; its mammography sibling, source
``synthetic_mg``, by :func:`senolab.cohorts.synthetic_mammography.generate_mammography`
from a ``MammographyConfig``, in memory only), or written by
:func:`senolab.cohorts.synthetic.write` and read back (reader ``synthetic``).

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

from senolab.cohorts.readers import READERS, SOURCES
from senolab.cohorts.readers.base import CaseFiles, ProblemLog, TableRow, load_cases, read_text_table, table_rows
from senolab.cohorts.schema import Cohort, CohortError
from senolab.cohorts.synthetic import (
    BUSI_FOLDER,
    COHORT,
    CONFIG_FILE,
    CSV_COLUMNS,
    METADATA_COLUMNS,
    METADATA_FILE,
    MULTI_SEPARATOR,
    generate,
    metadata_columns,
    parse_cell,
    read_config,
)
from senolab.cohorts.synthetic_mammography import COHORT as MG_COHORT
from senolab.cohorts.synthetic_mammography import generate_mammography


class SyntheticReader:
    name = COHORT
    layout = (
        f"{CONFIG_FILE}, {METADATA_FILE} and <site>/{BUSI_FOLDER}/<label>/<name>.png with <name>_mask[_k].png "
        "(written by senolab.cohorts.synthetic.write)"
    )

    def detect(self, root: Path) -> bool:
        return (Path(root) / CONFIG_FILE).is_file()

    def read(self, root: Path, strict: bool = False, progress: bool = True) -> Cohort:
        root = Path(root)
        if not self.detect(root):
            raise CohortError(f"{root}: not a synthetic cohort folder; expected {self.layout}")
        read_config(root)  # a wrong or foreign config is an error before any file is opened
        records = _metadata(root)
        log = ProblemLog(self.name, strict)
        _report_files_without_rows(root, records, log)
        rows = table_rows(records, root / METADATA_FILE, log)
        cases = [case for row, rec in rows if (case := _case(root, rec, row, log)) is not None]
        table = load_cases(cases, log, progress)
        return Cohort(self.name, table, metadata_columns(), {}, log.problems, root).validate()


# Plausible pixel spacings (mm, exclusive): a value outside is a typo, kept as missing.
SPACING_MM = (0.0, 10.0)


def _metadata(root: Path) -> pd.DataFrame:
    path = root / METADATA_FILE
    if not path.is_file():
        raise CohortError(f"{path}: missing; a synthetic cohort folder holds {SyntheticReader.layout}")
    # Every cell as text: an empty cell is a missing value, parsed per declared column.
    return read_text_table(path, CSV_COLUMNS)


def _case(root: Path, rec: dict, row: TableRow, log: ProblemLog) -> CaseFiles | None:
    image = row.path_inside(root, "image", rec["image"])
    masks = [row.path_inside(root, "masks", m) for m in _split(rec["masks"])]
    if image is None or None in masks:
        return None
    try:
        metadata = {name: parse_cell(rec[name], col) for name, col in METADATA_COLUMNS.items()}
    except ValueError as err:
        log.add(image, f"{METADATA_FILE} row {rec['case_id']!r}: {err}")
        return None
    metadata["duplicate_of"] = rec["duplicate_of"] or None
    spacing = rec["pixel_spacing_mm"].strip()
    return CaseFiles(
        case_id=rec["case_id"],
        patient_id=rec["patient_id"],
        image_path=image,
        label=rec["label"],
        site=rec["site"],
        scanner=rec["scanner"],
        mask_paths=masks,
        pixel_spacing_mm=row.number_between("pixel_spacing_mm", spacing, *SPACING_MM) if spacing else float("nan"),
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
SOURCES.register(COHORT)(generate)
SOURCES.register(MG_COHORT)(generate_mammography)
