"""BUSI (Baheya Hospital, Cairo; Al-Dhabyani et al., Data in Brief 2020).

Layout: ``Dataset_BUSI_with_GT/{benign,malignant,normal}/<name>.png`` with
``<name>_mask.png`` and, for a second or third lesion, ``<name>_mask_1.png`` ... The class
comes from the folder. BUSI has no patient identifiers, so each image is its own patient;
its near-duplicates are grouped later by :mod:`senolab.cohorts.dedup`.
"""
from __future__ import annotations

import re
from pathlib import Path

from senolab.cohorts.imaging import load_mask
from senolab.cohorts.readers import READERS
from senolab.cohorts.readers.base import CaseFiles, ProblemLog, load_cases, not_a_file, read_pixels
from senolab.cohorts.schema import LABELS, Cohort, CohortError

FOLDER = "Dataset_BUSI_with_GT"
MASK_RE = re.compile(r"^(?P<name>.+)_mask(?:_\d+)?\.png$")


class BusiReader:
    name = "busi"
    layout = f"{FOLDER}/{{benign,malignant,normal}}/<name>.png with <name>_mask[_k].png"

    def detect(self, root: Path) -> bool:
        return _class_root(root) is not None

    def read(self, root: Path, strict: bool = False, progress: bool = True) -> Cohort:
        base = _class_root(root)
        if base is None:
            raise CohortError(f"{root}: not a BUSI folder; expected {self.layout}")
        log = ProblemLog(self.name, strict)
        cases = [case for label in LABELS for case in _cases_in(base / label, label, log)]
        table = load_cases(cases, log, progress)
        return Cohort(self.name, table, {}, {}, log.problems, root).validate()


def _class_root(root: Path) -> Path | None:
    for base in (root / FOLDER, root):
        if all((base / label).is_dir() for label in LABELS):
            return base
    return None


def _cases_in(folder: Path, label: str, log: ProblemLog) -> list[CaseFiles]:
    files = [p for p in sorted(folder.iterdir()) if p.suffix.lower() == ".png" and _is_file(p, log)]
    images = {p.stem: p for p in files if not MASK_RE.match(p.name)}
    masks: dict[str, list[Path]] = {}
    for p in files:
        match = MASK_RE.match(p.name)
        if match:
            masks.setdefault(match["name"], []).append(p)
    for orphan in sorted(set(masks) - set(images)):
        for p in masks[orphan]:
            log.add(p, "mask without its image")
    cases = []
    for stem, image in images.items():
        lesion_masks = sorted(masks.get(stem, []), key=_mask_order)
        if label == "normal":
            _check_empty(lesion_masks, log)
            lesion_masks = []  # normal images ship an all-zero mask: no lesion
        elif not lesion_masks:
            log.add(image, f"{label} image without a lesion mask")
            continue
        case_id = f"busi/{label}/{stem}"
        cases.append(
            CaseFiles(case_id, case_id, image, label, site="busi", scanner="LOGIQ E9", mask_paths=lesion_masks)
        )
    return cases


def _is_file(path: Path, log: ProblemLog) -> bool:
    # a folder or symlink loop named like an image is reported as what it is, not as an
    # image without its mask
    problem = not_a_file(path, "mask" if MASK_RE.match(path.name) else "image")
    if problem:
        log.add(path, problem)
    return problem is None


def _mask_order(path: Path) -> tuple[int, str]:
    # "<name>_mask.png" first, then "_mask_1", "_mask_2": the listed order of the lesions.
    suffix = path.stem.rsplit("_mask", 1)[1]
    return (int(suffix[1:]) if suffix else 0, path.name)


def _check_empty(paths: list[Path], log: ProblemLog) -> None:
    for p in paths:
        mask = read_pixels(p, "mask", load_mask, log)
        if mask is not None and mask.any():
            log.add(p, "normal image whose mask is not empty (kept as normal, mask ignored)")


READERS.register("busi")(BusiReader())
