"""Synthetic multi-site mammography cohorts (source ``synthetic_mg``), in memory.

The ultrasound generator (:mod:`senolab.cohorts.synthetic`) is senolab's default; this is
its mammography sibling, so that mammography studies and their tests need no download.

How an image is made (geometry in millimetres; a vendor's field of view and pixel count
set its pixel spacing):

- anatomy: a compressed breast against the chest wall (a half-ellipse for CC, a longer,
  lower one with the pectoral muscle in the upper corner for MLO), its thickness falling
  to zero at the skin line; fibroglandular tissue as a smooth random field whose volume
  fraction follows the BI-RADS density (``breast_density`` "1" < "2" < "3" < "4", the column CBIS-DDSM's reader fills);
- lesions: masses (benign: round or oval, circumscribed; malignant: irregular,
  indistinct, spiculated) and calcification clusters (benign: a few round specks,
  scattered; malignant: many pleomorphic, some linear, tightly clustered). A mass replaces
  fat, not gland (``gland + (1 - gland) * mass``), so in dense tissue it adds little
  attenuation: density hides lesions as it does in screening;
- acquisition: the attenuation gives an exposure (Beer-Lambert); a film-like vendor maps
  it through a characteristic (H&D) curve to optical density with film grain, digitised
  at a coarse resolution with scanner marks; a digital-like vendor counts quanta
  (Poisson-like noise), takes the log and applies a display LUT windowed on the breast;
- every image carries a burned-in label (text-like blocks) in a background corner on the
  nipple side; a right breast is displayed with its chest wall on the right (radiology's
  hanging convention, as mini-MIAS stores them), a left one on the left.

Every patient has two images: both views (CC, MLO) of one breast, or one view of both
breasts (the lesion is in one of them; the other image is normal), so splits must keep
patients together. Metadata: ``laterality``, ``view``, ``breast_density`` (ordinal), ``age``,
and ``finding`` (none / mass / calcification), an OUTCOME column. Masks are exact
outlines: a mass's body; a calcification cluster's region (its specks, dilated, filled).
The same config gives identical arrays.
"""
from __future__ import annotations

import string
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage
from tqdm.auto import tqdm

from senolab.cohorts.imaging import bbox_from_mask
from senolab.cohorts.schema import LABELS, Cohort, Column, Kind
from senolab.cohorts.synthetic import allocate_labels

COHORT = "synthetic_mg"
DENSITY_LEVELS = ("1", "2", "3", "4")  # BI-RADS breast composition (4th edition numbers, as CBIS-DDSM; the 5th edition's a-d)
GLAND_FRACTION = (0.12, 0.32, 0.55, 0.78)  # fibroglandular area fraction per density level
FINDINGS = ("none", "mass", "calcification")

METADATA_COLUMNS: dict[str, Column] = {
    "laterality": Column("laterality", Kind.CATEGORICAL, ("L", "R"), False, "which breast"),
    "view": Column("view", Kind.CATEGORICAL, ("CC", "MLO"), False, "craniocaudal or mediolateral oblique"),
    "breast_density": Column("breast_density", Kind.ORDINAL, DENSITY_LEVELS, False,
                             "BI-RADS breast composition: 1 fatty ... 4 extremely dense"),
    "age": Column("age", Kind.NUMERIC, (), False, "years at the examination"),
    "finding": Column("finding", Kind.CATEGORICAL, FINDINGS, True, "the lesion type: encodes the label"),
}


@dataclass(frozen=True)
class Vendor:
    """How one site's system acquires and displays: what makes the sites differ."""

    name: str
    scanner: str
    kind: str  # "film" (digitised screen-film) or "digital" (a detector counting quanta)
    prevalence: tuple[float, float, float]  # normal, benign, malignant (patients)
    field_mm: float  # height of the stored image's field of view
    resolution: float  # rendered at this fraction of the stored size, then upsampled (film: the scanner)
    curve: tuple[float, float]  # film: (gamma, log10 exposure at mid-density); digital: (window width, level offset)
    noise: float  # film: grain SD in optical density; digital: relative quantum noise at the breast's mean
    marks: bool = False  # scanner marks (a scratch, a film-ID patch) in the background
    density_shift: float = 0.0  # of the population's density (a screening vs a referral population)

    def __post_init__(self):
        if self.kind not in ("film", "digital"):
            raise ValueError(f"vendor {self.name!r}: kind must be 'film' or 'digital', got {self.kind!r}")
        if len(self.prevalence) != len(LABELS) or abs(sum(self.prevalence) - 1.0) > 1e-6:
            raise ValueError(f"vendor {self.name!r}: prevalence must give {LABELS} and sum to 1")


DESIGNED_VENDORS: tuple[Vendor, ...] = (
    # Digitised screen-film (mini-MIAS-like): S-shaped H&D curve, grain, a coarse scanner, marks.
    Vendor("mg_film", "Lumiscan 85 film digitiser", "film", (0.40, 0.35, 0.25), 200.0, 0.5, (4.5, -1.05),
           0.06, marks=True),
    # Full-field digital: linear detector, quantum noise, a log and a sigmoid LUT, finer pixels.
    Vendor("mg_digital", "Aurelia DR", "digital", (0.35, 0.35, 0.30), 170.0, 1.0, (0.6, -0.4), 0.05,
           density_shift=0.4),
    # Computed radiography: a digital chain with a harder LUT, more noise, a coarser plate.
    Vendor("mg_cr", "Phosphor CR 35", "digital", (0.45, 0.30, 0.25), 185.0, 0.75, (0.3, -0.1), 0.09,
           density_shift=-0.3),
)


def default_vendors(n: int = 2) -> tuple[Vendor, ...]:
    """``n`` vendors: the designed ones (film, digital, CR), then seeded variations of them."""
    if not 1 <= n <= len(string.ascii_lowercase):
        raise ValueError(f"number of mammography sites must be in 1..26, got {n}")
    vendors = list(DESIGNED_VENDORS[:n])
    for i in range(len(DESIGNED_VENDORS), n):
        base = DESIGNED_VENDORS[i % len(DESIGNED_VENDORS)]
        rng = np.random.default_rng([4241, i])
        vendors.append(replace(base, name=f"{base.name}_{string.ascii_lowercase[i]}", scanner=f"{base.scanner} rev{i}",
                               field_mm=base.field_mm * float(rng.uniform(0.9, 1.1)),
                               curve=(base.curve[0] * float(rng.uniform(0.8, 1.2)), base.curve[1] + float(rng.uniform(-0.1, 0.1))),
                               noise=base.noise * float(rng.uniform(0.7, 1.4))))
    return tuple(vendors)


@dataclass(frozen=True)
class MammographyConfig:
    """Everything that determines a synthetic mammography cohort."""

    sites: tuple[Vendor, ...] = field(default_factory=default_vendors)
    images_per_site: int = 40
    image_size: int = 128  # stored height; the width is ASPECT of it (portrait, as detectors are)
    seed: int = 0
    mass_fraction: float = 0.65  # of abnormal patients; the rest have a calcification cluster

    def __post_init__(self):
        names = [s.name for s in self.sites]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"MammographyConfig.sites: one or more uniquely named vendors needed, got {names}")
        if self.images_per_site < 4 or self.image_size < 64:
            raise ValueError("MammographyConfig: images_per_site >= 4 and image_size >= 64 are needed")


ASPECT = 0.8  # width / height of a stored image


# ----------------------------------------------------------------------------- patients


@dataclass(frozen=True)
class Finding:
    """One lesion, shared by the views that show it."""

    kind: str  # "mass" or "calcification"
    malignant: bool
    size_mm: float  # mass diameter, or the cluster's spread
    aspect: float
    harmonics: tuple[tuple[int, float, float], ...]  # (order, amplitude, phase) of the outline
    edge_mm: float  # margin transition: small circumscribed, large indistinct
    spicules: tuple[tuple[float, float], ...]  # (angle, length / radius)
    specks: tuple[tuple[float, float, float, float], ...]  # calcs: (dx, dy in units of size, radius mm, elongation)
    depth: float  # position from chest wall to nipple, as a fraction of the breast's depth
    height: float  # position across the breast, -1..1


@dataclass(frozen=True)
class MGPatient:
    patient_id: str
    label: str
    age: float
    density: int  # index into DENSITY_LEVELS
    finding: Finding | None
    images: tuple[tuple[str, str, bool], ...]  # (laterality, view, shows the finding)


def _draw_finding(rng: np.random.Generator, malignant: bool, mass: bool) -> Finding:
    depth, height = float(rng.uniform(0.25, 0.7)), float(rng.uniform(-0.45, 0.45))
    if mass:
        size = float(rng.uniform(12, 24) if malignant else rng.uniform(10, 22))
        if malignant:  # irregular outline, indistinct margin, spicules
            harmonics = tuple((k, float(rng.uniform(0.06, 0.16)), float(rng.uniform(0, 2 * np.pi))) for k in range(3, 9))
            spicules = tuple((float(rng.uniform(0, 2 * np.pi)), float(rng.uniform(0.8, 1.8)))
                             for _ in range(int(rng.integers(5, 12))))
            edge, aspect = float(rng.uniform(1.0, 2.0)), float(rng.uniform(0.75, 1.0))
        else:  # round or oval, circumscribed
            harmonics = tuple((k, float(rng.uniform(0.0, 0.04)), float(rng.uniform(0, 2 * np.pi))) for k in (2, 3))
            spicules, edge, aspect = (), float(rng.uniform(0.2, 0.5)), float(rng.uniform(0.55, 0.95))
        return Finding("mass", malignant, size, aspect, harmonics, edge, spicules, (), depth, height)
    if malignant:  # many pleomorphic specks, some linear, tightly clustered
        n, spread = int(rng.integers(10, 22)), float(rng.uniform(6, 11))
        specks = tuple((float(rng.normal(0, 0.3)), float(rng.normal(0, 0.3)), float(rng.uniform(0.25, 0.9)),
                        float(rng.choice([1.0, 1.0, 2.5]))) for _ in range(n))
    else:  # a few round specks of one size, scattered
        n, spread = int(rng.integers(4, 9)), float(rng.uniform(10, 16))
        r = float(rng.uniform(0.5, 0.8))
        specks = tuple((float(rng.uniform(-0.5, 0.5)), float(rng.uniform(-0.5, 0.5)), r * float(rng.uniform(0.9, 1.1)), 1.0)
                       for _ in range(n))
    return Finding("calcification", malignant, spread, 1.0, (), 0.0, (), specks, depth, height)


def _draw_patient(rng: np.random.Generator, patient_id: str, label: str, vendor: Vendor, mass_fraction: float) -> MGPatient:
    age = float(np.clip(round(rng.normal({"normal": 54, "benign": 50, "malignant": 61}[label], 10)), 35, 85))
    # Breasts are denser in younger women; a vendor's population may be denser or fattier.
    density = int(np.digitize((52 - age) / 10 + vendor.density_shift + rng.normal(0, 0.9), [-1.3, 0.0, 1.3]))
    finding = None if label == "normal" else _draw_finding(rng, label == "malignant", rng.random() < mass_fraction)
    side = "L" if rng.random() < 0.5 else "R"
    if rng.random() < 0.6:  # both views of one breast
        images = ((side, "CC", finding is not None), (side, "MLO", finding is not None))
    else:  # one view of both breasts; the finding is in `side`
        view = "CC" if rng.random() < 0.5 else "MLO"
        images = (("L", view, finding is not None and side == "L"), ("R", view, finding is not None and side == "R"))
    return MGPatient(patient_id, label, age, density, finding, images)


# ----------------------------------------------------------------------------- anatomy


@dataclass(frozen=True)
class Frame:
    """A pixel grid in millimetres; x runs from the chest wall (0) towards the nipple."""

    height: int
    width: int
    mm_per_px: float

    def coords(self) -> tuple[np.ndarray, np.ndarray]:
        y = ((np.arange(self.height) + 0.5) * self.mm_per_px).astype(np.float32)[:, None]
        x = ((np.arange(self.width) + 0.5) * self.mm_per_px).astype(np.float32)[None, :]
        return y, x


def _outline(frame: Frame, view: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
    """The breast's normalised radius (< 1 inside), the pectoral region, and the shape."""
    y, x = frame.coords()
    h_mm, w_mm = frame.height * frame.mm_per_px, frame.width * frame.mm_per_px
    depth = w_mm * float(rng.uniform(0.55, 0.72))  # chest wall to nipple
    half = h_mm * float(rng.uniform(0.36, 0.42)) if view == "CC" else h_mm * float(rng.uniform(0.42, 0.47))
    centre = h_mm * (0.5 if view == "CC" else 0.56)
    radius = np.sqrt((x / depth) ** 2 + ((y - centre) / half) ** 2)
    pectoral = np.zeros_like(radius, dtype=bool)
    if view == "MLO":  # the muscle: a triangle in the upper chest-wall corner
        top, reach = h_mm * float(rng.uniform(0.45, 0.6)), depth * float(rng.uniform(0.35, 0.5))
        pectoral = (x / reach + y / top) < 1.0
    return radius, pectoral, {"depth": depth, "half": half, "centre": centre}


def _gland(frame: Frame, radius: np.ndarray, density: int, rng: np.random.Generator) -> np.ndarray:
    """Fibroglandular fraction 0..1: a smooth random field, more behind the nipple than at
    the skin, thresholded softly at the density's area fraction."""
    px = 1.0 / frame.mm_per_px
    coarse, fine = (_unit(ndimage.gaussian_filter(rng.standard_normal(radius.shape), mm * px)) for mm in (4.0, 1.2))
    field_ = coarse + 0.5 * fine
    field_ = field_ + 1.2 * (0.8 - radius)  # glands gather in the centre, fat under the skin
    inside = radius < 1
    level = np.quantile(field_[inside], 1 - GLAND_FRACTION[density]) if inside.any() else 0.0
    return (1 / (1 + np.exp(-(field_ - level) * 2.0))).astype(np.float32) * inside


def _unit(values: np.ndarray) -> np.ndarray:
    return (values - values.mean()) / (values.std() + 1e-9)


def _mass(finding: Finding, cx: float, cy: float, frame: Frame) -> tuple[np.ndarray, np.ndarray]:
    """A mass's soft profile (0..1, spicules included) and its exact mask (the body)."""
    y, x = frame.coords()
    r0 = finding.size_mm / 2
    dx, dy = x - cx, (y - cy) / finding.aspect
    theta, dist = np.arctan2(dy, dx), np.hypot(dx, dy)
    bound = r0 * (1 + sum(a * np.cos(k * theta + p) for k, a, p in finding.harmonics))
    body = 1 / (1 + np.exp(np.clip((dist - bound) / max(finding.edge_mm / 4, 0.05), -50, 50)))
    spikes = np.zeros_like(body)
    for angle, length in finding.spicules:  # thin lines radiating beyond the outline
        off = np.abs(np.sin(theta - angle)) * dist
        along = np.cos(theta - angle) * dist
        spikes = np.maximum(spikes, np.exp(-(off / 0.6) ** 2) * ((along > 0) & (along < r0 * (1 + length)))
                            * np.clip(1 - along / (r0 * (1 + length)), 0, 1))
    return np.maximum(body, 0.7 * spikes).astype(np.float32), dist < bound


def _calcs(finding: Finding, cx: float, cy: float, frame: Frame) -> tuple[np.ndarray, np.ndarray]:
    """Calcium (arbitrary units of extra attenuation) and the cluster's exact region."""
    y, x = frame.coords()
    calcium = np.zeros((frame.height, frame.width), np.float32)
    region = np.zeros_like(calcium, dtype=bool)
    sigma_min = 0.5 * frame.mm_per_px  # a speck smaller than a pixel spreads over one
    for ux, uy, r, elongation in finding.specks:
        px, py = cx + ux * finding.size_mm, cy + uy * finding.size_mm
        sx, sy = max(r * elongation, sigma_min), max(r, sigma_min)
        calcium += (r / max(r, sigma_min)) ** 2 * np.exp(-((x - px) / sx) ** 2 - ((y - py) / sy) ** 2)
        region |= np.hypot(x - px, y - py) < r + 2.0
    region = ndimage.binary_fill_holes(ndimage.binary_closing(region, iterations=2))
    return calcium, region


# ----------------------------------------------------------------------------- acquisition

MU_FAT, MU_GLAND = 0.45, 0.80  # linear attenuation (1/cm) near 20 keV
THICKNESS_CM = 4.5  # compressed breast
CALCIUM = 2.0  # extra attenuation of a fully covered calcification pixel


def _attenuation(frame: Frame, patient: MGPatient, view: str, shows: bool, rng: np.random.Generator):
    """Line integral of attenuation (0 in the background) and the lesion mask, chest wall left."""
    radius, pectoral, shape = _outline(frame, view, rng)
    gland = _gland(frame, radius, patient.density, rng)
    thickness = THICKNESS_CM * np.sqrt(np.clip(1 - radius ** 2, 0, 1)) ** 0.5 * (radius < 1)
    mask = np.zeros(radius.shape, dtype=bool)
    calcium = np.zeros_like(gland)
    if shows and patient.finding is not None:
        f = patient.finding
        # the same lesion in both views: the same depth from the chest wall, jittered height
        cx = f.depth * shape["depth"] * float(rng.uniform(0.95, 1.05))
        cy = shape["centre"] + (f.height + float(rng.normal(0, 0.08))) * shape["half"] * 0.7
        if f.kind == "mass":
            profile, mask = _mass(f, cx, cy, frame)
            gland = gland + (1 - gland) * 0.9 * profile * (1.1 if f.malignant else 1.0)  # replaces fat, not gland
        else:
            calcium, mask = _calcs(f, cx, cy, frame)
        mask &= radius < 0.97
    tissue = MU_FAT + (MU_GLAND - MU_FAT) * np.clip(gland, 0, 1.2)
    line = thickness * tissue + CALCIUM * calcium * (radius < 1)
    line = line + 1.2 * pectoral * (radius < 1)  # the muscle: as dense as gland, thicker
    return line.astype(np.float32), mask, radius < 1


def _film(line: np.ndarray, vendor: Vendor, frame: Frame, rng: np.random.Generator) -> np.ndarray:
    """Exposure through the film's characteristic curve to optical density, with grain;
    the scanner reads density as brightness (background black, dense tissue white)."""
    gamma, mid = vendor.curve
    log_e = -line / np.log(10) + float(rng.normal(0, 0.06))  # the exposure control's error
    d_min, d_max = 0.2, 3.6
    density = d_min + (d_max - d_min) / (1 + np.exp(-gamma * (log_e - mid) * np.log(10) / 2))
    grain = ndimage.gaussian_filter(rng.standard_normal(line.shape), 0.7) * vendor.noise * 2.2
    return 1 - (density + grain - d_min) / (d_max - d_min)


def _digital(line: np.ndarray, breast: np.ndarray, vendor: Vendor, rng: np.random.Generator) -> np.ndarray:
    """A linear detector's counts with quantum noise, their log, then a display LUT
    windowed on the breast (as a VOI LUT would be)."""
    width, offset = vendor.curve
    mean_line = float(line[breast].mean()) if breast.any() else 1.0
    quanta = 1.0 / (vendor.noise ** 2 * np.exp(-mean_line))  # the relative noise at the breast's mean
    counts = quanta * np.exp(-line)
    counts = counts + np.sqrt(counts) * rng.standard_normal(line.shape)
    log_line = -np.log(np.clip(counts / quanta, 1e-4, None))
    lut = lambda v: 1 / (1 + np.exp(-(v - mean_line - offset) / width))  # noqa: E731
    return (lut(log_line) - lut(0.0)) / (1 - lut(0.0))


def _burn_label(image: np.ndarray, nipple_side_right: bool, rng: np.random.Generator, level: float) -> None:
    """A text-like block (rows of glyph strokes) in a top corner on the nipple side."""
    h, w = image.shape
    bh, bw = max(4, h // 12), max(6, w // 6)
    top, left = max(1, h // 40), (w - bw - max(1, w // 40)) if nipple_side_right else max(1, w // 40)
    block = image[top : top + bh, left : left + bw]
    block[:] = 0.25 * level  # the label's plate
    for r in range(1, bh - 1, 3):
        glyphs = rng.random(bw) < 0.6
        block[r : r + 2, glyphs] = level


def _scanner_marks(image: np.ndarray, rng: np.random.Generator) -> None:
    """A digitiser's marks in the background: a short scratch and a film-ID patch, low on the nipple side."""
    h, w = image.shape
    col = int(w * rng.uniform(0.86, 0.95))
    image[int(h * 0.55) : int(h * 0.7), col] = 0.8
    image[int(h * 0.9) : int(h * 0.95), int(w * 0.82) : int(w * 0.9)] = 0.6


def render_mammogram(patient: MGPatient, image_index: int, vendor: Vendor, size: int,
                     rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray]]:
    """One image of a patient: uint8 HxW (height ``size``) and its lesion masks (0 or 1)."""
    laterality, view, shows = patient.images[image_index]
    height, width = size, int(round(size * ASPECT))
    work = Frame(max(16, int(round(height * vendor.resolution))), max(13, int(round(width * vendor.resolution))),
                 vendor.field_mm / max(16, int(round(height * vendor.resolution))))
    line, mask, breast = _attenuation(work, patient, view, shows, rng)
    level = _film(line, vendor, work, rng) if vendor.kind == "film" else _digital(line, breast, vendor, rng)
    if work.height != height:  # the coarser chain renders fewer pixels
        zoom = (height / work.height, width / work.width)
        level = ndimage.zoom(level, zoom, order=1, mode="nearest")[:height, :width]
        mask = ndimage.zoom(mask.astype(np.uint8), zoom, order=0)[:height, :width].astype(bool)
    level = np.pad(level, ((0, height - level.shape[0]), (0, width - level.shape[1])), mode="edge")
    mask = np.pad(mask, ((0, height - mask.shape[0]), (0, width - mask.shape[1])))
    if laterality == "R":  # displayed with the chest wall on the right
        level, mask = level[:, ::-1], mask[:, ::-1]
    level = np.ascontiguousarray(level)
    _burn_label(level, laterality == "L", rng, 0.95 if vendor.kind == "film" else 0.8)
    if vendor.marks:
        _scanner_marks(level if laterality == "L" else level[:, ::-1], rng)
    image = np.clip(np.round(level * 255), 0, 255).astype(np.uint8)
    masks = [np.ascontiguousarray(mask)] if mask.any() else []
    return image, masks


# ----------------------------------------------------------------------------- cohort


def site_patients(config: MammographyConfig, site_index: int) -> list[MGPatient]:
    """The patients of one site (two images each; an odd count leaves the last one image)."""
    vendor = config.sites[site_index]
    rng = np.random.default_rng([config.seed, 1, site_index])
    n_patients = (config.images_per_site + 1) // 2
    labels = allocate_labels(vendor.prevalence, n_patients, rng)
    return [_draw_patient(np.random.default_rng([config.seed, 1, site_index, p]), f"{COHORT}/{vendor.name}/p{p + 1:04d}",
                          label, vendor, config.mass_fraction) for p, label in enumerate(labels)]


def generate_mammography(config: MammographyConfig | None = None, progress: bool = True) -> Cohort:
    """The synthetic mammography cohort in memory: table rows plus ``Cohort.arrays``."""
    config = config or MammographyConfig()
    rows, arrays = [], {}
    bar = tqdm(total=config.images_per_site * len(config.sites), desc="synthetic mammography", unit="img",
               disable=not progress, leave=False)
    for site_index, vendor in enumerate(config.sites):
        n = 0
        for p, patient in enumerate(site_patients(config, site_index)):
            for k in range(len(patient.images)):
                if n == config.images_per_site:
                    break
                n += 1
                case_id = f"{COHORT}/{vendor.name}/{n:04d}"
                rng = np.random.default_rng([config.seed, 2, site_index, p, k])
                arrays[case_id] = render_mammogram(patient, k, vendor, config.image_size, rng)
                rows.append(_row(case_id, patient, k, vendor, *arrays[case_id], config))
                bar.update()
    bar.close()
    return Cohort(COHORT, pd.DataFrame(rows), dict(METADATA_COLUMNS), {}, [], None, arrays).validate()


def _row(case_id: str, patient: MGPatient, k: int, vendor: Vendor, image: np.ndarray, masks: list[np.ndarray],
         config: MammographyConfig) -> dict[str, Any]:
    laterality, view, shows = patient.images[k]
    label = patient.label if shows else "normal"  # the other breast of a patient with a lesion is normal
    height, width = image.shape
    return {
        "case_id": case_id,
        "patient_id": patient.patient_id,
        "cohort": COHORT,
        "site": vendor.name,
        "scanner": vendor.scanner,
        "modality": "MG",
        "image_path": None,
        "mask_paths": [],
        "other_mask_paths": [],
        "label": label,
        "pixel_spacing_mm": float(vendor.field_mm / config.image_size),
        "width": width,
        "height": height,
        "mask_kind": "outline",
        "lesion_bboxes": [bbox_from_mask(m) for m in masks],
        "laterality": laterality,
        "view": view,
        "breast_density": DENSITY_LEVELS[patient.density],
        "age": patient.age,
        "finding": patient.finding.kind if shows and patient.finding is not None else "none",
    }
