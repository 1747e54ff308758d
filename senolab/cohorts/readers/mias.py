"""mini-MIAS (Mammographic Image Analysis Society, UK; Suckling et al. 1994): digitised
screen-film mammograms, MLO views, 1024 x 1024 pixels of 200 microns in the official release.

Layout: ``all-mias/mdbNNN.pgm`` and ``all-mias/Info.txt`` (the folder ``all-mias`` itself
may be the root). Info.txt has one line per abnormality, ``reference tissue class
[severity [x y radius]]``; a normal image has one ``NORM`` line. Facts of the database's
own README that this reader follows:

- the files come in pairs, one woman each: the even number is the left breast, the odd
  number the right (mdb001 and mdb002 are one woman: patient ``(n + 1) // 2``);
- the origin of x, y is the BOTTOM-left corner: the pixel row is ``height - y``;
- centres and radii are approximate circles around an abnormality, not outlines: they
  become ``mask_kind="circle"`` lesions stored as their (possibly out-of-image) boxes;
- calcifications spread over the whole image have no centre or radius (``*NOTE 3*``, or
  nothing after the severity): such an image is abnormal but unlocated (``mask_kind="none"``);
- several lines of one reference are several abnormalities of one image: one case.

x, y and the radius are in the official 1024-pixel grid; a ``derived_manifest.csv`` next
to ``all-mias`` (a resized copy) rescales them, and the 0.2 mm pixel, by ``width / orig_width``.
mini-MIAS ships no official split, so none is made up here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from senolab.cohorts.readers import READERS
from senolab.cohorts.readers.base import CaseFiles, Manifest, ProblemLog, load_cases
from senolab.cohorts.schema import Cohort, CohortError, Column, Kind

FOLDER = "all-mias"
INFO = "Info.txt"
REFERENCE = re.compile(r"^mdb(\d{3})$")
TISSUES = ("F", "G", "D")  # fatty < fatty-glandular < dense-glandular: the order of density
CLASSES = ("CALC", "CIRC", "SPIC", "MISC", "ARCH", "ASYM", "NORM")
NORMAL = "NORM"
SEVERITIES = ("B", "M")
UNLOCATED_NOTE = "*NOTE"  # "*NOTE 3*": the README's note 3, calcifications spread over the image
FIELDS = ("reference", "tissue", "class", "severity", "x", "y", "radius")
ORIGINAL_SIZE = 1024  # every official image is 1024 x 1024 (README note 2)
ORIGINAL_SPACING_MM = 0.2
SCANNER = "digitised screen film"

COLUMNS = {
    "laterality": Column("laterality", Kind.CATEGORICAL, ("L", "R"),
                         description="breast side, from the file number (even left, odd right)"),
    "view": Column("view", Kind.CATEGORICAL, ("CC", "MLO"), description="mammographic view (MLO for every image)"),
    "background_tissue": Column("background_tissue", Kind.ORDINAL, TISSUES,
                             description="background tissue: F fatty, G fatty-glandular, D dense-glandular"),
    "abnormality": Column("abnormality", Kind.MULTI, CLASSES, outcome=True,
                          description="class of each abnormality (NORM for a normal image)"),
    "severity": Column("severity", Kind.CATEGORICAL, SEVERITIES, outcome=True,
                       description="B benign, M malignant (M when any abnormality is); missing when normal"),
}


@dataclass(frozen=True)
class InfoRow:
    """One typed line of Info.txt."""

    line: int
    reference: str
    tissue: str
    kind: str  # the abnormality class
    severity: str | None
    circle: tuple[float, float, float] | None  # x, y, radius in the official grid; None when unlocated


class MiasReader:
    name = "mias"
    layout = f"{FOLDER}/mdbNNN.pgm and {FOLDER}/{INFO}"

    def detect(self, root: Path) -> bool:
        return _base(root) is not None

    def read(self, root: Path, strict: bool = False, progress: bool = True) -> Cohort:
        base = _base(root)
        if base is None:
            raise CohortError(f"{root}: not a mini-MIAS folder; expected {self.layout}")
        log = ProblemLog(self.name, strict)
        info = base / INFO
        by_image, bad = _read_info(info, log)
        _report_images_without_rows(base, set(by_image) | bad, log)
        manifest_root = base.parent if (base.parent / "derived_manifest.csv").is_file() else base
        manifest = Manifest(manifest_root)
        cases = [case for reference, rows in by_image.items() if reference not in bad
                 if (case := _case(base, reference, rows, info, manifest, manifest_root, log))]
        table = load_cases(cases, log, progress)
        return Cohort(self.name, table, dict(COLUMNS), {}, log.problems, root).validate()


def _base(root: Path) -> Path | None:
    for base in (root / FOLDER, root):
        if (base / INFO).is_file() and (base.name == FOLDER or any(base.glob("mdb*.pgm"))):
            return base
    return None


def _read_info(info: Path, log: ProblemLog) -> tuple[dict[str, list[InfoRow]], set[str]]:
    """The typed rows of each reference, and the references with a bad line (reported;
    the whole image is skipped, since a dropped abnormality would change its label)."""
    try:
        text = info.read_text(encoding="ascii")
    except (UnicodeDecodeError, OSError) as err:
        raise CohortError(f"{info}: not a readable Info.txt ({type(err).__name__}); expected ASCII text") from None
    by_image: dict[str, list[InfoRow]] = {}
    bad: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        reference = line.split()[0]
        row = _parse_line(line, number, info, log)
        if row is None:
            bad.add(reference)
        else:
            by_image.setdefault(row.reference, []).append(row)
    if not by_image and not bad:
        raise CohortError(f"{info}: holds no rows; expected lines 'mdbNNN tissue class [severity x y radius]'")
    for reference, rows in by_image.items():
        if reference not in bad and not _rows_agree(rows, info, log):
            bad.add(reference)
    return by_image, bad


def _parse_line(line: str, number: int, info: Path, log: ProblemLog) -> InfoRow | None:
    """One line as an :class:`InfoRow`, or None after reporting its first bad field."""
    fields = line.split()

    def report(field: str, value: str, reason: str) -> None:
        log.add(info, f"line {number}, field {field!r}: {value!r} {reason}; image {fields[0]} skipped")

    if not REFERENCE.match(fields[0]):
        report("reference", fields[0], "is not mdbNNN")
        return None
    if len(fields) < 3:
        log.add(info, f"line {number}: {len(fields)} fields, expected at least 3 (reference tissue class); "
                      f"image {fields[0]} skipped")
        return None
    reference, tissue, kind, rest = fields[0], fields[1], fields[2], fields[3:]
    for field, value, levels in (("tissue", tissue, TISSUES), ("class", kind, CLASSES)):
        if value not in levels:
            report(field, value, f"is not one of {levels}")
            return None
    if kind == NORMAL:
        if rest:
            log.add(info, f"line {number}: a NORM line has 3 fields, this one {len(fields)}; image {reference} skipped")
            return None
        return InfoRow(number, reference, tissue, kind, None, None)
    if not rest:
        report("severity", "", f"is missing; an abnormality needs one of {SEVERITIES}")
        return None
    severity, coordinates = rest[0], rest[1:]
    if severity not in SEVERITIES:
        report("severity", severity, f"is not one of {SEVERITIES}")
        return None
    if not coordinates or " ".join(coordinates).startswith(UNLOCATED_NOTE):
        return InfoRow(number, reference, tissue, kind, severity, None)
    if len(coordinates) != 3:
        log.add(info, f"line {number}: {len(fields)} fields, expected 4 (no location) or 7 "
                      f"(reference tissue class severity x y radius); image {reference} skipped")
        return None
    circle = []
    for field, value in zip(FIELDS[4:], coordinates):
        number_value = _number(value)
        low_ok = number_value is not None and (number_value > 0 if field == "radius" else number_value >= 0)
        if number_value is None or not low_ok or (field != "radius" and number_value > ORIGINAL_SIZE):
            kind_of = "a positive number" if field == "radius" else f"a number from 0 to {ORIGINAL_SIZE}"
            report(field, value, f"is not {kind_of}")
            return None
        circle.append(number_value)
    return InfoRow(number, reference, tissue, kind, severity, tuple(circle))


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value == value and abs(value) != float("inf") else None


def _rows_agree(rows: list[InfoRow], info: Path, log: ProblemLog) -> bool:
    """The lines of one image describe one film: one tissue, and NORM only on its own."""
    first = rows[0]
    for row in rows[1:]:
        if row.tissue != first.tissue:
            log.add(info, f"line {row.line}, field 'tissue': {row.tissue!r} differs from {first.tissue!r} "
                          f"on line {first.line} of the same image; image {row.reference} skipped")
            return False
    if len(rows) > 1 and any(row.kind == NORMAL for row in rows):
        lines = ", ".join(str(row.line) for row in rows)
        log.add(info, f"lines {lines}: image {first.reference} is both NORM and abnormal; image skipped")
        return False
    return True


def _report_images_without_rows(base: Path, listed: set[str], log: ProblemLog) -> None:
    for image in sorted(base.glob("mdb*.pgm")):
        if image.stem not in listed:
            log.add(image, f"image without its row in {INFO}")


def _case(base: Path, reference: str, rows: list[InfoRow], info: Path, manifest: Manifest, manifest_root: Path,
          log: ProblemLog) -> CaseFiles | None:
    image = base / f"{reference}.pgm"
    if not image.is_file():
        log.add(info, f"line {rows[0].line}: reference {reference} has no file {FOLDER}/{image.name}; image skipped")
        return None
    number = int(REFERENCE.match(reference)[1])
    scale = manifest.scale(image.relative_to(manifest_root).as_posix())
    abnormal = [row for row in rows if row.kind != NORMAL]
    # An image holding both a benign and a malignant abnormality (mdb144) is malignant:
    # the image-level question is whether it shows a cancer.
    severity = ("M" if any(row.severity == "M" for row in abnormal) else "B") if abnormal else None
    # One unlocated abnormality makes the image a label-only case: circles around the
    # others would teach "no lesion" where the unlocated calcifications lie.
    located = all(row.circle is not None for row in abnormal)
    return CaseFiles(
        case_id=f"mias/{reference}",
        patient_id=f"mias/{(number + 1) // 2:03d}",
        image_path=image,
        label={None: "normal", "B": "benign", "M": "malignant"}[severity],
        site="mias",
        scanner=SCANNER,
        modality="MG",
        mask_kind="circle" if located else "none",
        pixel_spacing_mm=ORIGINAL_SPACING_MM / scale,
        boxes=[_circle_box(row.circle, scale) for row in abnormal] if located else [],
        metadata={
            "laterality": "L" if number % 2 == 0 else "R",
            "view": "MLO",
            "background_tissue": rows[0].tissue,
            "abnormality": sorted({row.kind for row in rows}),
            "severity": severity,
        },
    )


def _circle_box(circle: tuple[float, float, float], scale: float) -> list[float]:
    """The circle's xyxy box in the stored image's pixels: the origin moves from the bottom
    left to the top left (row = height - y), all three values scale to the stored grid.
    Not clipped: a circle may reach past the border, and its box keeps its true centre."""
    x, y, radius = circle
    cx, cy, r = x * scale, (ORIGINAL_SIZE - y) * scale, radius * scale
    return [cx - r, cy - r, cx + r, cy + r]


READERS.register("mias")(MiasReader())
