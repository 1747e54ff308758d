"""DICOM reading (:mod:`senolab.cohorts.dicom`) on real files: pydicom's own test files in the
transfer syntaxes the plugins decode, mammography-like files built here with pydicom, and
the broken files a hospital export holds."""
from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000Lossless, RLELossless

from dicom_builders import (IDENTIFYING, VOI_LUT_GAMMA, claim_transfer_syntax, mammogram_dicom, strip_pixel_data,
                            truncate)
from senolab.cohorts.dicom import HEADER_TAGS, DicomError, dicom_size, is_dicom, read_dicom
from senolab.cohorts.imaging import READ_ERRORS, image_size, load_gray, load_mask
from senolab.cohorts.readers.base import CaseFiles, ProblemLog, load_cases, read_pixels
from senolab.runners.predict import find_images

HEADER_KEYS = ["pixel_spacing_mm", "laterality", "view", "scanner", "modality", "patient_id"]


def shipped(name: str) -> str:
    """A test file inside the pydicom wheel (never downloaded: the tests run offline)."""
    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} is not shipped inside the pydicom wheel"
    return path


def phantom(bits: int = 12, shape=(96, 64)) -> np.ndarray:
    """A mammogram-like image: dark background, mid-grey breast, a bright mass at [40:56, 24:40]."""
    rng = np.random.default_rng(0)
    top = 2 ** bits - 1
    image = np.full(shape, 0.05 * top)
    image[:, : shape[1] * 3 // 4] = 0.4 * top  # the breast, chest wall on the left
    image[40:56, 24:40] = 0.85 * top  # the mass
    image += rng.normal(0, 0.01 * top, shape)
    return np.clip(np.rint(image), 0, top).astype(np.uint16)


def regions(pixels: np.ndarray) -> tuple[float, float, float]:
    """Mean display value of the background, the breast tissue and the mass of :func:`phantom`."""
    return pixels[:, -8:].mean(), pixels[5:30, 5:30].mean(), pixels[42:54, 26:38].mean()


# ------------------------------------------------------------- pydicom's files, each syntax
@pytest.mark.parametrize("name", ["MR_small_implicit.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm",
                                  "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"],
                         ids=["implicit LE", "explicit BE", "RLE", "JPEG-LS lossless", "JPEG 2000 lossless"])
def test_lossless_syntaxes_read_as_the_uncompressed_reference(name):
    reference = read_dicom(shipped("MR_small.dcm"))
    image = read_dicom(shipped(name))
    assert image.pixels.dtype == np.uint8 and image.pixels.shape == (64, 64)
    np.testing.assert_array_equal(image.pixels, reference.pixels)
    assert image.windowing == reference.windowing == "window c=600 w=1600"
    assert image.header == reference.header


@pytest.mark.parametrize("name, max_diff", [
    ("SC_rgb_jpeg_gdcm.dcm", 0),  # JPEG lossless, first-order prediction
    ("SC_rgb_gdcm_KY.dcm", 0),  # JPEG 2000
    ("SC_rgb_jpeg_dcmtk.dcm", 3),  # JPEG baseline, YBR_FULL
    ("SC_rgb_dcmtk_+eb+cy+np.dcm", 10),  # JPEG baseline, YBR_FULL_422 (chroma subsampled)
    ("SC_ybr_full_422_uncompressed.dcm", 3),
    ("SC_rgb_jls_lossy_line.dcm", 3),  # JPEG-LS near-lossless
])
def test_colour_syntaxes_read_as_the_luminance_of_the_reference(name, max_diff):
    reference = read_dicom(shipped("SC_rgb_rle.dcm")).pixels.astype(int)
    image = read_dicom(shipped(name))
    assert image.windowing == "luminance" and image.pixels.shape == (100, 100)
    diff = np.abs(image.pixels.astype(int) - reference)
    assert diff.max() <= max_diff and diff.mean() <= 1


def test_colour_luminance_is_that_of_a_png_of_the_same_pixels(tmp_path):
    """The same weights as PIL's "L", so a site exporting DICOM and one exporting PNG agree."""
    import pydicom

    rgb = pydicom.dcmread(shipped("SC_rgb_rle.dcm")).pixel_array
    Image.fromarray(rgb).save(tmp_path / "same.png")
    np.testing.assert_array_equal(read_dicom(shipped("SC_rgb_rle.dcm")).pixels, load_gray(tmp_path / "same.png"))


@pytest.mark.parametrize("name, shape", [("JPGExtended.dcm", (1024, 256)), ("JPEG2000.dcm", (1024, 256)),
                                         ("image_dfl.dcm", (512, 512)), ("JPEGLSNearLossless_16.dcm", (50, 10))],
                         ids=["JPEG extended 12-bit", "JPEG 2000 16-bit", "deflated", "JPEG-LS 16-bit"])
def test_other_syntaxes_decode_to_display_pixels(name, shape):
    image = read_dicom(shipped(name))
    assert image.pixels.dtype == np.uint8 and image.pixels.shape == shape
    assert image.pixels.std() > 5  # an image, not a flat field


# ------------------------------------------------------------------ mammograms built here
@pytest.mark.parametrize("bits", [12, 14])
def test_high_bit_depth_stays_float_until_the_display_mapping(tmp_path, bits):
    ramp = np.linspace(0, 2 ** bits - 1, 64 * 256).reshape(64, 256).astype(np.uint16)
    image = read_dicom(mammogram_dicom(tmp_path / "ramp.dcm", ramp, bits_stored=bits))
    assert image.windowing == "percentile 0.5-99.5"
    assert np.all(np.diff(image.pixels.ravel().astype(int)) >= 0)  # monotonic
    assert len(np.unique(image.pixels)) == 256  # every display level used: no early cut to 8 bits


@pytest.mark.parametrize("bits", [12, 14])
def test_monochrome1_is_inverted_so_a_bright_mass_stays_bright(tmp_path, bits):
    stored = phantom(bits)
    mono2 = read_dicom(mammogram_dicom(tmp_path / "m2.dcm", stored, bits_stored=bits))
    # the same picture in MONOCHROME1, where high stored values are dark
    mono1 = read_dicom(mammogram_dicom(tmp_path / "m1.dcm", (2 ** bits - 1 - stored).astype(np.uint16),
                                       photometric="MONOCHROME1", bits_stored=bits))
    for image in (mono1, mono2):
        background, tissue, mass = regions(image.pixels)
        assert background < tissue < mass and mass > 200
    assert np.abs(mono1.pixels.astype(int) - mono2.pixels.astype(int)).max() <= 1


def test_monochrome1_inversion_follows_the_window(tmp_path):
    stored = phantom()
    image = read_dicom(mammogram_dicom(tmp_path / "m1.dcm", (4095 - stored).astype(np.uint16),
                                       photometric="MONOCHROME1", window=(4095 - 0.4 * 4095, 1000)))
    background, tissue, mass = regions(image.pixels)
    assert background == 0 and mass == 255 and 100 < tissue < 155  # the window centred on the tissue


def test_window_centre_and_width_map_the_window_to_black_and_white(tmp_path):
    stored = np.array([[0, 1535, 1536, 2048, 2560, 2561, 4095]], np.uint16)
    image = read_dicom(mammogram_dicom(tmp_path / "w.dcm", stored, window=(2048, 1024)))
    assert image.windowing == "window c=2048 w=1024"
    row = image.pixels[0].astype(int)
    assert row[0] == row[1] == 0 and row[-1] == row[-2] == 255
    assert abs(row[3] - 128) <= 1 and row[2] <= 1 and row[4] >= 254


def test_rescale_is_applied_before_the_window(tmp_path):
    """The window is stated in modality units (after slope and intercept), as in the standard."""
    stored = np.array([[1000, 1500, 2000, 2500, 3000]], np.uint16)
    path = mammogram_dicom(tmp_path / "r.dcm", stored, window=(3000, 2000), RescaleSlope=2, RescaleIntercept=-1000)
    row = read_dicom(path).pixels[0].astype(int)  # modality values 1000, 2000, 3000, 4000, 5000
    assert row[0] == row[1] == 0 and abs(row[2] - 128) <= 1 and row[3] == row[4] == 255


def test_voi_lut_sequence_is_applied_and_preferred_to_a_window(tmp_path):
    stored = np.array([[0, 1024, 2048, 4095]], np.uint16)
    for window in (None, (100, 50)):
        image = read_dicom(mammogram_dicom(tmp_path / "v.dcm", stored, voi_lut=True, window=window))
        assert image.windowing == "voi_lut"
        expected = 255 * (stored[0] / 4095) ** VOI_LUT_GAMMA
        assert np.abs(image.pixels[0] - expected).max() <= 1


def test_eight_bit_stored_values_are_display_values(tmp_path):
    """An 8-bit grayscale DICOM (an ultrasound export) reads as the PNG of the same pixels."""
    stored = np.random.default_rng(1).integers(20, 200, (30, 40), dtype=np.uint8)
    image = read_dicom(mammogram_dicom(tmp_path / "u8.dcm", stored))
    Image.fromarray(stored).save(tmp_path / "u8.png")
    assert image.windowing == "none (8-bit stored values)"
    np.testing.assert_array_equal(image.pixels, stored)
    np.testing.assert_array_equal(image.pixels, load_gray(tmp_path / "u8.png"))


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless], ids=["RLE", "JPEG 2000 lossless"])
def test_compressed_mammogram_reads_as_uncompressed(tmp_path, syntax):
    stored = phantom(14)
    plain = read_dicom(mammogram_dicom(tmp_path / "plain.dcm", stored, bits_stored=14))
    packed = read_dicom(mammogram_dicom(tmp_path / "packed.dcm", stored, bits_stored=14, transfer_syntax=syntax))
    np.testing.assert_array_equal(packed.pixels, plain.pixels)


# ------------------------------------------------------------------------------- header
def test_header_maps_the_whitelisted_tags(tmp_path):
    path = mammogram_dicom(tmp_path / "h.dcm", phantom(), laterality="R", view="MLO", spacing=(0.07, 0.07),
                           manufacturer="HOLOGIC, Inc.", model="Selenia Dimensions", patient_id="P-0042")
    header = read_dicom(path).header
    assert list(header) == HEADER_KEYS
    assert header == {"pixel_spacing_mm": 0.07, "laterality": "R", "view": "MLO",
                      "scanner": "HOLOGIC, Inc. Selenia Dimensions", "modality": "MG", "patient_id": "P-0042"}


@pytest.mark.parametrize("kwargs, expected", [
    ({"spacing": (0.1, 0.1)}, 0.1),
    ({"spacing": (0.085, 0.085), "imager_spacing": True}, 0.085),  # ImagerPixelSpacing when no PixelSpacing
    ({"spacing": (0.05, 0.05), "ImagerPixelSpacing": [0.06, 0.06]}, 0.05),  # PixelSpacing first
    ({"spacing": (0.1, 0.2)}, 0.15),  # non-square pixels: the mean
    ({"spacing": None}, math.nan),
], ids=["pixel", "imager", "both", "non-square", "none"])
def test_pixel_spacing(tmp_path, kwargs, expected):
    spacing = read_dicom(mammogram_dicom(tmp_path / "s.dcm", phantom(), **kwargs)).header["pixel_spacing_mm"]
    assert spacing == pytest.approx(expected, nan_ok=True)


@pytest.mark.parametrize("kwargs, expected", [
    ({"laterality": "L"}, "L"),
    ({"laterality": None, "Laterality": "R"}, "R"),  # the series-level tag when the image has none
    ({"laterality": "B"}, None),  # both breasts: no one side
    ({"laterality": None}, None),
])
def test_laterality(tmp_path, kwargs, expected):
    assert read_dicom(mammogram_dicom(tmp_path / "l.dcm", phantom(), **kwargs)).header["laterality"] == expected


def test_missing_tags_read_as_unknown(tmp_path):
    path = mammogram_dicom(tmp_path / "bare.dcm", phantom(), laterality=None, view=None, spacing=None,
                           manufacturer=None, model=None, patient_id=None, identifying=False)
    header = read_dicom(path).header
    assert header["scanner"] == "unknown" and header["view"] is None and header["patient_id"] is None


@pytest.mark.parametrize("salt", [None, "s3cret"])
def test_no_identifying_value_leaves_the_reader(tmp_path, salt):
    image = read_dicom(mammogram_dicom(tmp_path / "id.dcm", phantom(), identifying=True), patient_salt=salt)
    text = repr(image.header) + image.windowing
    leaked = [keyword for keyword, value in IDENTIFYING.items() if value.lower() in text.lower()]
    assert not leaked, f"identifying values in the header: {leaked}"
    assert not set(IDENTIFYING) & set(HEADER_TAGS)
    assert list(image.header) == HEADER_KEYS


def test_salted_patient_id_is_stable_and_differs_by_salt(tmp_path):
    path = mammogram_dicom(tmp_path / "p.dcm", phantom(), patient_id="P-0042")
    first, again = (read_dicom(path, patient_salt="alpha").header["patient_id"] for _ in range(2))
    other = read_dicom(path, patient_salt="beta").header["patient_id"]
    assert first == again == "anon-" + hashlib.sha256(b"alphaP-0042").hexdigest()[:16]
    assert other != first and "P-0042" not in first + other


# ------------------------------------------------------------------------------ bad input
@pytest.fixture
def good(tmp_path):
    return mammogram_dicom(tmp_path / "good.dcm", phantom())


def _no_pixels(good, tmp_path):
    return strip_pixel_data(good)


def _garbage(good, tmp_path):
    path = tmp_path / "garbage.dcm"
    path.write_bytes(b"this is a text file named like a DICOM file\n" * 20)
    return path


def _truncated(good, tmp_path):
    return truncate(good, 0.6)


def _truncated_rle(good, tmp_path):
    return truncate(mammogram_dicom(tmp_path / "rle.dcm", phantom(), transfer_syntax=RLELossless), 0.8)


def _truncated_header(good, tmp_path):
    data = good.read_bytes()  # cut inside the institution's address, long before the pixels
    good.write_bytes(data[:data.index(IDENTIFYING["InstitutionAddress"].encode()) + 5])
    return good


def _unsupported_syntax(good, tmp_path):
    # JPEG 2000 Part 2 multi-component: pydicom knows the syntax, no plugin decodes it
    return claim_transfer_syntax(good, "1.2.840.10008.1.2.4.93")


def _multi_frame(good, tmp_path):
    return shipped("SC_rgb_rle_2frame.dcm")


def _shipped_truncated(good, tmp_path):
    return shipped("MR_truncated.dcm")


BAD = {
    "no pixel data": (_no_pixels, "DICOM without pixel data (no PixelData element)"),
    "garbage": (_garbage, "not a DICOM file"),
    "truncated pixels": (_truncated, "truncated DICOM file"),
    "truncated RLE": (_truncated_rle, "truncated DICOM file"),
    "truncated header": (_truncated_header, "truncated DICOM file"),
    "pydicom's truncated": (_shipped_truncated, "truncated DICOM file"),
    "unsupported syntax": (_unsupported_syntax,
                           "DICOM transfer syntax 1.2.840.10008.1.2.4.93 (JPEG 2000 Part 2 Multi-component Image "
                           "Compression) cannot be decoded: no installed decoder (pylibjpeg-libjpeg / -openjpeg / -rle)"),
    "multi-frame": (_multi_frame, "multi-frame DICOM (2 frames) is not supported"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_dicom_raises_one_line_naming_the_problem(good, tmp_path, case):
    make, message = BAD[case]
    path = make(good, tmp_path)
    with pytest.raises(DicomError) as err:
        read_dicom(path)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert isinstance(err.value, READ_ERRORS)


@pytest.mark.parametrize("case", BAD)
def test_bad_dicom_is_a_recorded_problem_not_a_traceback(good, tmp_path, case):
    make, message = BAD[case]
    path = make(good, tmp_path)
    log = ProblemLog("mine", strict=False)
    assert read_pixels(path, "image", load_gray, log) is None
    assert len(log.problems) == 1 and message in log.problems[0].reason


def test_size_of_a_garbage_file_is_a_dicom_error(tmp_path):
    path = _garbage(None, tmp_path)
    with pytest.raises(DicomError, match="not a DICOM file"):
        dicom_size(path)


def test_a_reader_keeps_the_good_dicom_case_and_reports_the_bad(tmp_path):
    image, mask = phantom(), np.zeros((96, 64), np.uint8)
    mask[40:56, 24:40] = 255
    cases = [
        CaseFiles("mine/good", "p1", mammogram_dicom(tmp_path / "good.dcm", image), "malignant", "A",
                  mask_paths=[mammogram_dicom(tmp_path / "good_mask.dcm", mask)]),
        CaseFiles("mine/bad", "p2", strip_pixel_data(mammogram_dicom(tmp_path / "bad.dcm", image)), "benign", "A"),
    ]
    log = ProblemLog("mine", strict=False)
    table = load_cases(cases, log, progress=False)
    assert list(table["case_id"]) == ["mine/good"]
    assert table["lesion_bboxes"].iloc[0] == [[24, 40, 40, 56]]
    assert (table["width"].iloc[0], table["height"].iloc[0]) == (64, 96)
    assert [p.reason for p in log.problems] == ["unreadable or truncated image (DICOM without pixel data "
                                                "(no PixelData element))"]


# ---------------------------------------------------------- imaging and predict dispatch
def test_load_gray_image_size_and_load_mask_dispatch_dicom(tmp_path):
    stored = phantom(shape=(90, 60))
    path = mammogram_dicom(tmp_path / "img.dcm", stored)
    np.testing.assert_array_equal(load_gray(path), read_dicom(path).pixels)
    assert image_size(path) == dicom_size(path) == (60, 90)
    mask = np.zeros((90, 60), np.uint8)
    mask[10:20, 5:15] = 255
    np.testing.assert_array_equal(load_mask(mammogram_dicom(tmp_path / "img_mask.dcm", mask)), mask > 0)


def test_is_dicom_by_suffix_or_marker(tmp_path, good):
    unnamed = tmp_path / "IM000001"  # PACS exports often have no suffix
    unnamed.write_bytes(good.read_bytes())
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.png")
    assert is_dicom(good) and is_dicom(unnamed) and is_dicom(tmp_path / "named.DICOM")
    assert not is_dicom(tmp_path / "a.png") and not is_dicom(tmp_path / "missing")
    np.testing.assert_array_equal(load_gray(unnamed), load_gray(good))


def test_predict_finds_dicom_images_and_skips_dicom_masks(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.dcm", "b.DICOM", "a_mask.dcm"):
        mammogram_dicom(folder / name, phantom())
    images, skipped = find_images(folder)
    assert [p.name for p in images] == ["a.dcm", "b.DICOM"]
    assert [s["file"] for s in skipped] == [str(folder / "a_mask.dcm")]


def test_the_header_alone_equals_the_header_read_with_the_pixels(tmp_path):
    from senolab.cohorts.dicom import dicom_header

    path = mammogram_dicom(tmp_path / "m.dcm", np.full((16, 12), 900, np.uint16), laterality="R", view="MLO")
    assert dicom_header(path, patient_salt="s") == read_dicom(path, patient_salt="s").header
    assert dicom_header(strip_pixel_data(path))["view"] == "MLO"  # no pixels needed
