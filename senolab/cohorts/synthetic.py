"""Synthetic multi-site breast-ultrasound cohorts: the embedded default of senolab.

A seeded generator of N sites of B-mode-like images with lesion masks, labels and
clinical metadata, kept in memory (:func:`generate`) or written in the BUSI layout plus a
metadata CSV (:func:`write`, read back by ``senolab.cohorts.readers.synthetic``).

How an image is made (all geometry in millimetres, so a site's pixel spacing changes how
large things look, as it does on real scanners):

- anatomy: skin line, subcutaneous fat with Cooper's ligaments and fat lobules (which
  mimic lesions, as they do in practice), a fibroglandular layer whose thickness follows
  the patient's tissue composition (younger patients denser), retromammary fat, the
  pectoralis with its fascia, the chest wall;
- lesions: a radial shape function around a tilted ellipse. A latent *suspicion* score
  (Beta-distributed, high for malignant, low for benign, overlapping) drives every
  BI-RADS descriptor with its own noise: benign lesions tend to be oval, circumscribed
  (with an echogenic pseudo-capsule), wider-than-tall, anechoic (cysts) or hypoechoic, with
  posterior enhancement and edge shadows; malignant ones irregular (angular,
  microlobulated), spiculated, indistinct, taller-than-wide, heterogeneous, with an
  echogenic halo, microcalcifications and posterior shadowing. The suspicion of about one
  benign lesion in five exceeds one half, and that of one malignant lesion in five falls
  below it: the classes overlap;
- acquisition: a convolution model of the echo (reflectivity times complex Gaussian
  scatterers, blurred by an anisotropic point-spread function) gives fully developed
  speckle; depth attenuation after time-gain compensation, log compression with a site's
  gain and dynamic range, the site's speckle-reduction filter and resolution;
- sites differ in all of that, in pixel spacing, scanner, label prevalence, a depth ruler
  burnt into the image, the file colour (one site writes RGB PNGs with a sepia tint whose
  luminance is exactly the grey image, so a reader that converts colour correctly gets the
  same pixels back) and in which metadata they record (the rest is missing);
- some patients have two views of the same lesion (patient-level splitting matters), and
  a few images are injected near-duplicates of another image of the same site (shifted by
  a few pixels, regained, caliper marks added), filed under a new patient id as happens in
  public datasets; ``duplicate_of`` names the source so de-duplication can be tested.

Metadata: ``age`` (older for malignant), ``tissue_composition`` (BrEaST vocabulary, a set
like BrEaST's so the cohorts combine), ``symptoms`` (palpable mass, skin retraction more
frequent with malignancy), ``family_history``, and ``birads`` - an OUTCOME column that
nearly encodes the label and must never be a model input by default.

What a simple baseline reaches (benign vs malignant ROC AUC on ``SyntheticConfig()``;
logistic regression; within a site, out-of-fold scores of a 5-fold patient-grouped split;
across sites, fitted on all of one site and scored on another). Seen on 2026-11-24 with
``python benchmarks/synthetic_baseline.py`` (seed 0; ``--seed 1`` moves figures by up to
about 0.08 on these ~100 lesions per site):

    =================================  ======  ======  ======
    within site                        site_a  site_b  site_c
    =================================  ======  ======  ======
    lesion features (true mask)        0.843   0.929   0.836
    pixels 24x24 (no mask)             0.706   0.793   0.737
    metadata (without BI-RADS)         0.820   0.693   0.500 (records none)
    BI-RADS alone (outcome: reference) 0.969   -       -
    =================================  ======  ======  ======

    across sites, train -> test: lesion features 0.74-0.85 (a->b 0.792, a->c 0.849,
    b->a 0.827, b->c 0.781, c->a 0.811, c->b 0.744); pixels 0.72-0.80.

So: learnable, far from trivial for simple models, and it loses accuracy across sites.
"""
from __future__ import annotations

import json
import string
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage
from tqdm.auto import tqdm

from senolab.cohorts.imaging import bbox_from_mask
from senolab.cohorts.schema import LABELS, Cohort, CohortError, Column, Kind

COHORT = "synthetic"
CONFIG_FILE = "senolab_synthetic.json"
METADATA_FILE = "metadata.csv"
BUSI_FOLDER = "Dataset_BUSI_with_GT"
FORMAT = {"format": "senolab-synthetic", "version": 1}
MULTI_SEPARATOR = "&"  # as BrEaST joins several findings in one cell

TISSUE_LEVELS = (
    "homogeneous: fat",
    "heterogeneous: predominantly fat",
    "heterogeneous: predominantly fibroglandular",
    "homogeneous: fibroglandular",
)
SYMPTOM_LEVELS = ("breast pain", "nipple discharge", "no", "palpable mass", "skin retraction")
BIRADS_LEVELS = ("1", "2", "3", "4a", "4b", "4c", "5")  # the BrEaST reader's levels, so they merge

METADATA_COLUMNS: dict[str, Column] = {
    "age": Column("age", Kind.NUMERIC, (), False, "years at the examination"),
    "tissue_composition": Column(
        "tissue_composition", Kind.MULTI, TISSUE_LEVELS, False, "background echotexture (BrEaST vocabulary)"
    ),
    "symptoms": Column("symptoms", Kind.MULTI, SYMPTOM_LEVELS, False, "reported symptoms; 'no' when none"),
    "family_history": Column("family_history", Kind.CATEGORICAL, ("no", "yes"), False, "breast/ovarian cancer"),
    "birads": Column("birads", Kind.ORDINAL, BIRADS_LEVELS, True, "the radiologist's assessment: encodes the label"),
}
ALL_METADATA = tuple(METADATA_COLUMNS)


@dataclass(frozen=True)
class SiteProfile:
    """How one site acquires and records: the knobs that make sites differ."""

    name: str
    scanner: str
    pixel_spacing_mm: float
    prevalence: tuple[float, float, float]  # normal, benign, malignant (patients)
    gain_db: float  # display level of tissue of reflectivity 1 at 0 dB
    dynamic_range_db: float  # log-compression window
    attenuation_db_per_cm: float  # net depth loss after time-gain compensation
    psf_mm: tuple[float, float]  # axial, lateral point-spread sigma: the speckle grain
    speckle_reduction_mm: float  # sigma of the scanner's post-log smoothing (0 = raw speckle)
    resolution: float  # rendered at this fraction of the stored size, then upsampled
    tint: tuple[float, float, float] | None = None  # RGB file with this tint; None = grey file
    ruler: bool = False  # depth-scale ticks burnt into the right edge
    records: tuple[str, ...] = ALL_METADATA  # metadata columns this site fills in

    def __post_init__(self):
        unknown = sorted(set(self.records) - set(ALL_METADATA))
        if unknown:
            raise ValueError(f"site {self.name!r}: records unknown metadata {unknown}; known: {ALL_METADATA}")
        if len(self.prevalence) != len(LABELS) or abs(sum(self.prevalence) - 1.0) > 1e-6:
            raise ValueError(f"site {self.name!r}: prevalence must give {LABELS} and sum to 1, got {self.prevalence}")
        if not 0.2 <= self.resolution <= 1.0:
            raise ValueError(f"site {self.name!r}: resolution must lie in [0.2, 1], got {self.resolution}")


DESIGNED_SITES: tuple[SiteProfile, ...] = (
    # A university hospital: fine raw speckle, records everything.
    SiteProfile("site_a", "Sonora L12-5", 0.20, (0.15, 0.55, 0.30), -8.0, 55.0, 1.2, (0.22, 0.42), 0.0, 1.0),
    # A breast clinic: strong speckle reduction, darker, steep attenuation, sepia RGB export,
    # a depth ruler, referral population (more malignancy), records age only.
    SiteProfile(
        "site_b", "Echovia 9L", 0.16, (0.10, 0.45, 0.45), -14.0, 48.0, 3.0, (0.18, 0.32), 0.2, 1.0,
        tint=(1.10, 1.0, 0.80), ruler=True, records=("age",),
    ),
    # A screening programme with an older scanner: coarse, blurred, bright; records nothing.
    SiteProfile("site_c", "MedaSound C7", 0.24, (0.20, 0.60, 0.20), -6.0, 62.0, 0.6, (0.32, 0.65), 0.1, 0.6,
                records=()),
)


def default_sites(n: int = 3) -> tuple[SiteProfile, ...]:
    """``n`` site profiles: the three designed ones, then seeded variations of them."""
    if not 1 <= n <= len(string.ascii_lowercase):
        raise ValueError(f"number of sites must be in 1..26, got {n}")
    sites = list(DESIGNED_SITES[:n])
    for i in range(len(DESIGNED_SITES), n):
        sites.append(_varied_site(DESIGNED_SITES[i % len(DESIGNED_SITES)], i))
    return tuple(sites)


def _varied_site(base: SiteProfile, index: int) -> SiteProfile:
    rng = np.random.default_rng([7919, index])
    prevalence = rng.dirichlet(np.array(base.prevalence) * 40)
    return replace(
        base,
        name=f"site_{string.ascii_lowercase[index]}",
        scanner=f"{base.scanner} rev{index}",
        pixel_spacing_mm=round(base.pixel_spacing_mm * rng.uniform(0.85, 1.15), 3),
        prevalence=tuple(float(p) for p in prevalence / prevalence.sum()),
        gain_db=base.gain_db + float(rng.uniform(-4, 4)),
        attenuation_db_per_cm=base.attenuation_db_per_cm * float(rng.uniform(0.7, 1.3)),
        psf_mm=tuple(float(p * rng.uniform(0.8, 1.25)) for p in base.psf_mm),
        speckle_reduction_mm=max(0.0, base.speckle_reduction_mm + float(rng.uniform(-0.05, 0.05))),
    )


@dataclass(frozen=True)
class SyntheticConfig:
    """Everything that determines a synthetic cohort: the same config gives the same bytes."""

    sites: tuple[SiteProfile, ...] = field(default_factory=default_sites)
    images_per_site: int = 120
    image_size: int = 192
    seed: int = 0
    second_view_fraction: float = 0.2  # of patients, who get a second image of the same lesion
    duplicate_fraction: float = 0.03  # of images, injected near-duplicates of another image
    second_lesion_fraction: float = 0.07  # of benign patients (malignant: a third of it)

    def __post_init__(self):
        if not self.sites:
            raise ValueError("SyntheticConfig.sites: at least one site is needed")
        names = [s.name for s in self.sites]
        if len(set(names)) != len(names):
            raise ValueError(f"SyntheticConfig.sites: site names must be unique, got {names}")
        if self.images_per_site < 4:
            raise ValueError(f"SyntheticConfig.images_per_site must be at least 4, got {self.images_per_site}")
        if self.image_size < 64:
            raise ValueError(f"SyntheticConfig.image_size must be at least 64 px, got {self.image_size}")
        for name in ("second_view_fraction", "duplicate_fraction", "second_lesion_fraction"):
            if not 0.0 <= getattr(self, name) <= 0.5:
                raise ValueError(f"SyntheticConfig.{name} must lie in [0, 0.5], got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SyntheticConfig":
        """The inverse of :meth:`to_dict` (JSON turns tuples into lists; this turns them back)."""
        data = dict(data)
        data["sites"] = tuple(SiteProfile(**_tuples(s)) for s in data["sites"])
        return cls(**data)


def _tuples(record: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in record.items()}


def metadata_columns() -> dict[str, Column]:
    """The declared metadata columns of every synthetic cohort."""
    return dict(METADATA_COLUMNS)


# ----------------------------------------------------------------------------- patients


@dataclass(frozen=True)
class LesionTraits:
    """What a lesion is, shared by every view of it (BI-RADS descriptors, in effect)."""

    suspicion: float  # latent 0..1 that every descriptor follows with its own noise
    width_mm: float
    aspect: float  # height / width: < 1 wider-than-tall (parallel), > 1 taller-than-wide
    lobulation: float  # amplitude of low-order shape harmonics (macrolobulation)
    angularity: float  # amplitude of high-order harmonics (angular / microlobulated)
    edge_mm: float  # width of the margin transition: small = circumscribed, large = indistinct
    echo: float  # interior reflectivity relative to glandular tissue
    heterogeneity: float
    posterior_db: float  # > 0 enhancement, < 0 shadowing
    capsule: float  # echogenic pseudo-capsule strength (circumscribed benign)
    halo_mm: float  # echogenic halo thickness (malignant), 0 for none
    spicules: int
    calcifications: int


@dataclass(frozen=True)
class Patient:
    patient_id: str
    label: str
    metadata: dict[str, Any]  # every column's true value; a site records a subset
    density: int  # index into TISSUE_LEVELS, drives the fibroglandular layer
    lesions: tuple[LesionTraits, ...]


def _draw_patient(rng: np.random.Generator, patient_id: str, label: str, two_lesions: bool) -> Patient:
    malignant = label == "malignant"
    age = float(np.clip(round(rng.normal({"normal": 49, "benign": 48, "malignant": 58}[label], 13)), 18, 90))
    # Dense breasts are more frequent in younger women.
    density = int(np.digitize((50 - age) / 12 + rng.normal(0, 0.8), [-0.9, 0.0, 0.9]))
    n_lesions = 0 if label == "normal" else 1 + int(two_lesions)
    lesions = tuple(_draw_lesion(rng, malignant, n_lesions) for _ in range(n_lesions))
    palpable_boost = 0.25 if lesions and lesions[0].width_mm > 15 else 0.0
    symptoms = _draw_symptoms(rng, label, palpable_boost)
    family = "yes" if rng.random() < (0.22 if malignant else 0.10) else "no"
    metadata = {
        "age": age,
        "tissue_composition": [TISSUE_LEVELS[density]],
        "symptoms": symptoms,
        "family_history": family,
        "birads": _birads(rng, label, lesions),
    }
    return Patient(patient_id, label, metadata, density, lesions)


SYMPTOM_RATES = {  # label -> probability of each symptom
    "normal": {"breast pain": 0.35, "nipple discharge": 0.03, "palpable mass": 0.05, "skin retraction": 0.0},
    "benign": {"breast pain": 0.30, "nipple discharge": 0.06, "palpable mass": 0.30, "skin retraction": 0.01},
    "malignant": {"breast pain": 0.15, "nipple discharge": 0.08, "palpable mass": 0.50, "skin retraction": 0.10},
}


def _draw_symptoms(rng: np.random.Generator, label: str, palpable_boost: float) -> list[str]:
    present = []
    for symptom, rate in SYMPTOM_RATES[label].items():
        boost = palpable_boost if symptom == "palpable mass" else 0.0
        if rng.random() < rate + boost:
            present.append(symptom)
    return sorted(present) or ["no"]


def _birads(rng: np.random.Generator, label: str, lesions: tuple[LesionTraits, ...]) -> str:
    if not lesions:
        return "1"
    # The radiologist sees the image (suspicion) and more (elastography, history, priors):
    # BI-RADS nearly encodes the label, which is why it is an outcome column.
    score = 0.6 * lesions[0].suspicion + 0.2 * (label == "malignant") + rng.normal(0, 0.1)
    return BIRADS_LEVELS[1 + int(np.digitize(score, [0.18, 0.33, 0.48, 0.62, 0.78]))]


def _draw_lesion(rng: np.random.Generator, malignant: bool, n_lesions: int) -> LesionTraits:
    z = float(rng.beta(4.0, 2.0) if malignant else rng.beta(2.0, 4.0))
    cyst = (not malignant) and z < 0.4 and rng.random() < 0.45
    width = float(np.exp(rng.normal(np.log(17.0 if malignant else 13.0), 0.35)))
    width = float(np.clip(width, 5.0, 28.0 if n_lesions == 1 else 12.0))
    return LesionTraits(
        suspicion=z,
        width_mm=width,
        aspect=float(np.clip(0.5 + 0.6 * z + rng.normal(0, 0.12), 0.35, 1.5)),
        lobulation=float(np.clip(0.03 + 0.10 * z * rng.uniform(0.3, 1.5), 0, 0.2)),
        angularity=float(0.11 * z**2 * rng.uniform(0.3, 1.6)),
        edge_mm=float(0.08 + 1.4 * z**1.5 * rng.uniform(0.3, 1.4)),
        echo=0.012 if cyst else float(np.clip(0.16 - 0.12 * z + rng.normal(0, 0.03), 0.025, 0.35)),
        heterogeneity=0.05 if cyst else float(np.clip(0.15 + 0.7 * z + rng.normal(0, 0.1), 0.05, 1.0)),
        posterior_db=10.0 if cyst else float(16.0 * (0.5 - z) + rng.normal(0, 5.0)),
        capsule=float(max(0.0, 0.6 - z) * rng.uniform(0.4, 1.2)),
        halo_mm=float(rng.uniform(0.8, 2.5)) if rng.random() < 0.8 * z**2 else 0.0,
        spicules=int(rng.poisson(12 * max(0.0, z - 0.55))),
        calcifications=int(rng.poisson(4 * z**2)) if not cyst else 0,
    )


# ----------------------------------------------------------------------------- site plan


@dataclass(frozen=True)
class ImageSpec:
    """One image of a site's plan: whose, which view, and whether it copies another image."""

    patient: Patient
    key: tuple[int, ...]  # seeds this image's randomness (and so its view), whatever the case order
    duplicate_of: int | None = None  # index (in the plan) of the image this one copies


def site_plan(config: SyntheticConfig, site_index: int) -> list[ImageSpec]:
    """The images of one site, in case order: patients, second views, injected duplicates."""
    site = config.sites[site_index]
    rng = np.random.default_rng([config.seed, site_index])
    n_dup = int(round(config.duplicate_fraction * config.images_per_site))
    n_base = config.images_per_site - n_dup
    n_second = int(round(n_base * config.second_view_fraction / (1 + config.second_view_fraction)))
    n_patients = n_base - n_second
    labels = allocate_labels(site.prevalence, n_patients, rng)
    patients = []
    for p, label in enumerate(labels):
        prng = np.random.default_rng([config.seed, site_index, 0, p])
        rate = config.second_lesion_fraction * (1.0 if label == "benign" else 1 / 3)
        two = label != "normal" and prng.random() < rate
        patients.append(_draw_patient(prng, f"{COHORT}/{site.name}/p{p + 1:04d}", label, two))
    second = set(rng.choice(n_patients, size=n_second, replace=False).tolist())
    specs = [ImageSpec(pt, (1, p)) for p, pt in enumerate(patients)]
    specs += [ImageSpec(patients[p], (2, p)) for p in sorted(second)]  # a second view
    specs = [specs[i] for i in rng.permutation(len(specs))]
    for d, source in enumerate(sorted(rng.choice(len(specs), size=n_dup, replace=False).tolist())):
        # Filed under a patient id of its own, as duplicates are in public datasets.
        twin = replace(specs[source].patient, patient_id=f"{COHORT}/{site.name}/p{n_patients + d + 1:04d}")
        specs.append(ImageSpec(twin, (3, d), duplicate_of=source))
    return _shuffled(specs, rng)  # duplicates anywhere in the case order, not at its end


def _shuffled(specs: list[ImageSpec], rng: np.random.Generator) -> list[ImageSpec]:
    order = rng.permutation(len(specs))
    position = {int(old): new for new, old in enumerate(order)}
    return [
        specs[old] if specs[old].duplicate_of is None else replace(specs[old], duplicate_of=position[specs[old].duplicate_of])
        for old in order
    ]


def allocate_labels(prevalence: tuple[float, ...], n: int, rng: np.random.Generator) -> list[str]:
    """Labels in the configured proportions (largest remainder), in random order."""
    exact = np.array(prevalence) * n
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    labels = [label for label, c in zip(LABELS, counts) for _ in range(c)]
    return [labels[i] for i in rng.permutation(n)]


# ----------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class Grid:
    """Pixel centres in millimetres: y is depth below the transducer, x is lateral."""

    size: int
    mm_per_px: float

    @property
    def coords(self) -> tuple[np.ndarray, np.ndarray]:
        axis = ((np.arange(self.size) + 0.5) * self.mm_per_px).astype(np.float32)  # float32: speed
        return axis[:, None], axis[None, :]

    @property
    def extent_mm(self) -> float:
        return self.size * self.mm_per_px


@dataclass(frozen=True)
class Anatomy:
    """Layer boundaries of one view: mean depth (mm) per boundary, and their undulations."""

    depths: tuple[float, ...]  # skin, fat, gland, retromammary fat, muscle bottoms
    wobble_mm: float
    phases: tuple[float, ...]
    tilt: float  # mm of depth change across the field
    ligaments: tuple[tuple[float, float, float], ...]  # (x, depth, curvature) of Cooper's arcs
    lobules: tuple[tuple[float, float, float, float], ...]  # (x, depth, half-width, half-height)


GLAND_MM = ((4.0, 8.0), (7.0, 12.0), (10.0, 16.0), (13.0, 20.0))  # by tissue composition


def _draw_anatomy(rng: np.random.Generator, density: int, extent: float) -> Anatomy:
    skin = rng.uniform(1.4, 2.2)
    fat = rng.uniform(6.0, 12.0) if density < 2 else rng.uniform(3.5, 8.0)
    gland = rng.uniform(*GLAND_MM[density])
    retro = rng.uniform(1.0, 3.0)
    muscle = rng.uniform(5.0, 9.0)
    depths = tuple(np.cumsum([skin, fat, gland, retro, muscle]).tolist())
    ligaments = tuple(
        (rng.uniform(0, extent), rng.uniform(skin + 0.5, skin + fat), rng.uniform(-0.08, 0.08))
        for _ in range(rng.integers(2, 6))
    )
    lobules = tuple(
        (rng.uniform(0, extent), skin + fat * rng.uniform(0.35, 0.65), rng.uniform(2.0, 5.0), fat * rng.uniform(0.2, 0.35))
        for _ in range(rng.integers(0, 3))
    )
    return Anatomy(depths, rng.uniform(0.4, 2.5), tuple(rng.uniform(0, 2 * np.pi, 5)), rng.normal(0, 3.5),
                   ligaments, lobules)


LAYER_ECHO = (0.55, 0.16, 1.0, 0.16, 0.35, 0.03)  # skin, fat, gland, retromammary fat, muscle, chest wall


def _background(anatomy: Anatomy, grid: Grid, rng: np.random.Generator, density: int) -> np.ndarray:
    """Reflectivity of the tissue without lesion (1 = glandular tissue)."""
    y, x = grid.coords
    extent = grid.extent_mm
    layer = np.zeros((grid.size, grid.size), dtype=np.int64)
    for k in range(len(anatomy.depths)):
        layer += y > _boundary(anatomy, k, x, extent)
    echo = np.asarray(LAYER_ECHO, dtype=np.float32)[layer]
    px = 1.0 / grid.mm_per_px
    texture = _blur(rng.standard_normal(echo.shape, dtype=np.float32), (0.5 * px, 1.2 * px))
    texture /= texture.std() + 1e-9
    # Heterogeneous glands mix fat islands into the fibroglandular layer.
    fat_islands = 0.35 if density in (1, 2) else 0.12
    gland = layer == 2
    echo[gland] *= np.clip(1.0 + 0.25 * texture[gland] - fat_islands * (texture[gland] > 0.8), 0.25, 1.6)
    striations = 1.0 + 0.35 * np.sin(2 * np.pi * y / 1.1)  # muscle fibres, about 1 mm apart
    echo = np.where(layer == 4, echo * striations, echo)
    echo += _lines(anatomy, grid)
    return echo


def _lines(anatomy: Anatomy, grid: Grid) -> np.ndarray:
    """Specular reflectors: skin line, Cooper's ligaments, fat-lobule septa, fascia, pleura."""
    y, x = grid.coords
    extent = grid.extent_mm
    out = np.zeros((grid.size, grid.size), dtype=np.float32)
    for k in (0, 3, 4):  # skin, pectoral fascia, pleura-like line below the muscle
        out += 1.5 * np.exp(-(((y - _boundary(anatomy, k, x, extent)) / _thin(grid, 0.25)) ** 2))
    out += 1.2 * np.exp(-(((y - 0.3) / _thin(grid, 0.2)) ** 2))  # the transducer-skin interface
    for lx, ly, curve in anatomy.ligaments:
        arc = ly + curve * (x - lx) ** 2
        out += 1.0 * np.exp(-(((y - arc) / _thin(grid, 0.18)) ** 2)) * np.exp(-(((x - lx) / 6.0) ** 2))
    for lx, ly, a, b in anatomy.lobules:
        rho = np.sqrt(((x - lx) / a) ** 2 + ((y - ly) / b) ** 2)
        out += 0.8 * np.exp(-(((rho - 1.0) * min(a, b) / _thin(grid, 0.2)) ** 2))
    return out


def _blur(values: np.ndarray, sigma) -> np.ndarray:
    """Gaussian blur cut at three sigmas (rather than scipy's four): a third less work, same look."""
    return ndimage.gaussian_filter(values, sigma, truncate=3.0)


def _boundary(anatomy: Anatomy, k: int, x: np.ndarray, extent: float) -> np.ndarray:
    """Depth (mm) of the bottom of layer ``k`` along x: tilted and undulating."""
    wave = np.sin(2 * np.pi * x / extent * (1 + k % 3) + anatomy.phases[k])
    return anatomy.depths[k] + anatomy.tilt * (x / extent - 0.5) + anatomy.wobble_mm * wave


def _thin(grid: Grid, width_mm: float) -> float:
    # A specular line thinner than a pixel would fall between pixel centres and vanish.
    return max(width_mm, 0.6 * grid.mm_per_px)


@dataclass(frozen=True)
class LesionView:
    """A lesion as seen in one image: traits plus position and the view's shape details."""

    traits: LesionTraits
    cx: float
    cy: float
    tilt: float
    harmonics: tuple[tuple[int, float, float], ...]  # (order, relative amplitude, phase)
    spicule_angles: tuple[float, ...]
    spicule_lengths: tuple[float, ...]
    calcifications: tuple[tuple[float, float], ...]  # polar (angle, fraction of radius)

    @property
    def half_width(self) -> float:
        return self.traits.width_mm / 2

    @property
    def half_height(self) -> float:
        return self.traits.width_mm * self.traits.aspect / 2


def _place_lesions(rng: np.random.Generator, traits: tuple[LesionTraits, ...], anatomy: Anatomy,
                   extent: float) -> list[LesionView]:
    views = []
    lanes = [(0.3, 0.7)] if len(traits) == 1 else [(0.22, 0.32), (0.68, 0.78)]
    for t, (lo, hi) in zip(traits, lanes):
        fit = min(1.0, 0.7 * extent / t.width_mm, 0.6 * extent / (t.width_mm * t.aspect))
        t = replace(t, width_mm=t.width_mm * fit)  # a lesion larger than the field is imaged in part
        half_h = t.width_mm * t.aspect / 2
        top = anatomy.depths[1] + half_h * 0.6
        bottom = min(anatomy.depths[2] + 2.0, extent - half_h * 1.3 - 1.0)
        cy = rng.uniform(top, max(top, bottom))
        cx = rng.uniform(lo, hi) * extent
        tilt = rng.normal(0, np.deg2rad(6 + 22 * t.suspicion))
        views.append(LesionView(t, cx, cy, tilt, _harmonics(rng, t), *_spicules(rng, t), _calcs(rng, t)))
    return views


def _harmonics(rng: np.random.Generator, t: LesionTraits) -> tuple[tuple[int, float, float], ...]:
    low = [(k, t.lobulation * rng.uniform(0.3, 1.0) / np.sqrt(k - 1), rng.uniform(0, 2 * np.pi)) for k in range(2, 6)]
    high = [(k, t.angularity * rng.uniform(0.2, 1.0) * 6 / k, rng.uniform(0, 2 * np.pi)) for k in range(6, 15)]
    return tuple((k, float(a), float(p)) for k, a, p in low + high)


def _spicules(rng: np.random.Generator, t: LesionTraits) -> tuple[tuple[float, ...], tuple[float, ...]]:
    angles = tuple(float(a) for a in rng.uniform(0, 2 * np.pi, t.spicules))
    lengths = tuple(float(v) for v in rng.uniform(1.5, 5.0, t.spicules))
    return angles, lengths


def _calcs(rng: np.random.Generator, t: LesionTraits) -> tuple[tuple[float, float], ...]:
    return tuple((float(rng.uniform(0, 2 * np.pi)), float(rng.uniform(0, 0.8))) for _ in range(t.calcifications))


def _window(view: LesionView, grid: Grid, margin_mm: float) -> tuple[slice, slice]:
    """Rows and columns that can hold the lesion plus ``margin_mm``: pixel work stays local."""
    reach = 1.6 * max(view.half_width, view.half_height) + margin_mm  # 1.6: the harmonics' cap

    def span(centre: float) -> slice:
        lo = int(np.floor((centre - reach) / grid.mm_per_px))
        hi = int(np.ceil((centre + reach) / grid.mm_per_px)) + 1
        return slice(min(max(lo, 0), grid.size), min(max(hi, 0), grid.size))

    return span(view.cy), span(view.cx)


def _lesion_frame(view: LesionView, y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel: angle in the lesion's frame, distance to its centre and the boundary radius (mm)."""
    dx, dy = x - view.cx, y - view.cy
    u = dx * np.cos(view.tilt) + dy * np.sin(view.tilt)
    v = -dx * np.sin(view.tilt) + dy * np.cos(view.tilt)
    theta = np.arctan2(v, u)
    return theta, np.hypot(u, v), np.interp(theta, *_boundary_radius(view), period=2 * np.pi)


def _boundary_radius(view: LesionView, samples: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """The boundary's radius (mm) at ``samples`` angles: an ellipse times its harmonics."""
    theta = np.linspace(-np.pi, np.pi, samples, endpoint=False)
    ellipse = 1.0 / np.sqrt((np.cos(theta) / view.half_width) ** 2 + (np.sin(theta) / view.half_height) ** 2)
    wiggle = sum(a * np.cos(k * theta + p) for k, a, p in view.harmonics)
    return theta, ellipse * np.clip(1.0 + wiggle, 0.55, 1.6)


def lesion_mask(view: LesionView, grid: Grid) -> np.ndarray:
    """The annotated lesion: the region inside the boundary (spicules are not traced)."""
    rows, cols = _window(view, grid, 0.0)
    y, x = grid.coords
    _, dist, radius = _lesion_frame(view, y[rows], x[:, cols])
    mask = np.zeros((grid.size, grid.size), dtype=bool)
    mask[rows, cols] = dist < radius
    return mask


def _paint_lesion(echo: np.ndarray, view: LesionView, grid: Grid, rng: np.random.Generator) -> None:
    """Draw the lesion into ``echo`` (in place): interior, margin, capsule or halo, spicules, calcifications."""
    t = view.traits
    # Beyond six edge widths, the halo and the longest spicule nothing changes.
    rows, cols = _window(view, grid, 6 * t.edge_mm + 2.5 + max(view.spicule_lengths, default=0.0))
    y, x = grid.coords
    y, x = y[rows], x[:, cols]
    theta, dist, radius = _lesion_frame(view, y, x)
    signed = dist - radius  # mm, negative inside
    inside = 1.0 / (1.0 + np.exp(np.clip(signed / t.edge_mm, -50, 50)))
    texture = _blur(rng.standard_normal(signed.shape, dtype=np.float32), 0.5 / grid.mm_per_px)
    texture /= texture.std() + 1e-9
    interior = t.echo * np.clip(1.0 + t.heterogeneity * texture, 0.1, 3.0)
    out = echo[rows, cols] * (1 - inside) + interior * inside
    out += 0.9 * t.capsule * np.exp(-((signed / _thin(grid, 0.2)) ** 2))
    if t.halo_mm:
        ring = np.exp(-(((signed - t.halo_mm / 2) / (t.halo_mm / 2)) ** 4))
        out += 0.8 * ring * (1 + 0.3 * texture)
    for angle, length in zip(view.spicule_angles, view.spicule_lengths):
        out *= 1.0 - 0.75 * _spicule(theta, dist, radius, angle, length)
    for angle, frac in view.calcifications:
        u, v = frac * view.half_width * np.cos(angle), frac * view.half_height * np.sin(angle)
        cx = view.cx + u * np.cos(view.tilt) - v * np.sin(view.tilt)
        cy = view.cy + u * np.sin(view.tilt) + v * np.cos(view.tilt)
        out += 4.0 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / _thin(grid, 0.12) ** 2)
    echo[rows, cols] = np.maximum(out, 0.0)


def _spicule(theta, dist, radius, angle, length) -> np.ndarray:
    """A thin hypoechoic line leaving the boundary radially and tapering off."""
    along = dist - radius
    across = dist * np.abs(np.sin(theta - angle))
    forward = np.cos(theta - angle) > 0
    taper = np.clip(1.0 - along / length, 0.0, 1.0) * (along > -0.5)
    return forward * taper * np.exp(-((across / 0.3) ** 2))


def _posterior_db(views: list[LesionView], grid: Grid) -> np.ndarray:
    """Posterior acoustic features below each lesion, plus edge shadows of smooth ones."""
    out = np.zeros((grid.size, grid.size))
    y, x = grid.coords
    for view in views:
        mask = lesion_mask(view, grid)
        if not mask.any():
            continue
        columns = mask.any(axis=0)
        bottom = grid.size - 1 - np.argmax(mask[::-1], axis=0)
        below = (np.arange(grid.size)[:, None] > bottom[None, :]) & columns[None, :]
        out += view.traits.posterior_db * below
        smooth = max(0.0, 1.0 - 6 * view.traits.angularity - view.traits.edge_mm)
        if smooth > 0:  # refraction at the curved sides of a smooth, round lesion
            cols = np.flatnonzero(columns)
            for edge in (cols[0], cols[-1]):
                side = (x - (edge + 0.5) * grid.mm_per_px) / 0.35
                out -= 8.0 * smooth * np.exp(-(side**2)) * (y > view.cy)
    return _blur(out, (1.0 / grid.mm_per_px, 0.6 / grid.mm_per_px))


def _operator_db(grid: Grid, rng: np.random.Generator) -> np.ndarray:
    """What the sonographer changes per image: overall gain, the time-gain sliders, probe contact."""
    y, x = grid.coords
    sliders = rng.normal(0, 2.5, 4)  # dB at four depths, interpolated like a TGC panel
    tgc = np.interp(y[:, 0], np.linspace(0, grid.extent_mm, 4), sliders)[:, None]
    out = rng.normal(0, 2.0) + tgc
    if rng.random() < 0.3:  # one edge of the probe lifted off the skin
        edge = x if rng.random() < 0.5 else grid.extent_mm - x
        out = out - rng.uniform(6, 15) * np.clip(1 - edge / (0.2 * grid.extent_mm), 0, 1)
    return out


def _echo_envelope(reflectivity: np.ndarray, site: SiteProfile, grid: Grid, rng: np.random.Generator) -> np.ndarray:
    """Envelope of the echo: scatterers of the given strength blurred by the point-spread function.

    Convolving complex Gaussian scatterers gives fully developed (Rayleigh) speckle whose
    grain is the point-spread function's; the normalisation makes the mean square
    envelope equal the squared reflectivity.
    """
    sigma = (site.psf_mm[0] / grid.mm_per_px, site.psf_mm[1] / grid.mm_per_px)
    shape = reflectivity.shape
    real = _blur(reflectivity * rng.standard_normal(shape, dtype=np.float32), sigma)
    imag = _blur(reflectivity * rng.standard_normal(shape, dtype=np.float32), sigma)
    return np.hypot(real, imag) / _speckle_norm(sigma)


def _speckle_norm(sigma: tuple[float, float]) -> float:
    """RMS envelope of unit scatterers: sqrt(2 * sum of the squared blur kernel)."""
    delta = np.zeros((41, 41))
    delta[20, 20] = 1.0
    return float(np.sqrt(2.0 * (_blur(delta, sigma) ** 2).sum()))


def _display(envelope: np.ndarray, site: SiteProfile, grid: Grid) -> np.ndarray:
    """Log compression with the site's gain and dynamic range, then its speckle reduction."""
    db = 20 * np.log10(envelope + 1e-5) + site.gain_db
    level = np.clip((db + site.dynamic_range_db) / site.dynamic_range_db, 0.0, 1.0)
    if site.speckle_reduction_mm:
        level = _blur(level, site.speckle_reduction_mm / grid.mm_per_px)
    return level


def render(patient: Patient, site: SiteProfile, size: int, rng: np.random.Generator):
    """One view of a patient: uint8 HxW grey image (before the file tint) and lesion masks."""
    full = Grid(size, site.pixel_spacing_mm)
    work_size = int(round(size * site.resolution))
    work = Grid(work_size, full.extent_mm / work_size)  # a coarser scanner renders fewer pixels
    anatomy = _draw_anatomy(rng, patient.density, full.extent_mm)
    views = _place_lesions(rng, patient.lesions, anatomy, full.extent_mm)
    echo = _background(anatomy, work, rng, patient.density)
    for lesion in views:
        _paint_lesion(echo, lesion, work, rng)
    y, _ = work.coords
    gain_db = -site.attenuation_db_per_cm * y / 10.0 + _operator_db(work, rng) + _posterior_db(views, work)
    envelope = _echo_envelope(echo * 10 ** (gain_db / 20), site, work, rng)
    level = _display(envelope, site, work)
    if work.size != size:
        level = ndimage.zoom(level, size / work.size, order=1, mode="nearest")[:size, :size]
    image = np.clip(np.round(level * 255), 0, 255).astype(np.uint8)
    if site.ruler:
        _burn_ruler(image, full)
    masks = _disjoint([lesion_mask(lesion, full) for lesion in views])
    return image, masks


def _disjoint(masks: list[np.ndarray]) -> list[np.ndarray]:
    taken = np.zeros_like(masks[0]) if masks else None
    out = []
    for mask in masks:
        out.append(mask & ~taken)
        taken |= mask
    return out


def _burn_ruler(image: np.ndarray, grid: Grid) -> None:
    """Depth-scale ticks every 5 mm on the right edge, as scanners print them."""
    for depth in np.arange(5.0, grid.extent_mm, 5.0):
        row = int(depth / grid.mm_per_px)
        image[max(0, row - 1) : row + 1, -5:] = 235


def near_duplicate(image: np.ndarray, masks: list[np.ndarray], rng: np.random.Generator):
    """The same scan saved again: shifted a few pixels, regained, with caliper crosses."""
    dy, dx = (int(v) for v in rng.integers(-2, 3, size=2))
    shifted = ndimage.shift(image, (dy, dx), order=0, mode="nearest")
    out = np.clip(np.round(shifted * rng.uniform(0.95, 1.05)), 0, 255).astype(np.uint8)
    moved = [ndimage.shift(m, (dy, dx), order=0, mode="constant", cval=False) for m in masks]
    for mask in moved[:1]:
        ys, xs = np.nonzero(mask)
        if len(xs):
            for cx, cy in ((xs.min(), int(ys.mean())), (xs.max(), int(ys.mean()))):
                _caliper(out, cy, cx)
    return out, moved


def _caliper(image: np.ndarray, cy: int, cx: int) -> None:
    h, w = image.shape
    image[max(0, cy - 3) : min(h, cy + 4), min(max(cx, 0), w - 1)] = 250
    image[min(max(cy, 0), h - 1), max(0, cx - 3) : min(w, cx + 4)] = 250


# ----------------------------------------------------------------------------- colour


def tint_lut(tint: tuple[float, float, float]) -> np.ndarray:
    """(256, 3) uint8: a tinted RGB triple per grey level whose PIL luminance is that level.

    The tint shows in the file (a reader that picks one channel gets it wrong), but
    ``convert("L")`` returns the grey image exactly, so a site's pixels survive the round
    trip through its RGB files.
    """
    lut = np.zeros((256, 3), dtype=np.uint8)
    for level in range(256):
        lut[level] = _tinted_triple(level, tint)
    check = np.asarray(Image.fromarray(lut[None]).convert("L"))[0]
    if not np.array_equal(check, np.arange(256)):
        raise RuntimeError("tint_lut: PIL's luminance formula differs from the one assumed")
    return lut


def _tinted_triple(level: int, tint: tuple[float, float, float]) -> tuple[int, int, int]:
    # Pillow's RGB->L: (R*19595 + G*38470 + B*7471 + 0x8000) >> 16. Solve for G, and pull
    # the tint towards grey where the solution would leave 0..255 (near black and white).
    for strength in np.linspace(1.0, 0.0, 11):
        r = int(np.clip(round(level * (1 + (tint[0] - 1) * strength)), 0, 255))
        b = int(np.clip(round(level * (1 + (tint[2] - 1) * strength)), 0, 255))
        g_exact = (level * 65536 - r * 19595 - b * 7471) / 38470
        for g in (int(np.floor(g_exact)), int(np.ceil(g_exact)), int(np.floor(g_exact)) - 1):
            if 0 <= g <= 255 and (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16 == level:
                return r, g, b
    return level, level, level


# ----------------------------------------------------------------------------- cohort


def generate(config: SyntheticConfig | None = None, progress: bool = True) -> Cohort:
    """The synthetic cohort in memory: table rows plus ``Cohort.arrays`` (image, masks)."""
    config = config or SyntheticConfig()
    rows, arrays = [], {}
    total = config.images_per_site * len(config.sites)
    bar = tqdm(total=total, desc="synthetic cohort", unit="img", disable=not progress, leave=False)
    for site_index, site in enumerate(config.sites):
        plan = site_plan(config, site_index)
        case_ids = [f"{COHORT}/{site.name}/{i + 1:04d}" for i in range(len(plan))]
        # Sources are rendered before the near-duplicates that copy them.
        for i in sorted(range(len(plan)), key=lambda i: plan[i].duplicate_of is not None):
            spec = plan[i]
            rng = np.random.default_rng([config.seed, site_index, *spec.key])
            if spec.duplicate_of is None:
                arrays[case_ids[i]] = render(spec.patient, site, config.image_size, rng)
            else:
                arrays[case_ids[i]] = near_duplicate(*arrays[case_ids[spec.duplicate_of]], rng)
            bar.update()
        for i, spec in enumerate(plan):
            source_id = None if spec.duplicate_of is None else case_ids[spec.duplicate_of]
            rows.append(_row(case_ids[i], spec, site, *arrays[case_ids[i]], source_id))
    bar.close()
    table = pd.DataFrame(rows)
    return Cohort(COHORT, table, metadata_columns(), {}, [], None, arrays).validate()


def _row(case_id: str, spec: ImageSpec, site: SiteProfile, image: np.ndarray, masks: list[np.ndarray],
         duplicate_of: str | None) -> dict[str, Any]:
    # The keys and their order are those of readers.base.load_cases, so a written and
    # re-read cohort has the same table.
    height, width = image.shape
    return {
        "case_id": case_id,
        "patient_id": spec.patient.patient_id,
        "cohort": COHORT,
        "site": site.name,
        "scanner": site.scanner,
        "modality": "US",
        "image_path": None,
        "mask_paths": [],
        "other_mask_paths": [],
        "label": spec.patient.label,
        "pixel_spacing_mm": float(site.pixel_spacing_mm),
        "width": width,
        "height": height,
        "mask_kind": "outline",
        "lesion_bboxes": [bbox_from_mask(m) for m in masks],
        **recorded_metadata(spec.patient.metadata, site),
        "duplicate_of": duplicate_of,
    }


def recorded_metadata(values: dict[str, Any], site: SiteProfile) -> dict[str, Any]:
    """The metadata as the site records it: columns it does not record are missing."""
    return {
        name: _copy(values[name]) if name in site.records else (np.nan if col.kind is Kind.NUMERIC else None)
        for name, col in METADATA_COLUMNS.items()
    }


def _copy(value: Any) -> Any:
    # Two views of a patient must not share one list object in the table.
    return list(value) if isinstance(value, list) else value


# ----------------------------------------------------------------------------- files


def image_relpath(site: str, label: str, case_id: str) -> str:
    """Where a case's image goes under the root: the BUSI layout, one folder per site."""
    return f"{site}/{BUSI_FOLDER}/{label}/{case_id.rsplit('/', 1)[1]}.png"


def mask_relpaths(image_relpath: str, n_lesions: int) -> list[str]:
    """BUSI's names: ``<name>_mask.png``, then ``<name>_mask_1.png`` for a second lesion."""
    stem = image_relpath.removesuffix(".png")
    return [f"{stem}_mask.png" if k == 0 else f"{stem}_mask_{k}.png" for k in range(n_lesions)]


CSV_COLUMNS = ("case_id", "patient_id", "site", "scanner", "image", "masks", "label", "pixel_spacing_mm",
               *ALL_METADATA, "duplicate_of")


def write(config: SyntheticConfig, root: str | Path, cohort: Cohort | None = None, progress: bool = True) -> Path:
    """Write the cohort of ``config`` under ``root``; return ``root``.

    Files: ``senolab_synthetic.json`` (the config), ``metadata.csv`` (one row per image)
    and ``<site>/Dataset_BUSI_with_GT/<label>/<name>.png`` with ``<name>_mask[_k].png``
    (0/255). Pass ``cohort`` when it is already generated from ``config``. The same
    config gives byte-identical files. ``root`` must be empty, new, or hold the same config.
    """
    root = Path(root)
    _check_target(root, config)
    cohort = cohort if cohort is not None else generate(config, progress)
    tints = {s.name: tint_lut(s.tint) for s in config.sites if s.tint is not None}
    records = []
    for row in tqdm(cohort.table.to_dict("records"), desc="writing synthetic", unit="img",
                    disable=not progress, leave=False):
        image, masks = cohort.arrays[row["case_id"]]
        image_rel = image_relpath(row["site"], row["label"], row["case_id"])
        mask_rels = mask_relpaths(image_rel, len(masks))
        pixels = tints[row["site"]][image] if row["site"] in tints else image
        _save_png(pixels, root / image_rel)
        for mask, rel in zip(masks, mask_rels):
            _save_png(mask.astype(np.uint8) * 255, root / rel)
        records.append(_csv_record(row, image_rel, mask_rels))
    pd.DataFrame(records, columns=list(CSV_COLUMNS)).to_csv(root / METADATA_FILE, index=False, lineterminator="\n")
    (root / CONFIG_FILE).write_text(json.dumps({**FORMAT, "config": config.to_dict()}, indent=1, sort_keys=True) + "\n")
    return root


def _check_target(root: Path, config: SyntheticConfig) -> None:
    if not root.exists() or not any(root.iterdir()):
        root.mkdir(parents=True, exist_ok=True)
        return
    existing = root / CONFIG_FILE
    if not existing.is_file():
        raise CohortError(f"{root}: not empty and not a synthetic cohort (no {CONFIG_FILE}); refusing to write")
    if read_config(root) != config:
        raise CohortError(f"{root}: holds a synthetic cohort of another config; write to an empty folder")


def read_config(root: str | Path) -> SyntheticConfig:
    """The config recorded in ``root/senolab_synthetic.json``."""
    path = Path(root) / CONFIG_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CohortError(f"{path}: unreadable synthetic cohort config ({err})") from None
    if {k: data.get(k) for k in FORMAT} != FORMAT:
        raise CohortError(f"{path}: expected {FORMAT}, got format {data.get('format')!r} version {data.get('version')!r}")
    try:
        return SyntheticConfig.from_dict(data["config"])
    except (KeyError, TypeError, ValueError) as err:
        raise CohortError(f"{path}: field 'config' is not a valid SyntheticConfig ({err})") from None


def _save_png(pixels: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="PNG")


def _csv_record(row: dict[str, Any], image_rel: str, mask_rels: list[str]) -> dict[str, str]:
    record = {
        "case_id": row["case_id"],
        "patient_id": row["patient_id"],
        "site": row["site"],
        "scanner": row["scanner"],
        "image": image_rel,
        "masks": MULTI_SEPARATOR.join(mask_rels),
        "label": row["label"],
        "pixel_spacing_mm": repr(float(row["pixel_spacing_mm"])),
        "duplicate_of": row["duplicate_of"] or "",
    }
    for name, col in METADATA_COLUMNS.items():
        record[name] = format_cell(row[name], col)
    return record


def format_cell(value: Any, column: Column) -> str:
    """A metadata value as written in ``metadata.csv``: empty when missing, sets joined by '&'."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if column.kind is Kind.MULTI:
        return MULTI_SEPARATOR.join(value)
    if column.kind is Kind.NUMERIC:
        return repr(float(value))
    return str(value)


def parse_cell(text: str, column: Column) -> Any:
    """The inverse of :func:`format_cell`; ValueError naming the column on a bad value."""
    text = text.strip()
    if not text:
        return np.nan if column.kind is Kind.NUMERIC else None
    if column.kind is Kind.NUMERIC:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"column {column.name!r}: expected a number, got {text!r}") from None
    values = sorted({v.strip() for v in text.split(MULTI_SEPARATOR)}) if column.kind is Kind.MULTI else [text]
    unknown = [v for v in values if v not in column.levels]
    if unknown:
        raise ValueError(f"column {column.name!r}: {unknown} not among levels {column.levels}")
    return values if column.kind is Kind.MULTI else text
