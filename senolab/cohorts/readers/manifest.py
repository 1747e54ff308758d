"""Any cohort, described by a case manifest: ``manifest.csv`` (or ``manifest.json``) plus
its sidecar ``manifest.yaml``.

The manifest has one row per image: ``image`` (required), ``mask`` (lesion mask files joined
by ``;``) or ``box`` (``x0,y0,x1,y1`` in the image's pixels, several joined by ``;``),
``label`` (normal/benign/malignant), ``patient``, and optionally ``site``, ``scanner``,
``modality``, ``laterality``, ``view``, ``pixel_spacing_mm``, ``fold`` and the metadata
columns the sidecar declares. A JSON manifest holds the same content as a list of objects
(masks and boxes may be lists; row N of a JSON manifest is its Nth object). The sidecar
names the cohort, its default modality, the kind of each metadata column and which columns
are outcomes (see docs/contracts.md#manifest for the full schema).

Paths resolve relative to the manifest's folder and may not leave it. A bad cell is a
problem named by row and column: a bad metadata value is kept missing, a bad path, label,
patient or box skips its case. A broken layout or sidecar (a missing required column, an
unknown kind) is one CohortError naming the file and key.

DICOM images fill the ``pixel_spacing_mm``, ``laterality``, ``view``, ``scanner`` and
``modality`` a row leaves empty from their header, and ``patient: dicom`` takes the
PatientID (or, with ``dicom: {patient_salt: ...}`` in the sidecar, its salted hash).
Nothing else of the header reaches the table. How each DICOM image was windowed is kept
in the reader-specific column ``windowing`` (never a model input: it is not declared).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from senolab.cohorts.imaging import READ_ERRORS, image_size
from senolab.cohorts.readers import READERS
from senolab.cohorts.readers.base import CaseFiles, ProblemLog, TableRow, load_cases, not_a_file, read_text_table
from senolab.cohorts.schema import LABELS, MODALITIES, Cohort, CohortError, Column, Kind
from senolab.paths import describe_path

CSV, JSON, SIDECAR = "manifest.csv", "manifest.json", "manifest.yaml"
REQUIRED = ("image", "label", "patient")
# Columns the reader itself interprets; any other column must be declared in the sidecar.
RESERVED = ("image", "mask", "box", "label", "patient", "site", "scanner", "modality", "laterality", "view",
            "pixel_spacing_mm", "fold")
LIST_SEPARATOR = ";"  # between the masks, or the boxes, of one row
PATIENT_FROM_DICOM = "dicom"  # a patient cell meaning "the DICOM header's PatientID"
LATERALITIES = ("L", "R")
SPACING_MM = (0.0, 10.0)  # exclusive: a pixel is a fraction of a millimetre, never 10 mm
FOLD_SPLIT = "manifest_folds"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # prefixes case ids: no "/" or ":"


# ------------------------------------------------------------------------- sidecar


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ColumnSpec(_Strict):
    """One metadata column's declaration in ``manifest.yaml``."""

    kind: Literal["numeric", "categorical", "ordinal", "multi"]
    unit: str = ""
    range: tuple[float, float] | None = None  # inclusive [low, high]; numeric only
    levels: list[str] | None = None  # categorical, ordinal (in order) and multi
    separator: str | None = None  # multi only; ";" when absent
    outcome: bool = False  # encodes the answer: never a model input unless opted in
    description: str = ""

    @field_validator("levels", mode="before")
    @classmethod
    def _levels_as_text(cls, value):
        # YAML reads `levels: [1, 2, 3]` as numbers; the table's cells are text
        if isinstance(value, list):
            return [v if isinstance(v, str) else str(v) for v in value]
        return value

    @model_validator(mode="after")
    def _fits_its_kind(self):
        if self.kind == "numeric":
            if self.range is None:
                raise ValueError("a numeric column needs `range: [low, high]`")
            if not self.range[0] < self.range[1]:
                raise ValueError(f"range {list(self.range)}: low must be below high")
            if self.levels is not None:
                raise ValueError("a numeric column has a range, not levels")
        else:
            if not self.levels:
                raise ValueError(f"a {self.kind} column needs `levels: [...]`")
            if len(set(self.levels)) != len(self.levels):
                raise ValueError(f"levels {self.levels} repeat a value")
            if self.range is not None:
                raise ValueError(f"a {self.kind} column has levels, not a range")
        if self.separator is not None and self.kind != "multi":
            raise ValueError("`separator` is only read for a multi column")
        return self

    def column(self, name: str) -> Column:
        description = f"unit: {self.unit}" if self.unit else self.description
        return Column(name, Kind(self.kind), tuple(self.levels or ()), self.outcome, description)


class DicomOptions(_Strict):
    patient_salt: str | None = None  # PatientID is replaced by its salted hash


class Sidecar(_Strict):
    """``manifest.yaml``: the cohort's name, its default modality, its metadata columns."""

    name: str
    modality: Literal["US", "MG", "MR"] = "US"
    columns: dict[str, ColumnSpec] = {}
    dicom: DicomOptions = DicomOptions()

    @field_validator("name")
    @classmethod
    def _name_prefixes_ids(cls, name: str) -> str:
        if not NAME_RE.match(name):
            raise ValueError(f"{name!r} must start with a letter or digit and hold only letters, digits, "
                             "'_', '.' and '-' (it prefixes every case id)")
        return name

    @model_validator(mode="after")
    def _no_reserved_names(self):
        for name, spec in self.columns.items():
            if name in ("laterality", "view"):
                if spec.kind != "categorical" or spec.outcome:
                    raise ValueError(f"columns.{name}: must be categorical and not an outcome (it is read as such)")
            elif name in RESERVED or name == "windowing":
                raise ValueError(f"columns.{name}: {name!r} is a manifest column, not a metadata column")
        return self


def read_sidecar(folder: Path) -> Sidecar:
    """The folder's ``manifest.yaml`` validated, or (absent) the defaults: the folder's name,
    modality US, no metadata columns. A broken one is one CohortError naming file and key."""
    path = folder / SIDECAR
    found = describe_path(path)
    if found == "nothing":
        return Sidecar(name=default_name(folder))
    if found != "a file":
        raise CohortError(f"{path}: expected the manifest's sidecar file, found {found}")
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise CohortError(f"{path}: not valid YAML{where} ({getattr(err, 'problem', None) or err})") from None
    except UnicodeDecodeError:
        raise CohortError(f"{path}: not a text file (not UTF-8)") from None
    if content is None:
        content = {}
    if not isinstance(content, dict):
        raise CohortError(f"{path}: expected a mapping of keys (name, modality, columns, dicom), "
                          f"found {type(content).__name__}")
    content.setdefault("name", default_name(folder))
    try:
        return Sidecar.model_validate(content)
    except ValidationError as err:
        first = err.errors()[0]
        key = "".join(f"{p}: " for p in [".".join(str(p) for p in first["loc"])] if p)  # none for the whole file
        more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
        raise CohortError(f"{path}: {key}{first['msg'].removeprefix('Value error, ')}{more}") from None


def default_name(folder: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", folder.resolve().name).strip("_.-")
    return name or "manifest"


# ------------------------------------------------------------------------- the table


def manifest_file(folder: Path) -> Path | None:
    """The folder's manifest (CSV or JSON), None if it has neither; both is an error."""
    present = [folder / name for name in (CSV, JSON) if (folder / name).is_file()]
    if len(present) > 1:
        raise CohortError(f"{folder}: holds both {CSV} and {JSON}; keep one of them")
    return present[0] if present else None


def read_records(path: Path, sidecar: Sidecar) -> pd.DataFrame:
    """Every cell of the manifest as text ("" when empty), with the required columns."""
    if path.suffix == ".json":
        records = _json_records(path, sidecar)
        missing = sorted(set(REQUIRED) - set(records.columns))
        if missing:
            raise CohortError(f"{path}: missing columns {missing} (no object has them)")
        return records
    return read_text_table(path, REQUIRED)


def _json_records(path: Path, sidecar: Sidecar) -> pd.DataFrame:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise CohortError(f"{path}: not a JSON file (not UTF-8 text)") from None
    except json.JSONDecodeError as err:
        raise CohortError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(content, list) or not content:
        raise CohortError(f"{path}: expected a non-empty list of objects, one per image")
    rows = []
    for number, item in enumerate(content, start=1):
        if not isinstance(item, dict):
            raise CohortError(f"{path}: row {number} is {type(item).__name__}, not an object")
        rows.append({str(key): _json_cell(value, _separator(sidecar, str(key))) for key, value in item.items()})
    return pd.DataFrame(rows).fillna("")


def _separator(sidecar: Sidecar, column: str) -> str:
    spec = sidecar.columns.get(column)
    return (spec.separator or LIST_SEPARATOR) if spec is not None and spec.kind == "multi" else LIST_SEPARATOR


def _json_cell(value: Any, separator: str) -> str:
    """A JSON value as the CSV cell that says the same: lists joined by ``separator`` (a
    box's four numbers by ``,``), numbers as text, null as empty."""
    if value is None:
        return ""
    if isinstance(value, list):
        if value and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return ",".join(_json_cell(v, separator) for v in value)  # one box
        return separator.join(_json_cell(v, separator) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# ------------------------------------------------------------------------- the reader


class ManifestReader:
    name = "manifest"
    layout = f"{CSV} or {JSON} (one row per image: image, mask or box, label, patient, ...) with its sidecar {SIDECAR}"

    def detect(self, root: Path) -> bool:
        return any((root / name).is_file() for name in (CSV, JSON))

    def read(self, root: Path, strict: bool = False, progress: bool = True) -> Cohort:
        path = manifest_file(root)
        if path is None:
            raise CohortError(f"{root}: not a manifest folder; expected {self.layout}")
        sidecar = read_sidecar(root)
        records = read_records(path, sidecar)
        log = RowLog(sidecar.name, strict, path)
        _check_columns(records, sidecar, path, log)
        rows = [ManifestRow(path, number, log, root, rec, sidecar)
                for number, rec in enumerate(records.to_dict("records"), start=_first_row(path))]
        read = [(row, case) for row in rows if (case := row.case()) is not None]
        cases = _unique_images([case for _, case in read], log)
        _locate_normals(cases)
        table = load_cases(cases, log, progress)
        table = _drop_boxes_outside(table, log)
        table, columns = _columns(sidecar, table)
        splits = _fold_split(read, table) if "fold" in records.columns else {}
        return Cohort(sidecar.name, table, columns, splits, log.problems, root).validate()


def _first_row(path: Path) -> int:
    # a spreadsheet shows the header as row 1; a JSON list's first object is row 1
    return 1 if path.suffix == ".json" else 2


def _check_columns(records: pd.DataFrame, sidecar: Sidecar, path: Path, log: ProblemLog) -> None:
    declared = set(sidecar.columns) - {"laterality", "view"}
    absent = sorted(declared - set(records.columns))
    if absent:
        raise CohortError(f"{path}: column {absent[0]!r} is declared in {SIDECAR} but not in the manifest")
    for extra in records.columns:
        if extra not in RESERVED and extra not in declared:
            log.add(path, f"column {extra!r} is not declared in {SIDECAR}; ignored")


class RowLog(ProblemLog):
    """A problem log that names the manifest row and column of a file :func:`load_cases`
    could not use (an unreadable image, a mask of another size), so every problem of a
    manifest points at the line to fix."""

    def __init__(self, cohort: str, strict: bool, manifest: Path):
        super().__init__(cohort, strict)
        self.manifest = manifest
        self.origin: dict[str, str] = {}  # file -> "row N, column 'image'"

    def remember(self, path: Path, where: str) -> None:
        self.origin.setdefault(str(path), where)

    def add(self, file, reason: str) -> None:
        where = self.origin.get(str(file))
        if where is None:
            super().add(file, reason)
        else:
            folder = self.manifest.parent
            name = Path(file).relative_to(folder) if Path(file).is_relative_to(folder) else file
            super().add(self.manifest, f"{where}: {str(name)!r}: {reason}")


@dataclass(frozen=True)
class ManifestRow(TableRow):
    """One manifest row: its cells typed into a :class:`CaseFiles`, each bad one reported."""

    folder: Path
    rec: dict
    sidecar: Sidecar

    def cell(self, column: str) -> str:
        return str(self.rec.get(column, "")).strip()

    def case(self) -> CaseFiles | None:
        image_text = self.cell("image")
        if not image_text:
            self.report("image", image_text, "is empty; the row is skipped")
            return None
        image = self.path_inside(self.folder, "image", image_text)
        if image is not None and (missing := not_a_file(image, "image")):
            self.report("image", image_text, f"cannot be read: {missing}; case skipped")
            return None
        label = self._label()
        masks, boxes = self._masks(), self._boxes()
        if image is None or label is None or masks is None or boxes is None:
            return None
        if masks and boxes:
            self.report("box", self.cell("box"), "and masks on one row: give masks or boxes, not both; case skipped")
            return None
        if label == "normal" and (masks or boxes):
            column = "mask" if masks else "box"
            self.report(column, self.cell(column), "locates a lesion on a normal image; kept as normal, lesion ignored")
            masks, boxes = [], []
        header, windowing = self._dicom(image)
        if header is False:
            return None
        patient = self._patient(header)
        if patient is None:
            return None
        self.log.remember(image, self.where("image"))
        for mask in masks:
            self.log.remember(mask, self.where("mask"))
        if not self._mask_sizes_match(image, masks):
            return None
        name = self.sidecar.name
        header = header or {}
        return CaseFiles(
            case_id=f"{name}/{Path(image_text).with_suffix('').as_posix()}",
            patient_id=f"{name}/{patient}",
            image_path=image,
            label=label,
            site=self.cell("site") or name,
            scanner=self.cell("scanner") or header.get("scanner") or "unknown",
            modality=self._modality(header),
            mask_kind="outline" if masks else "box" if boxes else "none",
            mask_paths=masks,
            pixel_spacing_mm=self._spacing(header),
            boxes=boxes,
            metadata={**self._metadata(), "laterality": self._laterality(header), "view": self._view(header),
                      "windowing": windowing},
        )

    # -- required cells

    def _label(self) -> str | None:
        label = self.cell("label").lower()
        if label not in LABELS:
            self.report("label", self.cell("label"), f"is not one of {LABELS}; case skipped")
            return None
        return label

    def _patient(self, header: dict | None) -> str | None:
        patient = self.cell("patient")
        if patient.lower() == PATIENT_FROM_DICOM:
            found = (header or {}).get("patient_id")
            if header is None:
                self.report("patient", patient, "takes the PatientID of a DICOM image, but the image is not DICOM; "
                            "case skipped")
                return None
            if not found:
                self.report("patient", patient, "takes the PatientID, but the DICOM header has none; case skipped")
                return None
            return str(found)
        if not patient:
            self.report("patient", patient, "is empty (every image needs its patient, for leakage-free splits); "
                        "case skipped")
            return None
        return patient

    # -- lesions

    def _masks(self) -> list[Path] | None:
        paths = [self.path_inside(self.folder, "mask", p) for p in _items(self.cell("mask"))]
        return None if None in paths else paths

    def _boxes(self) -> list[list[float]] | None:
        boxes = []
        for text in _items(self.cell("box")):
            try:
                box = [float(v) for v in text.split(",")]
            except ValueError:
                box = []
            if len(box) != 4 or not all(map(math.isfinite, box)) or min(box) < 0 \
                    or box[2] <= box[0] or box[3] <= box[1]:
                self.report("box", text, "is not x0,y0,x1,y1 with 0 <= x0 < x1 and 0 <= y0 < y1; case skipped")
                return None
            boxes.append(box)
        return boxes

    def _mask_sizes_match(self, image: Path, masks: list[Path]) -> bool:
        """Masks of another size than their image, named by row and column before any
        pixel is decoded (an unreadable file is left to :func:`load_cases` to report)."""
        if not masks:
            return True
        try:
            size = image_size(image)
        except READ_ERRORS:
            return True
        for mask in masks:
            try:
                mask_size = image_size(mask)
            except READ_ERRORS:
                continue
            if mask_size != size:
                self.report("mask", str(mask.relative_to(self.folder)),
                            f"has size {mask_size[0]}x{mask_size[1]} but its image is {size[0]}x{size[1]}; "
                            "case skipped")
                return False
        return True

    # -- DICOM

    def _dicom(self, image: Path) -> tuple[dict | None | bool, str | None]:
        """(header, windowing) of a DICOM image; (None, None) for another format, (False,
        None) after reporting a DICOM file that cannot be read."""
        from senolab.cohorts import dicom

        if not dicom.is_dicom(image):
            return None, None
        try:
            read = dicom.read_dicom(image, patient_salt=self.sidecar.dicom.patient_salt)
        except (dicom.DicomError, *READ_ERRORS) as err:
            self.report("image", self.cell("image"), f"is an unreadable DICOM file ({err}); case skipped")
            return False, None
        return dict(read.header), read.windowing

    def _modality(self, header: dict) -> str:
        text = self.cell("modality").upper()
        if text:
            if text in MODALITIES:
                return text
            self.report("modality", self.cell("modality"), f"is not one of {MODALITIES}; "
                        f"the sidecar's {self.sidecar.modality} is used")
            return self.sidecar.modality
        found = str(header.get("modality") or "").upper()
        return found if found in MODALITIES else self.sidecar.modality

    def _spacing(self, header: dict) -> float:
        text = self.cell("pixel_spacing_mm")
        if text:
            return self.number_between("pixel_spacing_mm", text, *SPACING_MM)
        found = header.get("pixel_spacing_mm")
        return float(found) if found is not None else float("nan")

    def _laterality(self, header: dict) -> str | None:
        text = self.cell("laterality").upper()
        if not text:
            return header.get("laterality") or None
        return text if self._is_level("laterality", text, self._levels("laterality", LATERALITIES)) else None

    def _view(self, header: dict) -> str | None:
        text = self.cell("view").upper()
        if not text:
            return header.get("view") or None
        spec = self.sidecar.columns.get("view")
        if spec is None:
            return text  # its levels are the values seen
        return text if self._is_level("view", text, tuple(spec.levels)) else None

    def _levels(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        spec = self.sidecar.columns.get(name)
        return tuple(spec.levels) if spec is not None else default

    # -- metadata

    def _metadata(self) -> dict[str, Any]:
        values = {}
        for name, spec in self.sidecar.columns.items():
            if name in ("laterality", "view"):
                continue
            text = self.cell(name)
            values[name] = _missing(spec) if not text else self._typed(name, spec, text)
        return values

    def _typed(self, name: str, spec: ColumnSpec, text: str):
        if spec.kind == "numeric":
            return self._number_in(name, text, spec.range)
        if spec.kind == "multi":
            items = sorted({v.strip() for v in text.split(spec.separator or LIST_SEPARATOR) if v.strip()})
            unknown = [v for v in items if v not in spec.levels]
            if unknown:
                self.report(name, text, f"holds {unknown}, not among the levels {spec.levels}; kept as missing")
                return None
            return items or None
        return text if self._is_level(name, text, tuple(spec.levels)) else None

    def _number_in(self, column: str, text: str, bounds: tuple[float, float]) -> float:
        """The cell as a float within the declared range, bounds included; NaN (reported) if not."""
        try:
            value = float(text)
        except ValueError:
            self.report(column, text, "is not a number; kept as missing")
            return float("nan")
        low, high = bounds
        if not low <= value <= high:  # NaN fails this too
            self.report(column, text, f"is outside the declared range [{low:g}, {high:g}]; kept as missing")
            return float("nan")
        return value

    def _is_level(self, column: str, text: str, levels: tuple[str, ...]) -> bool:
        if text in levels:
            return True
        self.report(column, text, f"is not one of {levels}; kept as missing")
        return False


def _items(text: str) -> list[str]:
    return [item.strip() for item in text.split(LIST_SEPARATOR) if item.strip()]


def _missing(spec: ColumnSpec):
    return float("nan") if spec.kind == "numeric" else None


def _unique_images(cases: list[CaseFiles], log: RowLog) -> list[CaseFiles]:
    """Each image once: a second row naming the same image is reported and skipped (two
    rows would be two cases with one id, and one image's patient could differ between them)."""
    seen: dict[str, CaseFiles] = {}
    for case in cases:
        if case.case_id in seen:
            log.add(case.image_path, f"the image is listed again (as {case.case_id!r}); the later row is skipped")
            continue
        seen[case.case_id] = case
    return list(seen.values())


def _locate_normals(cases: list[CaseFiles]) -> None:
    """A normal image takes the cohort's way of locating lesions: an empty outline where
    any image has masks (a true "no lesion here"), "box" where lesions are boxed, "none" in
    an image-level cohort, so a segmentation head never learns from normals alone."""
    kinds = {case.mask_kind for case in cases if case.label != "normal"}
    kind = next((k for k in ("outline", "box") if k in kinds), "none")
    for case in cases:
        if case.label == "normal":
            case.mask_kind = kind


def _drop_boxes_outside(table: pd.DataFrame, log: RowLog) -> pd.DataFrame:
    """Boxes that reach past their image (known once the images are read) skip their case."""
    inside = []
    for row in table.itertuples():
        fits = row.mask_kind != "box" or all(b[2] <= row.width and b[3] <= row.height for b in row.lesion_bboxes)
        if not fits:
            log.add(row.image_path, f"a box reaches past the image's {row.width}x{row.height} pixels; case skipped")
        inside.append(fits)
    return table.loc[inside].reset_index(drop=True)


def _columns(sidecar: Sidecar, table: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Column]]:
    """The table and its metadata columns: the declared ones, and laterality and view when
    any image has them (view's levels, unless declared, are the values seen)."""
    columns = {name: spec.column(name) for name, spec in sidecar.columns.items() if name not in ("laterality", "view")}
    for name, default in (("laterality", LATERALITIES), ("view", None)):
        present = table[name].dropna()
        spec = sidecar.columns.get(name)
        if present.empty and spec is None:
            table = table.drop(columns=name)
            continue
        levels = tuple(spec.levels) if spec is not None else default or tuple(sorted(set(present)))
        columns[name] = Column(name, Kind.CATEGORICAL, levels, False, spec.description if spec else "")
    return table, columns


def _fold_split(read: list[tuple[ManifestRow, CaseFiles]], table: pd.DataFrame) -> dict[str, pd.Series]:
    """The manifest's ``fold`` column as split ``manifest_folds`` (each case's test fold);
    a fold that is not a whole number is reported, its case left out of the split."""
    folds = {}
    for row, case in read:
        text = row.cell("fold")
        if text.isdigit():
            folds.setdefault(case.case_id, int(text))
        else:
            row.report("fold", text, f"is not a fold number; case left out of split {FOLD_SPLIT}")
    by_case = pd.Series(folds, dtype=float)
    return {FOLD_SPLIT: by_case.reindex(table["case_id"]).dropna().astype(int).rename("fold")}


READERS.register("manifest")(ManifestReader())

