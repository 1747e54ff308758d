"""Features of every lesion of every case of a cohort: planned, cached, computed in parallel.

:func:`extract_features` hashes each case's files (no decoding) to find what the cache
already holds, sends the rest, one task per image, to a pool of worker processes whose
pyradiomics extractor is built once (:mod:`senolab.radiomics.worker`), stores every new
outcome, and assembles the tidy table of :mod:`senolab.radiomics.table`.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from senolab.cohorts.schema import Cohort
from senolab.radiomics import worker
from senolab.radiomics.cache import FeatureCache, content_hash, lesion_key
from senolab.radiomics.parameters import RadiomicsParams, load_params
from senolab.radiomics.table import (
    FAILED,
    ID_COLUMNS,
    NO_LESION,
    OK,
    PROVENANCE,
    FeatureTable,
    RadiomicsError,
    failure_lines,
)

# Spacing given to pyradiomics when the cohort does not know it: one pixel is one unit.
UNKNOWN_SPACING_MM = 1.0


@dataclass
class _Plan:
    """What the cache already answered, and what is left to compute."""

    outcomes: list[worker.Outcome]
    tasks: list[worker.CaseTask]
    costs: dict[str, float]  # case_id -> relative cost, to start the largest cases first


def extract_features(
    cohort: Cohort,
    params: RadiomicsParams | str | Path | None = None,
    *,
    jobs: int | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    strict: bool = False,
    progress: bool = True,
) -> FeatureTable:
    """pyradiomics features of every lesion of ``cohort``, one row per lesion.

    ``params``: a :class:`RadiomicsParams`, a parameter file, or None for the shipped
    ``default_2d.yaml``. ``jobs``: worker processes (default: every core this process may
    use). ``cache_dir``: see :mod:`senolab.radiomics.cache` for the default. A lesion that
    fails yields a ``failed`` row with its reason; under ``strict`` any failure raises
    :class:`RadiomicsError` listing them all.
    """
    if not isinstance(params, RadiomicsParams):
        params = load_params(params)
    cache = FeatureCache(cache_dir) if use_cache else None
    plan = _plan(cohort, params, cache)
    computed = []
    for outcome in _compute(plan, params, jobs or available_cores(), progress):
        if cache is not None:  # as they come: an interrupted run keeps what it computed
            cache.put(outcome.key, outcome.features, outcome.error)
        computed.append(outcome)
    table = _assemble(cohort, plan.outcomes + computed)
    stats = {"computed": len(computed), "from_cache": sum(1 for o in plan.outcomes if o.key)}
    table.attrs[PROVENANCE] = params.provenance()
    result = FeatureTable(table, stats, recomputed_invalid=cache.invalid if cache is not None else 0)
    if strict and (table["status"] == FAILED).any():
        raise RadiomicsError("extraction failed under --strict:\n" + "\n".join(failure_lines(table, limit=50)))
    return result


def available_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolved_spacing(pixel_spacing_mm: float) -> float:
    return UNKNOWN_SPACING_MM if _unknown(pixel_spacing_mm) else float(pixel_spacing_mm)


def _unknown(value) -> bool:
    return value is None or bool(pd.isna(value))


def _plan(cohort: Cohort, params: RadiomicsParams, cache: FeatureCache | None) -> _Plan:
    plan = _Plan([], [], {})
    for row in cohort.table.itertuples(index=False):
        image, masks = _sources(cohort, row)
        if not masks:
            continue  # a normal image: reported by _assemble, nothing to compute
        spacing = resolved_spacing(row.pixel_spacing_mm)
        task = worker.CaseTask(row.case_id, image, spacing)
        try:
            image_hash = content_hash(image)
        except OSError as err:
            plan.outcomes += [_unhashable(row.case_id, i, "image read", err) for i in range(len(masks))]
            continue
        for index, mask in enumerate(masks):
            try:
                key = lesion_key(image_hash, content_hash(mask), spacing, params.hash)
            except OSError as err:
                plan.outcomes.append(_unhashable(row.case_id, index, "mask read", err))
                continue
            entry = cache.get(key) if cache is not None else None
            if entry is None:
                task.lesions.append(worker.LesionJob(index, mask, key))
            else:
                plan.outcomes.append(worker.Outcome(row.case_id, index, key, entry["features"], entry["error"]))
        if task.lesions:
            plan.tasks.append(task)
            plan.costs[row.case_id] = _cost(row)
    return plan


def _sources(cohort: Cohort, row) -> tuple[worker.Source, list[worker.Source]]:
    held = cohort.arrays.get(row.case_id)
    if held is not None:
        return held[0], list(held[1])
    return row.image_path, list(row.mask_paths)


def _unhashable(case_id: str, lesion: int, stage: str, err: OSError) -> worker.Outcome:
    # No content, no key: such an outcome is reported but never cached.
    return worker.Outcome(case_id, lesion, "", None, f"{stage}: {type(err).__name__}: {err}")


def _cost(row) -> float:
    # pyradiomics' time grows with the image (casts, label statistics) and the lesion
    # (texture matrices); the boxes are in the cohort table, so no decoding is needed.
    boxes = getattr(row, "lesion_bboxes", None)
    boxes = [] if boxes is None else list(boxes)  # a list, or an array after a parquet round trip
    lesion_area = sum((b[2] - b[0]) * (b[3] - b[1]) for b in boxes if b is not None)
    return float(row.width * row.height) + 4.0 * lesion_area


def _compute(plan: _Plan, params: RadiomicsParams, jobs: int, progress: bool) -> Iterator[worker.Outcome]:
    # Largest first: the pool ends on small cases instead of one worker finishing a big one.
    tasks = sorted(plan.tasks, key=lambda t: -plan.costs[t.case_id])
    total = sum(len(t.lesions) for t in tasks)
    workers = min(jobs, len(tasks))
    with tqdm(total=total, desc="radiomics", unit="lesion", disable=not progress or total == 0) as bar:
        for outcomes in _run(tasks, params, workers):
            bar.update(len(outcomes))
            yield from outcomes


def _run(tasks: list[worker.CaseTask], params: RadiomicsParams, workers: int) -> Iterable[list[worker.Outcome]]:
    if workers <= 1:
        # One worker: no process to start, the extractor is built here once.
        with worker.in_process(params.params):
            yield from map(worker.run_case, tasks)
        return
    with _pool_context().Pool(workers, initializer=worker.init_worker, initargs=(params.params,)) as pool:
        yield from pool.imap_unordered(worker.run_case, tasks, chunksize=_chunksize(len(tasks), workers))


def _pool_context():
    # fork on Linux: workers start at once with pyradiomics already imported, and a
    # script or notebook that calls this needs no `if __name__ == "__main__"` guard
    # (forkserver and spawn re-run an unguarded script in every worker, and the pool then
    # hangs). Workers only run pyradiomics, SimpleITK and numpy, whose thread pools are
    # safe across fork (as for PyTorch's DataLoader, which forks the same way). Elsewhere
    # fork is unsafe (macOS) or absent (Windows): spawn, with the usual guard.
    return mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")


def _chunksize(n_tasks: int, workers: int) -> int:
    # Each task takes tens of milliseconds and a message costs well under one: small
    # chunks keep the workers evenly loaded; larger cohorts batch a few per message.
    return max(1, min(8, n_tasks // (workers * 16)))


def _assemble(cohort: Cohort, outcomes: list[worker.Outcome]) -> pd.DataFrame:
    by_lesion = {(o.case_id, o.lesion): o for o in outcomes}
    names = _feature_names(outcomes)
    rows = []
    for row in cohort.table.itertuples(index=False):
        n_masks = len(_sources(cohort, row)[1])
        base = {
            "case_id": row.case_id,
            "cohort": row.cohort,
            "site": row.site,
            "label": row.label,
            "spacing_mm": resolved_spacing(row.pixel_spacing_mm),
            "spacing_known": not _unknown(row.pixel_spacing_mm),
        }
        if n_masks == 0:
            rows.append({**base, "lesion_index": None, "status": NO_LESION, "error": None})
        for index in range(n_masks):
            outcome = by_lesion[(row.case_id, index)]
            status = OK if outcome.error is None else FAILED
            features = outcome.features or {}
            rows.append({**base, "lesion_index": index, "status": status, "error": outcome.error, **features})
    table = pd.DataFrame(rows, columns=[*ID_COLUMNS, *names])
    table["lesion_index"] = table["lesion_index"].astype("Int64")
    table["spacing_known"] = table["spacing_known"].astype(bool)
    table[names] = table[names].astype(np.float64)
    return table


def _feature_names(outcomes: list[worker.Outcome]) -> list[str]:
    # Every success has the same names in pyradiomics' order (fixed by the parameters).
    for outcome in outcomes:
        if outcome.features:
            return list(outcome.features)
    return []
