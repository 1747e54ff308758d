"""Reading speed: images per second of the manifest reader on PNG and on DICOM, and of
`senolab cohorts describe` on mini-MIAS.

    python benchmarks/read_speed.py [--images 200] [--size 512] [--repeats 3]

1. manifest, PNG: N random 8-bit PNG images (``--size`` square) listed in a manifest.csv,
   each with a lesion mask; ``read_cohort`` on the folder (every image and mask decoded
   and checked, as every reader does);
2. manifest, DICOM: the same images as 16-bit (12 bits stored) DICOM files built with
   pydicom, the masks staying PNG: the reader also reads each header (modality,
   laterality, view, spacing) and decodes the pixels through the radiology pipeline;
3. ``senolab cohorts describe ../shared/data/mias`` (a subprocess: reading, duplicate
   hashing and the summary, as a user runs it), when that folder and its reader exist.

The files are written to a temporary folder before any timing; each timing is the best
of ``--repeats`` runs (the page cache is warm after the first). The machine's load average
is printed: on a shared machine the figures are lower bounds.
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from senolab.cohorts.readers import read_cohort
from senolab.errors import InputError

REPO = Path(__file__).resolve().parents[1]
MIAS = REPO.parent / "shared" / "data" / "mias"
sys.path.insert(0, str(REPO / "tests"))  # the tests' DICOM builder writes the mammogram files


def write_cohort(folder: Path, n: int, size: int, dicom: bool) -> None:
    """``n`` images with a square lesion mask each, and their manifest."""
    from dicom_builders import mammogram_dicom

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    mask = np.zeros((size, size), np.uint8)
    mask[size // 4:size // 2, size // 3:size // 2] = 255
    rows = []
    for k in range(n):
        stored = rng.integers(0, 4096, (size, size), dtype=np.uint16)
        image = f"img{k}.dcm" if dicom else f"img{k}.png"
        if dicom:
            mammogram_dicom(folder / image, stored, bits_stored=12, patient_id=f"P{k}")
        else:
            Image.fromarray((stored >> 4).astype(np.uint8)).save(folder / image)
        Image.fromarray(mask).save(folder / f"img{k}_mask.png")
        rows.append({"image": image, "mask": f"img{k}_mask.png", "label": ("benign", "malignant")[k % 2],
                     "patient": f"p{k}"})
    with (folder / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (folder / "manifest.yaml").write_text(f"name: bench\nmodality: {'MG' if dicom else 'US'}\n")


def best_seconds(action, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times)


def manifest_speed(n: int, size: int, dicom: bool, repeats: int) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "cohort"
        write_cohort(folder, n, size, dicom)
        cohort = read_cohort(folder, progress=False)
        assert len(cohort) == n and not cohort.problems, cohort.problems
        seconds = best_seconds(lambda: read_cohort(folder, progress=False), repeats)
    kind = "DICOM 16-bit (12 stored)" if dicom else "PNG 8-bit"
    return f"manifest reader, {kind}, {n} images {size}x{size} + PNG masks: {n / seconds:.1f} images/s ({seconds:.2f} s)"


def describe_mias_speed(repeats: int) -> str:
    if not MIAS.is_dir():
        return f"cohorts describe mini-MIAS: skipped ({MIAS} not found)"
    read_cohort(MIAS, progress=False)  # warms the page cache; also fails early without its reader
    n = len(read_cohort(MIAS, progress=False))
    command = [sys.executable, "-m", "senolab.cli", "cohorts", "describe", str(MIAS), "--json"]

    def describe() -> None:
        subprocess.run(command, check=True, capture_output=True)

    seconds = best_seconds(describe, repeats)
    return (f"senolab cohorts describe {MIAS.name} (subprocess, start-up included): {n} images in {seconds:.1f} s, "
            f"{n / seconds:.1f} images/s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"load average at start: {', '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} cores")
    print(manifest_speed(args.images, args.size, dicom=False, repeats=args.repeats))
    print(manifest_speed(args.images, args.size, dicom=True, repeats=args.repeats))
    try:
        print(describe_mias_speed(args.repeats))
    except (InputError, subprocess.CalledProcessError) as err:  # e.g. no mini-MIAS reader yet: say so, go on
        print(f"cohorts describe mini-MIAS: skipped ({type(err).__name__}: {str(err).splitlines()[0]})")
    print(f"load average at end: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
