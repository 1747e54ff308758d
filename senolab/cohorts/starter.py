"""A starter case manifest for a folder tree, for the user to edit (``senolab cohorts manifest``).

The tree's conventions give what they can: a class sub-folder named ``normal``, ``benign``
or ``malignant`` (any case, at any depth) gives the label; ``<name>_mask*.<ext>`` files
are the lesion masks of ``<name>.<ext>`` in the same folder; a DICOM header gives the
modality, laterality, view, scanner and pixel spacing, and its PatientID the patient
(written as ``dicom``). Every other image is assumed to be its own patient (its stem), which
the user must correct for a cohort with several images per patient: a patient on both sides
of a split inflates every result. The reader (:mod:`senolab.cohorts.readers.manifest`)
reads what this writes.
"""
from __future__ import annotations

import csv
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from senolab.cohorts.readers.manifest import CSV, JSON, PATIENT_FROM_DICOM, SIDECAR, default_name
from senolab.cohorts.schema import LABELS
from senolab.errors import InputError
from senolab.paths import require_folder

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pgm", ".tif", ".tiff", ".bmp", ".dcm")
MASK_RE = re.compile(r"^(?P<name>.+)_mask[^/]*$")  # the stem of a mask file: <name>_mask, <name>_mask_1 ...
COLUMNS = ("image", "mask", "label", "patient", "site", "scanner", "modality", "laterality", "view",
           "pixel_spacing_mm")
FROM_HEADER = ("scanner", "modality", "laterality", "view", "pixel_spacing_mm")


@dataclass
class Starter:
    """What :func:`write_starter` wrote and what the user should look at."""

    manifest: Path
    sidecar: Path
    rows: list[dict] = field(default_factory=list)
    orphan_masks: list[str] = field(default_factory=list)
    unreadable_dicom: list[str] = field(default_factory=list)

    def summary(self, folder: Path) -> str:
        """What was written and what to edit next, as the command prints it."""
        labels = Counter(row["label"] or "(none)" for row in self.rows)
        n_masks = sum(1 for row in self.rows if row["mask"])
        n_dicom = sum(1 for row in self.rows if row["image"].lower().endswith(".dcm"))
        counts = ", ".join(f"{labels[k]} {k}" for k in (*LABELS, "(none)") if labels[k])
        from_dicom = "; DICOM: its PatientID" if n_dicom else ""
        lines = [f"wrote {self.manifest} ({len(self.rows)} images: {counts}; {n_masks} with masks; {n_dicom} DICOM)",
                 f"wrote {self.sidecar}",
                 "edit next:",
                 f"  - patient: one patient per image is assumed (the image's stem{from_dicom});"
                 " give images of one woman the same patient, or splits leak",
                 "  - site, scanner: one site per cohort is assumed; a multi-site study needs its sites in column"
                 " 'site'",
                 f"  - metadata: add columns to {self.manifest.name} and declare each under 'columns:' in {SIDECAR}"]
        if labels["(none)"]:
            lines.append(f"  - label: {labels['(none)']} images are in no normal/benign/malignant folder;"
                         " fill their label")
        for mask in self.orphan_masks[:5]:
            lines.append(f"  - {mask}: a mask file without its image; not listed")
        for image in self.unreadable_dicom[:5]:
            lines.append(f"  - {image}: DICOM header unreadable; fill modality, patient etc. by hand")
        lines.append(f"then: senolab cohorts describe {folder}")
        return "\n".join(lines)


def write_starter(folder: str | Path, out: str | Path | None = None, force: bool = False) -> Starter:
    """Write a starter manifest (``FOLDER/manifest.csv``, or ``out``: a ``manifest.csv`` or
    ``manifest.json`` in FOLDER or a folder above it) and its sidecar next to it."""
    folder = require_folder(folder, "image folder")
    manifest = Path(out) if out is not None else folder / CSV
    _check_target(folder, manifest, force)
    base = manifest.parent
    images, masks, orphans = _find_files(folder)
    name = default_name(base)
    starter = Starter(manifest, base / SIDECAR, orphan_masks=[_relative(p, base) for p in orphans])
    stems = Counter(image.stem for image in images)
    for image in images:
        row = _row(image, masks.get(image, []), base, folder, stems, starter)
        starter.rows.append(row)
    _write_table(manifest, starter.rows)
    starter.sidecar.write_text(_sidecar_text(name))
    return starter


def _check_target(folder: Path, manifest: Path, force: bool) -> None:
    if manifest.name not in (CSV, JSON):
        raise InputError(f"{manifest}: --out must be named {CSV} or {JSON} (the names the reader detects)")
    if not folder.resolve().is_relative_to(manifest.parent.resolve()):
        raise InputError(f"{manifest}: must be in {folder} or a folder above it (manifest paths may not leave "
                         "the manifest's folder)")
    existing = [p for p in (manifest.parent / CSV, manifest.parent / JSON, manifest.parent / SIDECAR) if p.exists()]
    if existing and not force:
        raise InputError(f"{existing[0]} exists; not overwritten (--force replaces it)")
    for path in existing:  # --force: a stale manifest of the other format would make the folder ambiguous
        path.unlink()


def _find_files(folder: Path) -> tuple[list[Path], dict[Path, list[Path]], list[Path]]:
    """The images, each image's masks, and masks whose image is absent."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    by_stem = {(p.parent, p.stem): p for p in files if not MASK_RE.match(p.stem)}
    masks: dict[Path, list[Path]] = {}
    orphans = []
    for path in files:
        match = MASK_RE.match(path.stem)
        if not match:
            continue
        image = by_stem.get((path.parent, match["name"]))
        if image is None:
            orphans.append(path)
        else:
            masks.setdefault(image, []).append(path)
    return list(by_stem.values()), masks, orphans


def _row(image: Path, masks: list[Path], base: Path, folder: Path, stems: Counter, starter: Starter) -> dict:
    relative = _relative(image, base)
    row = dict.fromkeys(COLUMNS, "")
    row["image"] = relative
    row["mask"] = ";".join(_relative(m, base) for m in masks)
    row["label"] = _label(image.relative_to(folder))
    # one patient per image: the stem, or the path where two images share a stem
    row["patient"] = image.stem if stems[image.stem] == 1 else str(Path(relative).with_suffix(""))
    if image.suffix.lower() == ".dcm":
        header = _dicom_header(image)
        if header is None:
            starter.unreadable_dicom.append(relative)
        else:
            row.update({key: _text(header.get(key)) for key in FROM_HEADER})
            if header.get("patient_id"):
                row["patient"] = PATIENT_FROM_DICOM
    return row


def _label(relative: Path) -> str:
    """The class of the nearest enclosing class folder; "" when there is none."""
    for part in reversed(relative.parent.parts):
        if part.lower() in LABELS:
            return part.lower()
    return ""


def _dicom_header(path: Path) -> dict | None:
    from senolab.cohorts.dicom import DicomError, read_dicom
    from senolab.cohorts.imaging import READ_ERRORS

    try:
        return read_dicom(path).header
    except (DicomError, *READ_ERRORS):
        return None


def _text(value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _relative(path: Path, base: Path) -> str:
    return path.resolve().relative_to(base.resolve()).as_posix()


def _write_table(path: Path, rows: list[dict]) -> None:
    if path.name == JSON:
        listed = [{k: (v.split(";") if k == "mask" and v else v) for k, v in row.items() if v} for row in rows]
        path.write_text(json.dumps(listed, indent=1) + "\n")
        return
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _sidecar_text(name: str) -> str:
    return f"""\
# The sidecar of manifest.csv / manifest.json, read by `senolab cohorts describe` and every command
# that reads this folder (docs/contracts.md#manifest).
# edit patient: one patient per image assumed (images of one woman must share a patient).
name: {name}
modality: US  # of the rows whose modality cell (and DICOM header) is empty: US, MG or MR
# Declare each metadata column of the manifest here; an undeclared column is ignored. Kinds:
#   age:      {{kind: numeric, unit: years, range: [18, 100]}}
#   density:  {{kind: ordinal, levels: [A, B, C, D]}}
#   shape:    {{kind: categorical, levels: [oval, round, irregular]}}
#   symptoms: {{kind: multi, levels: [pain, lump, discharge], separator: "&"}}
#   birads:   {{kind: ordinal, levels: ["2", "3", "4", "5"], outcome: true}}  # never a model input unless opted in
columns: {{}}
# dicom: {{patient_salt: "a secret"}}  # replaces each DICOM PatientID by its salted hash
"""
