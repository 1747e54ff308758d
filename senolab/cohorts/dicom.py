"""DICOM images as the cohort layer needs them: display-ready 8-bit pixels and a whitelisted header.

Pixels go through the pipeline radiology viewers apply (PS3.4 N.2): the Modality LUT
(rescale slope and intercept), then the VOI LUT Sequence or the window centre/width when
the file has one, else a percentile window; MONOCHROME1 ("high = dark") is inverted after
windowing; values stay float64 until the one final mapping to 0..255. Compressed transfer
syntaxes are decoded by pydicom's plugins (pylibjpeg with -libjpeg, -openjpeg, -rle),
never here. Colour images become their luminance.

Only DICOM Part 10 files are read (a 128-byte preamble then ``DICM``, as every PACS
export and modality writes them); headerless ACR-NEMA files are "not a DICOM file".

pydicom is imported on first use, so ``senolab --help`` and PNG cohorts never load it.
"""
from __future__ import annotations

import hashlib
import math
import re
import struct
import warnings
from collections.abc import MutableSequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SUFFIXES = (".dcm", ".dicom")
MAGIC_OFFSET = 128  # the "DICM" marker follows the 128-byte preamble (PS3.10 7.1)

# The header is built by whitelisting, never by copying: these are the only DICOM keywords
# whose values leave this module. A hospital export also carries names, birth dates,
# accession numbers, institutions and dates; whatever is not listed here cannot reach a
# case table, a report or an MLflow run. PatientID is listed because it defines the
# patient (the unit of splits and of the bootstrap); read_dicom can replace it by a salted hash.
HEADER_TAGS = (
    "PixelSpacing", "ImagerPixelSpacing",  # -> pixel_spacing_mm
    "ImageLaterality", "Laterality",  # -> laterality
    "ViewPosition",  # -> view
    "Manufacturer", "ManufacturerModelName",  # -> scanner
    "Modality",  # -> modality
    "PatientID",  # -> patient_id
)

PERCENTILES = (0.5, 99.5)  # the display window of an image that states none: its tails are noise and labels


class DicomError(ValueError):
    """A DICOM file whose pixels cannot be read; the message names the problem in one line.

    A ValueError, so :data:`senolab.cohorts.imaging.READ_ERRORS` reports it per case."""


@dataclass
class DicomImage:
    """A decoded DICOM image.

    ``pixels``: uint8 HxW grayscale, ready for display and for the model.
    ``header``: ``pixel_spacing_mm`` (float, NaN when unknown), ``laterality`` ("L", "R"
    or None), ``view`` (e.g. "CC", "MLO"; None), ``scanner`` ("Manufacturer Model" or
    "unknown"), ``modality`` (e.g. "MG", "US"; None), ``patient_id`` (None when absent).
    ``windowing``: how stored values became ``pixels`` ("voi_lut", "window c=2047 w=4095",
    "percentile 0.5-99.5", ...), so a cohort can say which images were windowed how.
    """

    pixels: np.ndarray
    header: dict[str, Any]
    windowing: str


def is_dicom(path: str | Path) -> bool:
    """Whether ``path`` is named like DICOM (``.dcm``, ``.dicom``) or holds the ``DICM`` marker."""
    path = Path(path)
    if path.suffix.lower() in SUFFIXES:
        return True
    try:
        with open(path, "rb") as file:
            file.seek(MAGIC_OFFSET)
            return file.read(4) == b"DICM"
    except OSError:
        return False


def read_dicom(path: str | Path, patient_salt: str | None = None) -> DicomImage:
    """The image of a one-frame DICOM file and its whitelisted header (:class:`DicomImage`).

    With ``patient_salt``, ``patient_id`` becomes ``"anon-"`` and the first 16 hex digits
    of sha256(salt + PatientID): stable for one salt, unlinkable without it.
    Raises :class:`DicomError` for a file that is not DICOM, is truncated, has no pixel
    data, several frames, or a transfer syntax no installed decoder reads.
    """
    ds = _read_dataset(path)
    try:
        pixels, windowing = _display_pixels(ds)
        return DicomImage(pixels, _header(ds, patient_salt), windowing)
    except DicomError:
        raise
    except (ValueError, TypeError, AttributeError, KeyError) as err:
        # pydicom converts an element when it is first read: a malformed value fails here
        raise DicomError(f"DICOM header value cannot be read ({_one_line(err)})") from None


def dicom_header(path: str | Path, patient_salt: str | None = None) -> dict[str, Any]:
    """The whitelisted header of :func:`read_dicom`, without reading the pixel data (a
    reader that needs a mammogram's spacing before :func:`load_cases` decodes it)."""
    ds = _read_dataset(path, stop_before_pixels=True)
    try:
        return _header(ds, patient_salt)
    except (ValueError, TypeError, AttributeError, KeyError) as err:
        raise DicomError(f"DICOM header value cannot be read ({_one_line(err)})") from None


def dicom_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from Columns and Rows, without reading the pixel data."""
    ds = _read_dataset(path, stop_before_pixels=True, specific_tags=["Rows", "Columns"])
    if "Rows" not in ds or "Columns" not in ds:
        raise DicomError("DICOM without an image size (no Rows/Columns element)")
    return int(ds.Columns), int(ds.Rows)


def salted_patient_id(patient_id: str, salt: str) -> str:
    """The pseudonym read_dicom gives ``patient_id`` under ``salt``."""
    return "anon-" + hashlib.sha256((salt + patient_id).encode()).hexdigest()[:16]


# -- reading ------------------------------------------------------------------------------


def _read_dataset(path: str | Path, **options):
    """The dataset of a Part 10 file (``options`` go to dcmread); truncation and garbage become DicomError."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    with warnings.catch_warnings(record=True) as caught:
        # pydicom warns, rather than raises, when the file ends inside an undefined-length
        # element (encapsulated pixel data or a sequence cut short): caught to call it truncated
        warnings.simplefilter("always")
        try:
            ds = dcmread(path, **options)
        except InvalidDicomError:
            raise DicomError("not a DICOM file (no 'DICM' marker after the 128-byte preamble)") from None
        except (EOFError, ValueError, struct.error) as err:
            raise DicomError(f"truncated or corrupt DICOM file ({_one_line(err)})") from None
    ended_early = [w for w in caught if "End of file" in str(w.message)]
    for other in (w for w in caught if w not in ended_early):  # pydicom's other remarks reach the user as before
        warnings.warn_explicit(other.message, other.category, other.filename, other.lineno)
    if ended_early:
        raise DicomError("truncated DICOM file (it ends inside its encapsulated pixel data or a sequence)")
    short = _cut_element(ds)
    if short:
        raise DicomError(f"truncated DICOM file ({short})")
    return ds


def _cut_element(ds) -> str | None:
    """How the file's last element falls short of its declared length, if it does.

    pydicom keeps an element that the end of the file cut in two, with the bytes it got;
    in file order the last element is the one with the highest tag."""
    if not len(ds):
        return None
    raw = ds.get_item(max(ds.keys()))  # the element as read, before any conversion
    value, length = getattr(raw, "value", None), getattr(raw, "length", None)
    if isinstance(value, bytes) and length not in (None, 0xFFFFFFFF) and len(value) < length:
        return f"element {raw.tag} holds {len(value)} of its {length} bytes"
    return None


def _display_pixels(ds) -> tuple[np.ndarray, str]:
    if "PixelData" not in ds:
        raise DicomError("DICOM without pixel data (no PixelData element)")
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise DicomError(f"multi-frame DICOM ({frames} frames) is not supported")
    _check_decoder(ds)
    stored = _decoded(ds)
    if int(ds.get("SamplesPerPixel", 1)) == 3:
        return _luminance(stored, ds), "luminance"
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomError(f"DICOM photometric interpretation {photometric or '(none)'} is not supported")
    pixels, windowing = _windowed(stored, ds)
    if photometric == "MONOCHROME1":
        pixels = 255 - pixels  # after windowing: the window is stated on the stored values
    return pixels, windowing


def _check_decoder(ds) -> None:
    """Refuse, by name, a transfer syntax that no installed plugin decodes.

    Asked of pydicom before decoding, so the message does not depend on the wording of
    the error each pydicom version raises."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    uid = UID(str(ds.file_meta.get("TransferSyntaxUID", "")))
    if not uid:
        raise DicomError("DICOM without a transfer syntax (no TransferSyntaxUID in its file meta)")
    try:
        available = get_decoder(uid).is_available
    except NotImplementedError:  # pydicom has no decoder at all for this syntax
        available = False
    if not available:
        name = uid.name if uid.name != str(uid) else "unknown transfer syntax"
        raise DicomError(f"DICOM transfer syntax {uid} ({name}) cannot be decoded: "
                         "no installed decoder (pylibjpeg-libjpeg / -openjpeg / -rle)")


def _decoded(ds) -> np.ndarray:
    try:
        return ds.pixel_array  # colour comes back as RGB, whatever YBR form it was stored in
    except Exception as err:  # noqa: BLE001 - whatever a decoder plugin raises, this file cannot be read
        raise DicomError(f"DICOM pixel data cannot be decoded ({type(err).__name__}: {_one_line(err)})") from None


def _luminance(rgb: np.ndarray, ds) -> np.ndarray:
    """The Y of YCbCr (ITU-R BT.601, as PIL's "L" of a PNG), by pydicom's colour conversion."""
    from pydicom.pixels import convert_color_space

    if rgb.dtype != np.uint8:
        raise DicomError(f"colour DICOM with {ds.BitsAllocated} bits per sample is not supported (8 bits are)")
    return convert_color_space(rgb, "RGB", "YBR_FULL")[..., 0].copy()


def _windowed(stored: np.ndarray, ds) -> tuple[np.ndarray, str]:
    """Stored values -> uint8 through the Modality LUT and the file's VOI (or a percentile window)."""
    from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing

    values = apply_modality_lut(stored, ds)
    if _has_voi_lut(ds):
        # LUT entries are indexed by integers; a rescale can leave integral floats
        lut_input = values if np.issubdtype(values.dtype, np.integer) else np.rint(values).astype(np.int64)
        low, high = _voi_lut_range(ds)
        return _to_uint8(apply_voi(lut_input, ds).astype(np.float64), low, high), "voi_lut"
    if "WindowCenter" in ds and "WindowWidth" in ds:
        low, high = _window_range(ds)
        out = apply_windowing(values.astype(np.float64), ds)
        return _to_uint8(out, low, high), _window_name(ds)
    if values.dtype == np.uint8:
        # 8-bit stored values without a Modality LUT are display values already (as a PNG's)
        return values.copy(), "none (8-bit stored values)"
    values = values.astype(np.float64)
    low, high = np.percentile(values, PERCENTILES)
    return _to_uint8(values, low, high), f"percentile {PERCENTILES[0]:g}-{PERCENTILES[1]:g}"


def _has_voi_lut(ds) -> bool:
    """As pydicom's apply_voi_lut decides: a VOI LUT Sequence whose first item has its LUT."""
    items = ds.get("VOILUTSequence")
    return bool(items) and "LUTDescriptor" in items[0] and "LUTData" in items[0]


def _voi_lut_range(ds) -> tuple[float, float]:
    """The lowest and highest entry of the VOI LUT: its output range, which maps to black and white.

    Read through pydicom's own lookup (the LUT data may be US or OW, either endianness)."""
    from pydicom.pixels import apply_voi

    entries, first = ds.VOILUTSequence[0].LUTDescriptor[:2]
    lut = apply_voi(np.arange(first, first + (entries or 65536)), ds)
    return float(lut.min()), float(lut.max())


def _window_range(ds) -> tuple[float, float]:
    """The output range of the window function (its values far below and far above the window).

    pydicom sets it from the bits stored and the rescale; probing keeps its rules in one place."""
    from pydicom.pixels import apply_windowing

    with np.errstate(over="ignore"):  # the SIGMOID function at +-1e300
        ends = apply_windowing(np.array([-1e300, 1e300]), ds)
    return float(ends.min()), float(ends.max())


def _window_name(ds) -> str:
    centre, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
    function = str(ds.get("VOILUTFunction") or "LINEAR").upper()
    return f"window c={float(centre):g} w={float(width):g}" + ("" if function == "LINEAR" else f" {function.lower()}")


def _to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """``low`` -> 0 and ``high`` -> 255, linearly, clipped; a flat range maps to 0."""
    scale = 255.0 / (high - low) if high > low else 0.0
    return np.clip(np.rint((values - low) * scale), 0, 255).astype(np.uint8)


# -- header -------------------------------------------------------------------------------


def _header(ds, patient_salt: str | None) -> dict[str, Any]:
    """The case-table fields, each from the :data:`HEADER_TAGS` only."""
    patient_id = _text(ds, "PatientID")
    if patient_id is not None and patient_salt is not None:
        patient_id = salted_patient_id(patient_id, patient_salt)
    laterality = _text(ds, "ImageLaterality") or _text(ds, "Laterality")
    scanner = " ".join(filter(None, (_text(ds, "Manufacturer"), _text(ds, "ManufacturerModelName"))))
    return {
        "pixel_spacing_mm": _spacing(ds),
        "laterality": laterality.upper() if laterality and laterality.upper() in ("L", "R") else None,
        "view": _text(ds, "ViewPosition"),
        "scanner": scanner or "unknown",
        "modality": _text(ds, "Modality"),
        "patient_id": patient_id,
    }


def _spacing(ds) -> float:
    """mm per pixel: PixelSpacing (calibrated at the patient), else ImagerPixelSpacing (at the detector).

    Both hold (row spacing, column spacing). The case table has one spacing per image, so
    non-square pixels (rare in mammography and ultrasound) get the mean of the two."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        try:
            values = [float(v) for v in ds.get(keyword) or []]
        except (TypeError, ValueError):  # a malformed value is as good as none
            continue
        if len(values) == 2 and all(math.isfinite(v) and v > 0 for v in values):
            return sum(values) / 2
    return float("nan")


def _text(ds, keyword: str) -> str | None:
    value = ds.get(keyword)
    text = str(_first(value)).strip() if value not in (None, "") else ""
    return text or None


def _first(value):
    """The first of a multi-valued element (WindowCenter may list several windows)."""
    return value[0] if isinstance(value, MutableSequence) else value


def _one_line(err: Exception) -> str:
    return re.sub(r"\s+", " ", str(err)).strip()
