"""What runs in an extraction worker: decode a case once, run pyradiomics on each lesion.

Where the time goes, and what is done about it (see benchmarks/radiomics_throughput.py):
- pyradiomics' extractor validates its parameters with pykwalify when it is built: it is
  built once per worker (:func:`init_worker`), not once per lesion.
- SimpleITK filters inside pyradiomics (cast, label statistics, crop) split every call
  across ITK's threads; on these small 2D images the hand-over costs more than it saves
  (single-threaded, pyradiomics took 20-55% less time per BUSI lesion, the less the
  busier the machine), and the threads would compete with the other worker processes.
  Workers run ITK single-threaded.
- pyradiomics logs at INFO for every feature class; its logger is raised to WARNING, so
  the records are not even created.
- An image is decoded once per case, however many lesions it has.
- When the features depend only on the lesion's bounding box (the default parameters:
  original image, no normalisation or resampling; see
  :func:`senolab.radiomics.parameters.lesion_box_suffices`), image and mask are cropped
  to that box before pyradiomics sees them: pyradiomics crops to the same box itself, so
  only the work on the rest of the image (casts, label statistics) is saved.
The values are pyradiomics' own: nothing here changes what is computed (the golden tests
and the benchmark compare every feature with a direct pyradiomics call).
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from senolab._optional import require
from senolab.cohorts.imaging import READ_ERRORS, bbox_from_mask, load_gray, load_mask
from senolab.radiomics.parameters import lesion_box_suffices

# A pixel source: a file path, or an array for in-memory (synthetic) cohorts.
Source = str | np.ndarray


@dataclass
class LesionJob:
    """One lesion of a case still to compute, with the cache key its result goes under."""

    lesion: int
    mask: Source
    key: str


@dataclass
class CaseTask:
    """The lesions of one image still to compute. ``spacing_mm`` is already resolved."""

    case_id: str
    image: Source
    spacing_mm: float
    lesions: list[LesionJob] = field(default_factory=list)


@dataclass
class Outcome:
    """The result for one lesion: features, or the reason there are none."""

    case_id: str
    lesion: int
    key: str
    features: dict[str, float] | None
    error: str | None


# Set once per worker process by init_worker.
_EXTRACTOR = None
_CROP_TO_LESION = False


def init_worker(params: dict[str, Any]) -> None:
    """Pool initializer: quiet, single-threaded pyradiomics with one extractor."""
    global _EXTRACTOR, _CROP_TO_LESION
    quiet_single_threaded()
    _EXTRACTOR = build_extractor(params)
    _CROP_TO_LESION = lesion_box_suffices(params)


def build_extractor(params: dict[str, Any]):
    featureextractor = require("radiomics.featureextractor")
    return featureextractor.RadiomicsFeatureExtractor(params)


def quiet_single_threaded() -> None:
    """Silence pyradiomics below WARNING and run SimpleITK on one thread (see module doc)."""
    require("radiomics")
    sitk = require("SimpleITK")
    logging.getLogger("radiomics").setLevel(logging.WARNING)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


@contextmanager
def in_process(params: dict[str, Any]) -> Iterator[None]:
    """Run extraction in this process (``jobs=1``) and restore its ITK and logging state."""
    global _EXTRACTOR, _CROP_TO_LESION
    sitk = require("SimpleITK")
    logger = logging.getLogger("radiomics")
    threads, level = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(), logger.level
    init_worker(params)
    try:
        yield
    finally:
        _EXTRACTOR, _CROP_TO_LESION = None, False
        logger.setLevel(level)
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def run_case(task: CaseTask) -> list[Outcome]:
    """Decode the image once and extract every pending lesion; failures become outcomes."""
    try:
        image = _read(task.image, load_gray)
    except READ_ERRORS as err:
        return [_failed(task, job, f"image read: {_describe(err)}") for job in task.lesions]
    outcomes = []
    for job in task.lesions:
        try:
            mask = _read(job.mask, load_mask)
        except READ_ERRORS as err:
            outcomes.append(_failed(task, job, f"mask read: {_describe(err)}"))
            continue
        if mask.shape != image.shape:
            sizes = f"mask size {mask.shape[::-1]} differs from image size {image.shape[::-1]}"
            outcomes.append(_failed(task, job, sizes))
            continue
        pixels, lesion = lesion_box(image, mask) if _CROP_TO_LESION else (image, mask)
        try:
            features = execute(_EXTRACTOR, to_itk_image(pixels, task.spacing_mm), to_itk_mask(lesion, task.spacing_mm))
        except Exception as err:  # pyradiomics raises ValueError, IndexError, RuntimeError...
            outcomes.append(_failed(task, job, f"pyradiomics: {_describe(err)}"))
            continue
        outcomes.append(Outcome(task.case_id, job.lesion, job.key, features, None))
    return outcomes


def lesion_box(image: np.ndarray, mask: np.ndarray, margin: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Image and mask cropped to the mask's bounding box plus ``margin`` pixels.

    The margin changes no value (pyradiomics crops to the box itself) but keeps a
    one-pixel lesion from becoming a 1x1 image, which pyradiomics reports as an empty mask
    instead of a single voxel. An empty mask is returned whole, for pyradiomics to report.
    """
    box = bbox_from_mask(mask)
    if box is None:
        return image, mask
    height, width = mask.shape
    x0, y0 = max(box[0] - margin, 0), max(box[1] - margin, 0)
    x1, y1 = min(box[2] + margin, width), min(box[3] + margin, height)
    return image[y0:y1, x0:x1], mask[y0:y1, x0:x1]


def to_itk_image(image: np.ndarray, spacing_mm: float):
    """A true 2D SimpleITK image of float64 grey levels with isotropic ``spacing_mm``.

    2D, not a one-slice volume: pyradiomics then works in-plane by itself, and its 2D LoG
    filter runs (it skips volumes thinner than 4 slices).

    float64, not uint8: pyradiomics' binning adds two bin widths to the maximum grey level,
    which overflows uint8 (255 + 16) and breaks the GLCM; float64 holds 0..255 exactly.
    """
    sitk = require("SimpleITK")
    itk = sitk.GetImageFromArray(np.asarray(image, dtype=np.float64))
    itk.SetSpacing((spacing_mm, spacing_mm))
    return itk


def to_itk_mask(mask: np.ndarray, spacing_mm: float):
    """A 2D SimpleITK label map: 1 inside the lesion, 0 elsewhere."""
    sitk = require("SimpleITK")
    itk = sitk.GetImageFromArray(np.asarray(mask, dtype=np.uint8))
    itk.SetSpacing((spacing_mm, spacing_mm))
    return itk


def execute(extractor, image_itk, mask_itk) -> dict[str, float]:
    """pyradiomics' features as floats, without its ``diagnostics_*`` entries."""
    result = extractor.execute(image_itk, mask_itk)
    return {name: float(value) for name, value in result.items() if not name.startswith("diagnostics_")}


def _read(source: Source, loader) -> np.ndarray:
    return source if isinstance(source, np.ndarray) else loader(source)


def _failed(task: CaseTask, job: LesionJob, reason: str) -> Outcome:
    return Outcome(task.case_id, job.lesion, job.key, None, reason)


def _describe(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")
