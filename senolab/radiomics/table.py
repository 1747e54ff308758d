"""The feature table: one row per lesion, keyed by ``case_id`` and ``lesion_index``, in parquet.

Columns: the identity columns below, then one float column per feature named as
pyradiomics names it (``original_firstorder_Mean``, ``original_glcm_Contrast``...).
``status`` is ``ok``, ``failed`` (``error`` says why; features are NaN) or ``no_lesion``
(a normal image: one row with ``lesion_index`` missing, not an error). ``spacing_mm`` is
the spacing given to pyradiomics: the cohort's ``pixel_spacing_mm`` when known, else 1.0
with ``spacing_known`` False (shape features of those rows are in pixels, not mm).

The parquet file carries the provenance (parameters, pyradiomics version, their hash) in
its schema metadata under ``senolab.radiomics``; :func:`load_features` restores it as
``table.attrs["senolab.radiomics"]``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

ID_COLUMNS: tuple[str, ...] = (
    "case_id",
    "lesion_index",  # 0-based, into the cohort row's mask_paths; missing for no_lesion rows
    "cohort",
    "site",
    "label",
    "status",
    "error",
    "spacing_mm",
    "spacing_known",
)
OK, FAILED, NO_LESION = "ok", "failed", "no_lesion"
PROVENANCE = "senolab.radiomics"  # key of the provenance in table.attrs and parquet metadata


class RadiomicsError(RuntimeError):
    """Extraction failed for some lesions under ``strict``, or a feature file is unusable."""


@dataclass
class FeatureTable:
    """The result of an extraction: the table (provenance in ``table.attrs``) and counts.

    ``stats`` counts lesions ``computed`` by this run and taken ``from_cache``;
    ``recomputed_invalid`` how many of the computed ones were found in the cache under an
    entry that did not validate (see :mod:`senolab.radiomics.cache`).
    """

    table: pd.DataFrame
    stats: dict[str, int] = field(default_factory=dict)
    recomputed_invalid: int = 0

    @property
    def provenance(self) -> dict[str, Any]:
        return self.table.attrs[PROVENANCE]

    @property
    def feature_columns(self) -> list[str]:
        return feature_columns(self.table)

    def features(self) -> pd.DataFrame:
        """The features of the ``ok`` rows, indexed by (case_id, lesion_index)."""
        return ok_features(self.table)

    def failures(self) -> pd.DataFrame:
        return self.table.loc[self.table["status"] == FAILED, ["case_id", "lesion_index", "site", "error"]]

    def summary(self) -> str:
        """Counts by status, what the cache saved, and the failures with their reasons."""
        lines = [status_line(self.table)]
        if self.stats:
            lines.append(f"computed {self.stats['computed']} lesions, {self.stats['from_cache']} from cache")
        if self.recomputed_invalid:
            lines.append(invalid_cache_line(self.recomputed_invalid))
        unknown = int((~self.table["spacing_known"] & (self.table["status"] == OK)).sum())
        if unknown:
            lines.append(f"{unknown} lesions of unknown pixel spacing: extracted at 1.0 (shape features in pixels)")
        lines.extend(failure_lines(self.table))
        return "\n".join(lines)

    def write(self, path: str | Path) -> Path:
        """Write the table and its provenance to one parquet file."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        table = self.table.copy()
        table.attrs = {}  # written once, under our own key, not a second time as pandas' attrs
        arrow = pa.Table.from_pandas(table, preserve_index=False)
        metadata = {**(arrow.schema.metadata or {}), PROVENANCE.encode(): json.dumps(self.provenance).encode()}
        pq.write_table(arrow.replace_schema_metadata(metadata), path)
        return path


def load_features(path: str | Path) -> pd.DataFrame:
    """A feature table written by :meth:`FeatureTable.write`, its provenance in ``attrs``."""
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        arrow = pq.read_table(path)
    except (OSError, ValueError) as err:
        raise RadiomicsError(f"{path}: not a readable parquet file ({err})") from err
    metadata = arrow.schema.metadata or {}
    if PROVENANCE.encode() not in metadata:
        raise RadiomicsError(f"{path}: no {PROVENANCE} provenance; not written by `senolab radiomics extract`")
    table = arrow.to_pandas()
    missing = [c for c in ID_COLUMNS if c not in table.columns]
    if missing:
        raise RadiomicsError(f"{path}: lacks columns {missing}")
    table.attrs[PROVENANCE] = json.loads(metadata[PROVENANCE.encode()])
    return table


def feature_columns(table: pd.DataFrame) -> list[str]:
    """The pyradiomics feature columns of a feature table, in their order."""
    return [c for c in table.columns if c not in ID_COLUMNS]


def feature_class(name: str) -> str:
    """The pyradiomics feature class of a column name: ``original_glcm_Contrast`` -> ``glcm``."""
    parts = name.split("_")
    if len(parts) < 3:
        raise ValueError(f"radiomics column {name!r}: expected pyradiomics naming '<image type>_<class>_<feature>'")
    return parts[1]


def ok_features(table: pd.DataFrame) -> pd.DataFrame:
    """The features of the ``ok`` rows, indexed by (case_id, lesion_index)."""
    ok = table[table["status"] == OK]
    return ok.set_index(["case_id", "lesion_index"])[feature_columns(table)]


def status_line(table: pd.DataFrame) -> str:
    counts = table["status"].value_counts()
    return (
        f"{len(table)} rows: {counts.get(OK, 0)} ok, {counts.get(FAILED, 0)} failed, "
        f"{counts.get(NO_LESION, 0)} without lesion (normal images); {len(feature_columns(table))} features"
    )


def invalid_cache_line(count: int) -> str:
    lesions = "1 lesion whose cache entry" if count == 1 else f"{count} lesions whose cache entries"
    return f"recomputed {lesions} did not validate (damaged, edited, or written by an older senolab)"


def failure_lines(table: pd.DataFrame, limit: int = 10) -> list[str]:
    """Failures grouped by reason, then the first few failed lesions."""
    failed = table[table["status"] == FAILED]
    items = [(f"{rec.case_id} lesion {_lesion(rec.lesion_index)}", rec.error) for rec in failed.itertuples()]
    return grouped_reasons("failures by reason:", items, limit)


def grouped_reasons(heading: str, items: list[tuple[str, str]], limit: int = 10) -> list[str]:
    """``heading``, how many ``(what, reason)`` items have each kind of reason, then the
    first ``limit`` items as ``what: reason``; nothing when there are no items."""
    if not items:
        return []
    kinds = pd.Series([_reason_kind(reason) for _, reason in items]).value_counts()
    lines = [heading, *(f"  {n:5d}  {kind}" for kind, n in kinds.items())]
    lines += [f"  {what}: {reason}" for what, reason in items[:limit]]
    if len(items) > limit:
        lines.append(f"  ... and {len(items) - limit} more")
    return lines


def _lesion(index) -> str:
    return "-" if pd.isna(index) else str(int(index))


def _reason_kind(error: str) -> str:
    # Numbers replaced, so that "mask size (300, 200) differs..." for many cases is one
    # line of the summary.
    return re.sub(r"\d+(\.\d+)?", "N", error)
