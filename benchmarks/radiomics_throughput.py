"""Radiomics throughput: a plain pyradiomics loop vs senolab's extraction, cold and warm.

    python benchmarks/radiomics_throughput.py [--lesions 150] [--jobs N] [--seed 0]

The same 2D feature set (senolab's shipped default_2d.yaml) on the same real lesions from
``../shared/data`` (a third from each of BUSI, BUS-BRA and BrEaST, drawn with ``--seed``),
in one process:

1. plain loop: what a user writes - one pyradiomics extractor built once, then per lesion
   decode image and mask (senolab.cohorts.imaging), convert to SimpleITK, ``execute``;
2. senolab, one process, no cache (``jobs=1``): what the worker set-up alone changes
   (single-threaded ITK, quiet logger, an image decoded once per case);
3. senolab cold: ``extract_features(jobs=N)`` with an empty cache (pool start, hashing and
   cache writes included);
4. senolab warm: the same call again, everything from the cache.

It prints lesions per second, the ratios to the plain loop and the CPU seconds spent
(workers included), checks that every feature value is identical to the plain loop's,
and exits non-zero if one is not. The machine's load average is printed too: the
parallel speed-up needs the cores to be free. Targets: cold >=
1.8x the plain loop on 2 cores, warm >= 50x. Reading the cohort tables (the readers open
every image) is setup, outside every timing.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from senolab.cohorts.imaging import load_gray, load_mask
from senolab.cohorts.readers import read_cohort
from senolab.cohorts.schema import Cohort, combine
from senolab.radiomics import extract_features, feature_columns, load_params
from senolab.radiomics.extract import available_cores, resolved_spacing

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DATASETS = ("busi", "busbra", "breast")


def pick_lesions(n_lesions: int, seed: int) -> Cohort:
    """About n_lesions / 3 lesions from each dataset: whole cases, drawn at random."""
    cohorts = []
    for name in DATASETS:
        cohort = read_cohort(DATA / name)
        table = cohort.table[cohort.table["mask_paths"].map(len) > 0]
        table = table.iloc[np.random.default_rng(seed).permutation(len(table))]
        counts = table["mask_paths"].map(len).cumsum()
        share = n_lesions // len(DATASETS) + (1 if DATASETS.index(name) < n_lesions % len(DATASETS) else 0)
        cohort.table = table[counts <= share].reset_index(drop=True)
        cohorts.append(cohort)
    return combine(cohorts, name="benchmark")


def plain_loop(cohort: Cohort, params: dict) -> dict[tuple[str, int], dict[str, float]]:
    """pyradiomics as a user calls it: one extractor, one execute per lesion."""
    import SimpleITK as sitk
    from radiomics.featureextractor import RadiomicsFeatureExtractor

    extractor = RadiomicsFeatureExtractor(params)
    out = {}
    for row in cohort.table.itertuples():
        spacing = resolved_spacing(row.pixel_spacing_mm)
        for index, mask_path in enumerate(row.mask_paths):
            image = sitk.GetImageFromArray(load_gray(row.image_path).astype(np.float64))
            mask = sitk.GetImageFromArray(load_mask(mask_path).astype(np.uint8))
            image.SetSpacing((spacing, spacing))
            mask.SetSpacing((spacing, spacing))
            result = extractor.execute(image, mask)
            out[(row.case_id, index)] = {k: float(v) for k, v in result.items() if not k.startswith("diagnostics_")}
    return out


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the pool's workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(fn):
    """(value, wall seconds, CPU seconds)."""
    start, cpu = time.perf_counter(), cpu_seconds()
    value = fn()
    return value, time.perf_counter() - start, cpu_seconds() - cpu


def mismatches(table: pd.DataFrame, reference: dict[tuple[str, int], dict[str, float]]) -> list[str]:
    """Features that differ from the plain loop (NaN equals NaN)."""
    bad = []
    indexed = table.set_index(["case_id", "lesion_index"])
    for key, features in reference.items():
        row = indexed.loc[key]
        if list(features) != feature_columns(table):
            bad.append(f"{key}: feature names differ")
        for name, value in features.items():
            ours = float(row[name])
            if not (ours == value or (math.isnan(ours) and math.isnan(value))):
                bad.append(f"{key} {name}: {ours!r} != {value!r}")
    return bad


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lesions", type=int, default=150)
    parser.add_argument("--jobs", type=int, default=available_cores())
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not DATA.exists():
        print(f"real datasets not found at {DATA}", file=sys.stderr)
        return 2
    logging.getLogger("radiomics").setLevel(logging.WARNING)  # the plain loop would print warnings too

    cohort = pick_lesions(args.lesions, args.seed)
    n = int(cohort.table["mask_paths"].map(len).sum())
    params = load_params()
    print(f"{n} lesions ({', '.join(f'{k} {v}' for k, v in cohort.table['cohort'].value_counts().items())} cases); "
          f"{args.jobs} jobs on {available_cores()} cores; pyradiomics {params.pyradiomics_version}")

    load_before = os.getloadavg()[0]
    reference, t_plain, cpu_plain = timed(lambda: plain_loop(cohort, params.params))
    single, t_single, cpu_single = timed(lambda: extract_features(cohort, params, jobs=1, use_cache=False,
                                                                  progress=False))
    with tempfile.TemporaryDirectory() as cache:
        def senolab():
            return extract_features(cohort, params, jobs=args.jobs, cache_dir=cache, progress=False)

        cold, t_cold, cpu_cold = timed(senolab)
        warm, t_warm, cpu_warm = timed(senolab)

    rows = [
        ("plain pyradiomics loop", t_plain, cpu_plain),
        ("senolab, 1 process, no cache", t_single, cpu_single),
        (f"senolab cold cache, -j {args.jobs}", t_cold, cpu_cold),
        ("senolab warm cache", t_warm, cpu_warm),
    ]
    print(f"{'':34s} {'wall s':>8s} {'lesions/s':>10s} {'vs plain':>9s} {'CPU s':>8s}")
    for name, seconds, cpu in rows:
        print(f"{name:34s} {seconds:8.3f} {n / seconds:10.1f} {t_plain / seconds:8.1f}x {cpu:8.2f}")
    # Other programs on the machine take cores from the pool: say how busy it was.
    load_after = os.getloadavg()[0]
    print(f"1-minute load average: {load_before:.1f} before, {load_after:.1f} after, on {available_cores()} cores")
    print(f"targets: cold >= 1.8x ({'met' if t_plain / t_cold >= 1.8 else 'NOT met'}), "
          f"warm >= 50x ({'met' if t_plain / t_warm >= 50 else 'NOT met'})")
    assert cold.stats == {"computed": n, "from_cache": 0} and warm.stats == {"computed": 0, "from_cache": n}

    bad = [m for result in (single, cold, warm) for m in mismatches(result.table, reference)]
    failed = sum(int((r.table["status"] == "failed").sum()) for r in (single, cold, warm))
    print(f"feature values identical to the plain loop: {'yes' if not bad else 'NO'} "
          f"({len(reference)} lesions x {len(feature_columns(cold.table))} features, 3 runs; {failed} failed rows)")
    for line in bad[:10]:
        print("  " + line)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
