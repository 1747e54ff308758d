"""CBIS-DDSM (Curated Breast Imaging Subset of DDSM; Lee et al., Scientific Data 2017; TCIA,
CC BY 3.0): digitised film mammograms, CC and MLO views, masses and calcifications.

Layout of the official TCIA release: the DICOM tree ``CBIS-DDSM/<Subject ID>/<study>/<series>/*.dcm``
as the NBIA Data Retriever writes it (also inside its ``manifest-*/`` folder), beside the
four case-description CSVs ``{mass,calc}_case_description_{train,test}_set.csv`` (those
present are read). Each CSV row is one abnormality of one image: ``patient_id``, breast
density (``breast_density`` in the mass files, ``breast density`` in the calc files: both
spellings are accepted), ``left or right breast``, ``image view``, ``abnormality id``,
``abnormality type``, ``mass shape`` / ``mass margins`` or ``calc type`` / ``calc
distribution``, ``assessment`` (BI-RADS), ``pathology``, ``subtlety`` and three file paths.

Subjects: the full mammogram is ``<Mass|Calc>-<Training|Test>_P_NNNNN_<LEFT|RIGHT>_<CC|MLO>``;
each abnormality's ROI mask and cropped image are under that name plus ``_<abnormality id>``.
The woman is ``P_NNNNN`` (both breasts, both views). A breast image holding a mass and a
calcification is stored twice, once per subject prefix, and is two cases here, as the release
lists it; :mod:`senolab.cohorts.dedup` is the place that links such copies.

The known trap: the CSVs' file paths (``<Subject ID>/<study UID>/<series UID>/000000.dcm``)
do not name the downloaded files. The retriever names folders ``<date>-DDSM-<NNNNN>`` and
``1.000000-<series description>-<NNNNN>`` and files ``1-1.dcm``, ``1-2.dcm``; the ROI mask
and the cropped image of one abnormality are often two files of ONE series (described as
"ROI mask images"), in either order. So only the subject folder is taken from a path, and
the mask is told from the cropped image by its size: the mask has its mammogram's size, the
crop is a small patch. A subject whose DICOMs include no file of the image's size is a
reported mask-size problem, never a silent pick.

One case per full mammogram: its abnormalities' masks are its lesions (``mask_kind`` outline),
malignant when any abnormality is MALIGNANT, else benign (BENIGN and
BENIGN_WITHOUT_CALLBACK). The official train/test split is ``official_train_test``: each
case's test fold, 0 for a ``*-Training`` subject and 1 for a ``*-Test`` one.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from senolab.cohorts.dicom import dicom_header, dicom_size
from senolab.cohorts.imaging import READ_ERRORS
from senolab.cohorts.readers import READERS
from senolab.cohorts.readers.base import CaseFiles, ProblemLog, TableRow, load_cases, read_text_table, table_rows
from senolab.cohorts.schema import Cohort, CohortError, Column, Kind

FOLDER = "CBIS-DDSM"
CSV_FILES = {  # file -> (abnormality type, official set)
    "mass_case_description_train_set.csv": ("mass", "Training"),
    "mass_case_description_test_set.csv": ("mass", "Test"),
    "calc_case_description_train_set.csv": ("calcification", "Training"),
    "calc_case_description_test_set.csv": ("calcification", "Test"),
}
TEST_FOLD = {"Training": 0, "Test": 1}
COMMON = ("patient_id", "left or right breast", "image view", "abnormality id", "abnormality type", "assessment",
          "pathology", "subtlety", "image file path", "cropped image file path", "ROI mask file path")
DESCRIPTORS = {  # abnormality type -> its descriptor columns (CSV name -> table column)
    "mass": {"mass shape": "mass_shape", "mass margins": "mass_margins"},
    "calcification": {"calc type": "calc_type", "calc distribution": "calc_distribution"},
}
DENSITY = ("breast_density", "breast density")
SUBJECT = re.compile(r"^(?P<kind>Mass|Calc)-(?P<set>Training|Test)_(?P<patient>P_\d+)_(?P<side>LEFT|RIGHT)_"
                     r"(?P<view>CC|MLO)$")
SIDES = {"LEFT": "L", "RIGHT": "R"}
PATHOLOGIES = ("BENIGN_WITHOUT_CALLBACK", "BENIGN", "MALIGNANT")  # from least to most severe
DENSITIES = ("1", "2", "3", "4")  # BI-RADS breast composition, fatty to extremely dense
ASSESSMENTS = ("0", "1", "2", "3", "4", "5")  # BI-RADS assessment categories
SUBTLETIES = ("1", "2", "3", "4", "5")  # 1 subtle ... 5 obvious
NO_VALUE = ("", "N/A", "NA", "NAN")
SITE = "cbis_ddsm"

# The assessment, pathology, abnormality type, the lesion descriptors and the subtlety are
# outcomes: each is a radiologist's or pathologist's reading of the annotated abnormality
# itself (BI-RADS is the verdict; a spiculated margin or pleomorphic calcifications all
# but name a cancer), known only once the lesion has been found and read, so as model
# inputs they would leak the answer. Density, side and view describe the breast and stay inputs.
BASE_COLUMNS = {
    "laterality": Column("laterality", Kind.CATEGORICAL, ("L", "R"), description="breast side"),
    "view": Column("view", Kind.CATEGORICAL, ("CC", "MLO"), description="mammographic view"),
    "breast_density": Column("breast_density", Kind.ORDINAL, DENSITIES,
                             description="BI-RADS breast density 1 (fatty) to 4 (extremely dense)"),
    "assessment": Column("assessment", Kind.ORDINAL, ASSESSMENTS, outcome=True,
                         description="BI-RADS assessment, the highest of the image's abnormalities"),
    "pathology": Column("pathology", Kind.CATEGORICAL, PATHOLOGIES, outcome=True,
                        description="the most severe pathology of the image's abnormalities"),
    "abnormality_type": Column("abnormality_type", Kind.MULTI, ("calcification", "mass"), outcome=True),
    "subtlety": Column("subtlety", Kind.ORDINAL, SUBTLETIES, outcome=True,
                       description="1 subtle to 5 obvious: the image's most evident abnormality"),
}
DESCRIPTOR_COLUMNS = tuple(column for columns in DESCRIPTORS.values() for column in columns.values())


@dataclass
class Abnormality:
    """One CSV row, typed."""

    row: TableRow
    kind: str
    roi_subject: str
    density: str | None
    assessment: str
    pathology: str
    subtlety: str | None
    descriptors: dict[str, list[str]]


@dataclass
class Mammogram:
    """One full mammogram (a subject) and the rows of its abnormalities."""

    subject: str
    series_uid: str  # the third folder of the CSV path, to pick the file if a folder holds several
    patient: str
    laterality: str
    view: str
    official_set: str
    abnormalities: list[Abnormality] = field(default_factory=list)


class CbisDdsmReader:
    name = "cbis_ddsm"
    layout = f"{FOLDER}/<Subject ID>/<study>/<series>/*.dcm with the case-description CSVs ({', '.join(CSV_FILES)})"

    def detect(self, root: Path) -> bool:
        tree = _tree(root)
        return tree is not None and bool(_csv_files(root, tree))

    def read(self, root: Path, strict: bool = False, progress: bool = True) -> Cohort:
        tree = _tree(root)
        csvs = _csv_files(root, tree) if tree is not None else {}
        if not csvs:
            raise CohortError(f"{root}: not a CBIS-DDSM folder; expected {self.layout}")
        log = ProblemLog(self.name, strict)
        images: dict[str, Mammogram] = {}
        descriptor_levels: dict[str, set[str]] = {column: set() for column in DESCRIPTOR_COLUMNS}
        for path, (kind, official_set) in csvs.items():
            _read_csv(path, kind, official_set, images, descriptor_levels, log)
        dicoms = _dicoms_by_subject(tree)
        _report_images_without_rows(dicoms, images, {s for _, s in csvs.values()}, {k for k, _ in csvs.values()}, tree,
                                    log)
        cases = [case for image in images.values() if (case := _case(image, tree, dicoms, log))]
        table = load_cases(cases, log, progress)
        columns = dict(BASE_COLUMNS)
        for column, levels in descriptor_levels.items():
            columns[column] = Column(column, Kind.MULTI, tuple(sorted(levels)), outcome=True)
        split = _official_split(images, table)
        return Cohort(self.name, table, columns, {"official_train_test": split}, log.problems, root).validate()


def _tree(root: Path) -> Path | None:
    """The DICOM tree: ``root/CBIS-DDSM``, or the retriever's ``root/manifest-*/CBIS-DDSM``."""
    if (root / FOLDER).is_dir():
        return root / FOLDER
    found = sorted(p for p in root.glob(f"manifest-*/{FOLDER}") if p.is_dir())
    return found[0] if len(found) == 1 else None


def _csv_files(root: Path, tree: Path) -> dict[Path, tuple[str, str]]:
    """The case-description CSVs beside the tree or in ``root``, each with its type and set."""
    found = {}
    for name, meaning in CSV_FILES.items():
        for folder in dict.fromkeys((root, tree.parent)):
            if (folder / name).is_file():
                found[folder / name] = meaning
                break
    return found


def _read_csv(path: Path, kind: str, official_set: str, images: dict[str, Mammogram],
              descriptor_levels: dict[str, set[str]], log: ProblemLog) -> None:
    records = read_text_table(path, COMMON + tuple(DESCRIPTORS[kind]))
    density = next((name for name in DENSITY if name in records.columns), None)
    if density is None:
        raise CohortError(f"{path}: missing columns ['breast_density' (or 'breast density')]")
    for row, rec in table_rows(records, path, log):
        subject = _subject(rec["image file path"])
        match = SUBJECT.match(subject)
        if not match:
            row.report("image file path", rec["image file path"].strip(),
                       "does not start with a subject <Mass|Calc>-<Training|Test>_P_NNNNN_<LEFT|RIGHT>_<CC|MLO>; "
                       "row skipped")
            continue
        if not _agrees(match, rec, kind, official_set, row):
            continue
        abnormality = _abnormality(rec, row, kind, density, subject)
        if abnormality is None:
            continue
        for column, values in abnormality.descriptors.items():
            descriptor_levels[column].update(values)
        image = images.setdefault(subject, Mammogram(subject, _series_uid(rec["image file path"]), match["patient"],
                                                     SIDES[match["side"]], match["view"], match["set"]))
        image.abnormalities.append(abnormality)


def _path_parts(path_cell: str) -> list[str]:
    """The folders of a CSV file path; cells may carry quotes, a trailing newline (calc
    CSVs) or Windows separators."""
    return path_cell.strip().strip('"').strip().replace("\\", "/").split("/")


def _subject(path_cell: str) -> str:
    """The first folder of a CSV file path: the subject (the rest names no downloaded file)."""
    return _path_parts(path_cell)[0]


def _series_uid(path_cell: str) -> str:
    parts = _path_parts(path_cell)
    return parts[2] if len(parts) >= 4 else ""


def _agrees(match: re.Match, rec: dict, kind: str, official_set: str, row: TableRow) -> bool:
    """The subject named by the path and the row's own cells describe the same image."""
    expected = {
        "patient_id": (rec["patient_id"].strip(), match["patient"]),
        "left or right breast": (rec["left or right breast"].strip(), match["side"]),
        "image view": (rec["image view"].strip(), match["view"]),
        "image file path": ((match["kind"], match["set"]), ({"mass": "Mass", "calcification": "Calc"}[kind],
                                                           official_set)),
    }
    for column, (found, wanted) in expected.items():
        if found != wanted:
            where = "this CSV" if column == "image file path" else "the image file path's subject"
            row.report(column, str(found), f"disagrees with {where} ({wanted}); row skipped")
            return False
    return True


def _abnormality(rec: dict, row: TableRow, kind: str, density_column: str, subject: str) -> Abnormality | None:
    """The row's abnormality, or None (reported) when a level or the ROI path is bad."""
    cells = {
        "pathology": rec["pathology"].strip(),
        "assessment": rec["assessment"].strip(),
        "abnormality type": rec["abnormality type"].strip(),
    }
    if not (row.is_level("pathology", cells["pathology"], PATHOLOGIES, subject)
            and row.is_level("assessment", cells["assessment"], ASSESSMENTS, subject)
            and row.is_level("abnormality type", cells["abnormality type"], (kind,), subject)):
        return None
    roi_subject = _subject(rec["ROI mask file path"])
    if not re.fullmatch(re.escape(subject) + r"_\d+", roi_subject):
        row.report("ROI mask file path", rec["ROI mask file path"].strip(),
                   f"does not start with the subject {subject}_<abnormality id>; case {subject} skipped")
        return None
    return Abnormality(
        row=row,
        kind=kind,
        roi_subject=roi_subject,
        density=_optional_level(rec[density_column], density_column, DENSITIES, row),
        assessment=cells["assessment"],
        pathology=cells["pathology"],
        subtlety=_optional_level(rec["subtlety"], "subtlety", SUBTLETIES, row),
        descriptors={column: _descriptors(rec[name]) for name, column in DESCRIPTORS[kind].items()},
    )


def _optional_level(cell: str, column: str, levels: tuple[str, ...], row: TableRow) -> str | None:
    """An input-like ordinal cell; a value outside ``levels`` is reported and kept as missing."""
    text = cell.strip()
    if text.upper() in NO_VALUE:
        return None
    if text not in levels:
        row.report(column, text, f"is not one of {levels}; kept as missing")
        return None
    return text


def _descriptors(cell: str) -> list[str]:
    """DDSM joins several descriptors of one lesion with '-' (``IRREGULAR-ARCHITECTURAL_DISTORTION``)."""
    return sorted({part.strip() for part in cell.split("-") if part.strip().upper() not in NO_VALUE})


def _dicoms_by_subject(tree: Path) -> dict[str, list[Path]]:
    """Every subject folder's DICOM files, found once (a full download holds about 10,000)."""
    return {folder.name: sorted(folder.rglob("*.dcm")) for folder in sorted(tree.iterdir()) if folder.is_dir()}


def _report_images_without_rows(dicoms: dict[str, list[Path]], images: dict[str, Mammogram], sets: set[str],
                                kinds: set[str], tree: Path, log: ProblemLog) -> None:
    """Full-mammogram folders of a CSV that was read, named by none of its rows."""
    for subject in dicoms:
        match = SUBJECT.match(subject)
        kind = {"Mass": "mass", "Calc": "calcification"}[match["kind"]] if match else None
        if match and subject not in images and match["set"] in sets and kind in kinds:
            log.add(tree / subject, "mammogram folder named by no row of the case-description CSVs")


def _case(image: Mammogram, tree: Path, dicoms: dict[str, list[Path]], log: ProblemLog) -> CaseFiles | None:
    first = image.abnormalities[0].row
    full = _full_image(image, tree, dicoms.get(image.subject, []), first)
    if full is None:
        return None
    try:
        size = dicom_size(full)
        header = dicom_header(full)  # the pixel spacing is in no CSV; load_cases decodes the pixels
    except READ_ERRORS as err:
        log.add(full, f"unreadable mammogram DICOM ({err}); case {image.subject} skipped")
        return None
    masks = []
    for abnormality in image.abnormalities:
        mask = _roi_mask(abnormality, size, tree, dicoms.get(abnormality.roi_subject, []), log)
        if mask is None:
            return None
        if mask not in masks:  # two rows naming one ROI (a listed twice abnormality) are one lesion
            masks.append(mask)
    return CaseFiles(
        case_id=f"{SITE}/{image.subject}",
        patient_id=f"{SITE}/{image.patient}",
        image_path=full,
        label="malignant" if any(a.pathology == "MALIGNANT" for a in image.abnormalities) else "benign",
        site=SITE,
        scanner=header["scanner"],
        modality="MG",
        mask_kind="outline",
        mask_paths=masks,
        pixel_spacing_mm=header["pixel_spacing_mm"],
        metadata=_metadata(image, log),
    )


def _full_image(image: Mammogram, tree: Path, files: list[Path], row: TableRow) -> Path | None:
    """The mammogram's one DICOM; several files in its folder are resolved by the series
    UID of the CSV path (a folder named by it, or ending in its last five digits)."""
    if len(files) == 1:
        return files[0]
    uid = image.series_uid
    named = [path for path in files if uid and (path.parent.name == uid or path.parent.name.endswith(f"-{uid[-5:]}"))]
    if len(named) == 1:
        return named[0]
    if not files:
        row.report("image file path", image.subject, f"names no DICOM under {tree.name}/{image.subject}/; "
                                                     f"case {image.subject} skipped")
        return None
    row.report("image file path", image.subject, f"has {len(files)} DICOMs under {tree.name}/{image.subject}/, "
                                                 f"expected the one full mammogram; case {image.subject} skipped")
    return None


def _roi_mask(abnormality: Abnormality, size: tuple[int, int], tree: Path, files: list[Path],
              log: ProblemLog) -> Path | None:
    """The abnormality's ROI mask: the one DICOM of its subject with the mammogram's size."""
    row, subject = abnormality.row, abnormality.roi_subject
    if not files:
        row.report("ROI mask file path", subject, f"names no DICOM under {tree.name}/{subject}/; "
                                                  f"case {subject.rsplit('_', 1)[0]} skipped")
        return None
    sizes = {}
    for path in files:
        try:
            sizes[path] = dicom_size(path)
        except READ_ERRORS as err:
            log.add(path, f"unreadable ROI DICOM ({err}); case {subject.rsplit('_', 1)[0]} skipped")
            return None
    same = [path for path, found in sizes.items() if found == size]
    if len(same) == 1:
        return same[0]
    found = ", ".join(f"{p.relative_to(tree)} {w}x{h}" for p, (w, h) in sizes.items())
    reason = ("mask size differs from image size" if not same else "several DICOMs have the image's size")
    log.add(tree / subject, f"ROI mask of row {row.number} of {row.file.name}: {reason} {size[0]}x{size[1]} "
                            f"(found {found}); case {subject.rsplit('_', 1)[0]} skipped")
    return None


def _metadata(image: Mammogram, log: ProblemLog) -> dict:
    rows = image.abnormalities
    densities = {a.density for a in rows if a.density is not None}
    if len(densities) > 1:
        # one breast has one density; rows that disagree leave it unknown rather than guessed
        log.add(rows[0].row.file, f"rows {', '.join(str(a.row.number) for a in rows)}: breast density "
                                  f"{sorted(densities)} differs between the rows of {image.subject}; kept as missing")
    subtleties = [a.subtlety for a in rows if a.subtlety is not None]
    metadata = {
        # the CSV's side and view, checked against the subject name; a DICOM of this release
        # may lack the tags
        "laterality": image.laterality,
        "view": image.view,
        "breast_density": densities.pop() if len(densities) == 1 else None,
        "assessment": max(a.assessment for a in rows),
        "pathology": max((a.pathology for a in rows), key=PATHOLOGIES.index),
        "abnormality_type": sorted({a.kind for a in rows}),
        "subtlety": max(subtleties) if subtleties else None,
    }
    for column in DESCRIPTOR_COLUMNS:
        values = sorted({v for a in rows for v in a.descriptors.get(column, [])})
        metadata[column] = values or None
    return metadata


def _official_split(images: dict[str, Mammogram], table: pd.DataFrame) -> pd.Series:
    """Each read case's test fold in the official split: 0 training, 1 test."""
    folds = {f"{SITE}/{subject}": TEST_FOLD[image.official_set] for subject, image in images.items()}
    return pd.Series(folds, dtype=int).reindex(table["case_id"]).astype(int).rename("fold")


READERS.register("cbis_ddsm")(CbisDdsmReader())
