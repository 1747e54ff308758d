"""Near-duplicate images within and across cohorts, by perceptual hashing.

BUSI is known to contain near-duplicates (the same scan saved twice, cropped or re-
annotated). Splitting them across folds leaks the test set into training, so every
duplicate group must fall in one fold (:mod:`senolab.cohorts.splits` enforces it).

The hash is a DCT perceptual hash (pHash): the image is reduced to 32x32, the 8x8
lowest-frequency DCT coefficients are compared with their median, giving 64 bits that
survive resizing, re-compression and small intensity changes. Two images whose hashes
differ in at most ``max_distance`` bits are linked; groups are the connected components.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image
from scipy.fft import dctn
from tqdm.auto import tqdm

from senolab.cohorts.schema import Cohort

# Bits out of 64, chosen by looking at BUSI pairs at each distance: at 0-6 the same scan
# saved twice (sometimes under two classes); at 8-10 the same lesion with and without
# calipers, or the next frame of the same sweep (same patient, so it must be grouped);
# at 12 unrelated scans of similar anatomy start to match (benign (425) vs benign (5)).
# Most BUSI images have no neighbour closer than 14.
DEFAULT_MAX_DISTANCE = 10
# Mammograms share their lowest frequencies (a breast on a dark ground, chest wall on one
# side), so the hash cannot tell near-copies from other women there: on mini-MIAS, films of
# different women (and labels) lie 2 bits apart, and at 10 bits one "group" held 133 of
# its 322 images. For MG only re-saved copies (0-1 bits) are linked; the patient grouping
# of a woman's films does the rest.
MAX_DISTANCE_BY_MODALITY = {"US": DEFAULT_MAX_DISTANCE, "MR": DEFAULT_MAX_DISTANCE, "MG": 1}


def phash(image: np.ndarray) -> np.uint64:
    """64-bit DCT perceptual hash of a uint8 HxW image."""
    small = np.asarray(Image.fromarray(image).resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    low = dctn(small, norm="ortho")[:8, :8].ravel()
    bits = low > np.median(low[1:])  # the DC term is left out of the median: it is brightness
    return np.uint64(sum(1 << i for i, b in enumerate(bits) if b))


def hamming_matrix(hashes: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances between 64-bit hashes (n x n, uint8)."""
    as_bytes = hashes.astype(">u8").view(np.uint8).reshape(-1, 8)
    bits = np.unpackbits(as_bytes, axis=1).astype(np.uint8)  # n x 64
    # distance = ones(a) + ones(b) - 2 * common ones
    ones = bits.sum(1, dtype=np.int32)
    common = bits.astype(np.int32) @ bits.T.astype(np.int32)
    return (ones[:, None] + ones[None, :] - 2 * common).astype(np.uint8)


# The hash squeezes every image to a square, so a portrait BUS-BRA frame and a landscape
# BrEaST frame can collide; copies of one scan keep their shape. Two images are only linked
# when their width/height ratios differ by at most this fraction.
MAX_ASPECT_DIFFERENCE = 0.05


def duplicate_groups(
    hashes: np.ndarray, max_distance: int | np.ndarray = DEFAULT_MAX_DISTANCE, aspects: np.ndarray | None = None
) -> np.ndarray:
    """Group index per image: images linked by a chain of near-duplicates share one.

    ``max_distance`` may be one per image (by modality): a pair is linked within the
    smaller of its two. ``aspects`` (width / height per image), when given, keeps images
    of different shapes apart whatever their hashes.
    """
    n = len(hashes)
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    limit = np.broadcast_to(np.asarray(max_distance), (n,))
    close = hamming_matrix(hashes) <= np.minimum(limit[:, None], limit[None, :])
    if aspects is not None:
        aspects = np.asarray(aspects, dtype=np.float64)
        close &= np.abs(aspects[:, None] / aspects[None, :] - 1.0) <= MAX_ASPECT_DIFFERENCE
    for i, j in zip(*np.nonzero(np.triu(close, k=1))):
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    roots = np.array([find(i) for i in range(n)])
    _, group = np.unique(roots, return_inverse=True)
    return group


def image_hashes(cohort: Cohort, progress: bool = True) -> np.ndarray:
    from senolab.cohorts.pixels import case_image

    rows = cohort.table.to_dict("records")
    return np.array(
        [phash(case_image(cohort, row)) for row in tqdm(rows, desc="hashing", disable=not progress, leave=False)],
        dtype=np.uint64,
    )


def mark_duplicates(cohort: Cohort, max_distance: int | None = None, progress: bool = True) -> Cohort:
    """Add ``phash`` and ``duplicate_group`` columns (in place) and return the cohort.

    ``max_distance`` (bits) defaults to each image's modality's (MAX_DISTANCE_BY_MODALITY).

    ``duplicate_group`` is a string id shared by near-duplicates ("dup0007") and the
    case's own id for an image with no duplicate, so it can always be used as a group.
    Run it on a combined study to find duplicates across cohorts too.
    """
    hashes = image_hashes(cohort, progress)
    if max_distance is None:
        max_distance = cohort.table["modality"].map(MAX_DISTANCE_BY_MODALITY).to_numpy(int)
    groups = duplicate_groups(hashes, max_distance, (cohort.table["width"] / cohort.table["height"]).to_numpy())
    sizes = np.bincount(groups)
    table = cohort.table
    table["phash"] = [f"{int(h):016x}" for h in hashes]
    table["duplicate_group"] = [
        f"dup{g:05d}" if sizes[g] > 1 else case_id for g, case_id in zip(groups, table["case_id"])
    ]
    return cohort


def duplicate_report(table: pd.DataFrame) -> pd.DataFrame:
    """One row per duplicate group of two or more images: its cases, cohorts and labels."""
    if "duplicate_group" not in table.columns:
        raise KeyError("no 'duplicate_group' column: run mark_duplicates first")
    grouped = table.groupby("duplicate_group").filter(lambda g: len(g) > 1)
    rows = [
        {
            "duplicate_group": gid,
            "n_images": len(g),
            "cohorts": sorted(set(g["cohort"])),
            "labels": sorted(set(g["label"])),
            "case_ids": list(g["case_id"]),
        }
        for gid, g in grouped.groupby("duplicate_group")
    ]
    return pd.DataFrame(rows, columns=["duplicate_group", "n_images", "cohorts", "labels", "case_ids"])
