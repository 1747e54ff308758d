"""senolab.radiomics cache entries are validated: an entry that is damaged, hand-edited,
emptied or moved under another key is a miss, recomputed, rewritten and counted."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from senolab.radiomics import extract_features


@pytest.fixture(scope="module")
def cohort():
    from senolab.cohorts.synthetic import SyntheticConfig, generate

    return generate(SyntheticConfig(images_per_site=4, image_size=64), progress=False)


def extract(cohort, cache: Path):
    return extract_features(cohort, jobs=1, cache_dir=cache, progress=False)


def ok_entries(cache: Path) -> list[Path]:
    """Cache files of lesions that were extracted (not of failures), in a fixed order."""
    return [p for p in sorted(cache.glob("*/*.json")) if json.loads(p.read_text()).get("features")]


def emptied(path: Path, others: list[Path]) -> None:
    path.write_text("{}")


def nulled(path: Path, others: list[Path]) -> None:
    path.write_text(json.dumps({"features": None, "error": None}))


def edited(path: Path, others: list[Path]) -> None:
    entry = json.loads(path.read_text())
    name = next(iter(entry["features"]))
    entry["features"][name] += 1.0
    path.write_text(json.dumps(entry))


def moved(path: Path, others: list[Path]) -> None:
    # Another lesion's (valid) entry under this lesion's key.
    path.write_text(others[1].read_text())


def truncated(path: Path, others: list[Path]) -> None:
    path.write_text(path.read_text()[:40])


@pytest.mark.parametrize("damage", [emptied, nulled, edited, moved, truncated], ids=lambda f: f.__name__)
def test_an_entry_that_does_not_validate_is_recomputed_rewritten_and_counted(cohort, tmp_path, damage):
    cache = tmp_path / "cache"
    first = extract(cohort, cache)
    entries = ok_entries(cache)
    n_lesions = first.stats["computed"]
    damage(entries[0], entries)

    second = extract(cohort, cache)
    pd.testing.assert_frame_equal(second.table, first.table)
    assert second.stats == {"computed": 1, "from_cache": n_lesions - 1}
    assert second.recomputed_invalid == 1
    assert "recomputed 1 lesion whose cache entry did not validate" in second.summary()

    third = extract(cohort, cache)  # the entry was rewritten
    assert third.stats == {"computed": 0, "from_cache": n_lesions} and third.recomputed_invalid == 0
    assert "did not validate" not in third.summary()
