"""Real DICOM files for tests, built with pydicom: mammography-like images and broken ones.

Import from a test as ``from dicom_builders import mammogram_dicom`` (pytest puts
``tests/`` on the import path, as for ``conftest``). Every file is a complete DICOM Part 10
file (preamble, ``DICM``, file meta), as a PACS export writes it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filereader import dcmread
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

DIGITAL_MAMMOGRAPHY = UID("1.2.840.10008.5.1.4.1.1.1.2")  # Digital Mammography X-Ray Image Storage - For Presentation

# What a hospital export carries besides the image: none of these values may ever leave
# senolab.cohorts.dicom (tests search every output for them).
IDENTIFYING = {
    "PatientName": "Doe^Jane",
    "PatientBirthDate": "19610412",
    "AccessionNumber": "ACC-7741203",
    "InstitutionName": "Saint Example Hospital",
    "InstitutionAddress": "12 Harbour Road, Exampleton",
    "ReferringPhysicianName": "Smith^John",
    "StudyDate": "20190305",
    "OtherPatientIDs": "MRN-55120",
}

VOI_LUT_GAMMA = 0.5  # the VOI LUT the builder writes: out = max * (in / in_max) ** 0.5


def mammogram_dicom(path: str | Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int = 12,
                    window: tuple[float, float] | None = None, voi_lut: bool = False, laterality: str | None = "L",
                    view: str | None = "CC", spacing: tuple[float, float] | None = (0.1, 0.1),
                    imager_spacing: bool = False, manufacturer: str | None = "Acme", model: str | None = "M1",
                    patient_id: str | None = "P1", identifying: bool = True,
                    transfer_syntax: str = ExplicitVRLittleEndian, **tags: Any) -> Path:
    """Write a one-frame grayscale mammogram as DICOM to ``path``; return the path.

    - ``pixels``: HxW stored values, uint16 (BitsAllocated 16, ``bits_stored`` bits
      used; values must fit) or uint8 (8 bits, ``bits_stored`` ignored).
    - ``photometric``: ``MONOCHROME2`` (high = bright) or ``MONOCHROME1`` (high = dark).
    - ``window``: (centre, width) written as WindowCenter/WindowWidth; None for none.
    - ``voi_lut``: write a VOI LUT Sequence, a gamma curve (:data:`VOI_LUT_GAMMA`) over the
      stored range with 16-bit entries (applied in preference to a window when both exist).
    - ``laterality`` -> ImageLaterality, ``view`` -> ViewPosition, ``manufacturer`` and
      ``model`` -> Manufacturer / ManufacturerModelName, ``patient_id`` -> PatientID; None
      leaves the tag out.
    - ``spacing``: (row, column) mm per pixel, written as PixelSpacing, or as
      ImagerPixelSpacing when ``imager_spacing``; None for neither.
    - ``identifying``: also write the :data:`IDENTIFYING` tags (name, birth date, ...).
    - ``transfer_syntax``: uncompressed, or a compressed syntax pydicom can encode here
      (RLE Lossless; JPEG 2000 Lossless through pylibjpeg-openjpeg).
    - ``tags``: any other DICOM keyword and its value (``SeriesDescription="ROI mask images"``).
    """
    pixels = np.asarray(pixels)
    if pixels.ndim != 2 or pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"pixels must be a 2-D uint8 or uint16 array, got {pixels.dtype} {pixels.shape}")
    bits = 8 if pixels.dtype == np.uint8 else bits_stored
    if int(pixels.max()) >= 2 ** bits:
        raise ValueError(f"pixel value {int(pixels.max())} does not fit in {bits} stored bits")
    ds = _file_dataset(DIGITAL_MAMMOGRAPHY)
    ds.Modality = "MG"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.update(_pixel_module(pixels, photometric, bits))
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_lut:
        ds.VOILUTSequence = [_gamma_lut(bits)]
    if spacing is not None:
        setattr(ds, "ImagerPixelSpacing" if imager_spacing else "PixelSpacing", list(spacing))
    optional = {"ImageLaterality": laterality, "ViewPosition": view, "Manufacturer": manufacturer,
                "ManufacturerModelName": model, "PatientID": patient_id}
    optional.update(IDENTIFYING if identifying else {})
    for keyword, value in {**optional, **tags}.items():
        if value is not None:
            setattr(ds, keyword, value)
    if UID(transfer_syntax).is_compressed:
        ds.compress(transfer_syntax)
    return _save(ds, path)


def claim_transfer_syntax(path: str | Path, uid: str) -> Path:
    """Rewrite an uncompressed DICOM file to claim the transfer syntax ``uid``: its pixel
    bytes become one encapsulated fragment, as a file from an encoder no one here has."""
    ds = dcmread(path)
    ds.PixelData = encapsulate([ds.PixelData])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = UID(uid)
    return _save(ds, path)


def strip_pixel_data(path: str | Path) -> Path:
    """Rewrite a DICOM file without its PixelData element (a header-only export)."""
    ds = dcmread(path)
    del ds.PixelData
    return _save(ds, path)


def truncate(path: str | Path, keep: float = 0.6) -> Path:
    """Cut a file to its first ``keep`` fraction of bytes, as an interrupted copy leaves it."""
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    return path


def _file_dataset(sop_class: UID) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    return ds


def _pixel_module(pixels: np.ndarray, photometric: str, bits: int) -> Dataset:
    ds = Dataset()
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    return ds


def _gamma_lut(bits: int) -> Dataset:
    entries = 2 ** bits
    lut = np.round(65535 * (np.arange(entries) / (entries - 1)) ** VOI_LUT_GAMMA).astype(np.uint16)
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [entries % 65536, 0, 16])  # 0 entries means 65536 (PS3.3 C.11.2.1.1)
    item.add_new("LUTData", "OW", lut.astype("<u2").tobytes())  # OW: a US value holds at most 32767 entries
    return item


def _save(ds: Dataset, path: str | Path) -> Path:
    path = Path(path)
    ds.save_as(path, enforce_file_format=True)
    return path
