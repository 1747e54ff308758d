"""The synthetic multi-site cohort: determinism, realism checks, files and their reader."""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage, stats
from scipy.spatial import ConvexHull
from sklearn.metrics import roc_auc_score

from senolab.cohorts.dedup import DEFAULT_MAX_DISTANCE, hamming_matrix, mark_duplicates, phash
from senolab.cohorts.imaging import bbox_from_mask, load_gray, load_mask
from senolab.cohorts.readers import READERS, read_cohort
from senolab.cohorts.readers.synthetic import SyntheticReader
from senolab.cohorts.schema import LABELS, Cohort, CohortError
from senolab.cohorts.synthetic import (
    ALL_METADATA,
    BIRADS_LEVELS,
    CONFIG_FILE,
    METADATA_COLUMNS,
    METADATA_FILE,
    SyntheticConfig,
    default_sites,
    format_cell,
    generate,
    parse_cell,
    site_plan,
    tint_lut,
    write,
)

SMALL = SyntheticConfig(images_per_site=16, image_size=96)


@pytest.fixture(scope="module")
def cohort():
    """The default cohort (3 sites x 120 images), generated once."""
    return generate(SyntheticConfig(), progress=False)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic") / "cohort"
    return write(SMALL, root, progress=False)


def file_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def broken_copy(written: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(written, copy)
    return copy


# ----------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_files_and_arrays(written, tmp_path):
    again = write(SMALL, tmp_path / "again", progress=False)
    first, second = file_hashes(written), file_hashes(again)
    assert first == second
    n_masks = sum(len(m) for _, m in generate(SMALL, progress=False).arrays.values())
    assert len(first) == 3 * SMALL.images_per_site + n_masks + 2  # images, masks, csv, json
    a, b = generate(SMALL, progress=False), generate(SMALL, progress=False)
    pd.testing.assert_frame_equal(a.table, b.table)
    for case_id, (image, masks) in a.arrays.items():
        assert np.array_equal(image, b.arrays[case_id][0])
        assert all(np.array_equal(m, n) for m, n in zip(masks, b.arrays[case_id][1]))


def test_different_seeds_differ():
    a = generate(SMALL, progress=False)
    b = generate(SyntheticConfig(images_per_site=16, image_size=96, seed=1), progress=False)
    assert not a.table["age"].equals(b.table["age"])
    differing = [not np.array_equal(a.arrays[c][0], b.arrays[c][0]) for c in a.table["case_id"]]
    assert all(differing)


def test_config_survives_json_and_validates():
    config = SyntheticConfig(sites=default_sites(5), images_per_site=30, seed=3)
    assert SyntheticConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert len({s.name for s in config.sites}) == 5
    site = default_sites(1)[0]
    with pytest.raises(ValueError, match="prevalence"):
        replace(site, prevalence=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="unknown metadata"):
        replace(site, records=("height",))
    with pytest.raises(ValueError, match="unique"):
        SyntheticConfig(sites=(site, site))


# ----------------------------------------------------------------------------- content


def test_table_follows_the_schema_and_masks(cohort):
    t = cohort.table
    assert len(t) == 360 and t["case_id"].is_unique
    assert set(t["cohort"]) == {"synthetic"} and t["image_path"].isna().all()
    assert t["case_id"].str.fullmatch(r"synthetic/site_[abc]/\d{4}").all()
    assert (t.groupby("site")["scanner"].nunique() == 1).all() and t["scanner"].nunique() == 3
    assert t["pixel_spacing_mm"].notna().all() and t.groupby("site")["pixel_spacing_mm"].nunique().eq(1).all()
    for row in t.to_dict("records"):
        image, masks = cohort.arrays[row["case_id"]]
        assert image.dtype == np.uint8 and image.shape == (row["height"], row["width"]) == (192, 192)
        assert (len(masks) == 0) == (row["label"] == "normal")
        assert row["lesion_bboxes"] == [bbox_from_mask(m) for m in masks]
        assert all(m.dtype == bool and m.sum() > 20 for m in masks)
        if len(masks) == 2:
            assert not (masks[0] & masks[1]).any()
    assert t["lesion_bboxes"].map(len).eq(2).sum() >= 3  # some images show two lesions


def test_prevalence_per_site_as_configured(cohort):
    t = cohort.table
    for site in SyntheticConfig().sites:
        labels = t.loc[t["site"] == site.name, "label"]
        for label, p in zip(LABELS, site.prevalence):
            observed = (labels == label).mean()
            # second views and duplicates sit on top of an exact patient allocation
            assert abs(observed - p) < 3 * np.sqrt(p * (1 - p) / len(labels)), (site.name, label, observed)
    shares = t.groupby("site")["label"].apply(lambda s: (s == "malignant").mean())
    assert shares["site_b"] > shares["site_a"] > shares["site_c"]


def test_metadata_missingness_per_site(cohort):
    t = cohort.table
    for site in SyntheticConfig().sites:
        rows = t[t["site"] == site.name]
        for name in ALL_METADATA:
            present = rows[name].map(lambda v: v is not None and not (isinstance(v, float) and np.isnan(v)))
            assert present.all() if name in site.records else not present.any(), (site.name, name)
    assert [s.records for s in SyntheticConfig().sites] == [ALL_METADATA, ("age",), ()]


def test_birads_is_an_outcome_and_not_an_input(cohort):
    assert cohort.outcome_columns() == ["birads"]
    assert "birads" not in cohort.model_inputs() and "age" in cohort.model_inputs()
    assert cohort.model_inputs(opt_in=["birads"])[-1] == "birads"


def test_metadata_correlates_with_malignancy():
    # The site plan draws patients without rendering: a large sample is cheap.
    config = SyntheticConfig(images_per_site=3000)
    patients = [spec.patient for spec in site_plan(config, 0) if spec.duplicate_of is None]
    benign = [p.metadata for p in patients if p.label == "benign"]
    malignant = [p.metadata for p in patients if p.label == "malignant"]
    ages_b, ages_m = [m["age"] for m in benign], [m["age"] for m in malignant]
    assert np.mean(ages_m) - np.mean(ages_b) > 5
    assert stats.mannwhitneyu(ages_m, ages_b, alternative="greater").pvalue < 1e-10

    def rate(group, symptom):
        return np.mean([symptom in m["symptoms"] for m in group])

    assert rate(malignant, "palpable mass") > rate(benign, "palpable mass") + 0.1
    assert rate(malignant, "skin retraction") > rate(benign, "skin retraction")
    # BI-RADS nearly encodes the label: an outcome, but not a perfect one.
    lesions = benign + malignant
    y = [0] * len(benign) + [1] * len(malignant)
    auc = roc_auc_score(y, [BIRADS_LEVELS.index(m["birads"]) for m in lesions])
    assert 0.9 < auc < 0.995


def _solidity(mask: np.ndarray) -> float:
    ys, xs = np.nonzero(mask)
    corners = np.concatenate([np.column_stack([ys + dy, xs + dx]) for dy in (-0.5, 0.5) for dx in (-0.5, 0.5)])
    return mask.sum() / ConvexHull(corners).volume


def _circularity(mask: np.ndarray) -> float:
    perimeter = (mask & ~ndimage.binary_erosion(mask)).sum()
    return 4 * np.pi * mask.sum() / perimeter**2


def _lesion_measures(cohort, label: str) -> pd.DataFrame:
    rows = []
    for case_id in cohort.table.loc[cohort.table["label"] == label, "case_id"]:
        image, masks = cohort.arrays[case_id]
        m = masks[0]
        ys, xs = np.nonzero(m)
        height, width = np.ptp(ys) + 1, np.ptp(xs) + 1
        below = image[ys.max() + 2 : ys.max() + 2 + height // 2, xs.min() : xs.max() + 1].astype(float)
        beside = image[ys.max() + 2 : ys.max() + 2 + height // 2, max(0, xs.min() - width) : xs.min()].astype(float)
        rows.append({
            "solidity": _solidity(m),
            "circularity": _circularity(m),
            "taller": height / width,
            "posterior": below.mean() / beside.mean() if below.size and beside.size else np.nan,
        })
    return pd.DataFrame(rows)


def test_malignant_lesions_are_more_irregular_taller_and_shadowed(cohort):
    benign, malignant = _lesion_measures(cohort, "benign"), _lesion_measures(cohort, "malignant")
    for name, side in (("solidity", "less"), ("circularity", "less"), ("taller", "greater"), ("posterior", "less")):
        result = stats.mannwhitneyu(malignant[name].dropna(), benign[name].dropna(), alternative=side)
        assert result.pvalue < 1e-4, (name, result)
    # ...but the classes overlap: it must not be trivially separable by one shape measure.
    overlap = roc_auc_score([0] * len(benign) + [1] * len(malignant), -pd.concat([benign, malignant])["solidity"])
    assert 0.6 < overlap < 0.97


def _acquisition_stats(image: np.ndarray) -> tuple[float, float]:
    """Mean grey level and fine-scale roughness (speckle: mean deviation from a 3x3 mean)."""
    f = image.astype(float)
    return f.mean(), np.abs(f - ndimage.uniform_filter(f, 3)).mean()


def test_sites_measurably_differ(cohort):
    t = cohort.table
    per_site = {
        site: np.array([_acquisition_stats(cohort.arrays[c][0]) for c in t.loc[t["site"] == site, "case_id"]])
        for site in sorted(t["site"].unique())
    }
    for k in range(2):
        assert stats.kruskal(*[v[:, k] for v in per_site.values()]).pvalue < 1e-20
    names = list(per_site)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            # For every pair of sites, some statistic differs by more than the spread within a site.
            gaps = np.abs(per_site[a].mean(0) - per_site[b].mean(0))
            spread = np.sqrt((per_site[a].var(0) + per_site[b].var(0)) / 2)
            assert (gaps > 2 * spread).any(), (a, b, gaps, spread)


def test_patients_with_two_views_and_injected_duplicates(cohort):
    t = cohort.table
    views = t[t["duplicate_of"].isna()].groupby("patient_id")
    pairs = [g for _, g in views if len(g) == 2]
    assert len(pairs) >= 30 and views.size().max() == 2
    for g in pairs:
        assert g["label"].nunique() == 1 and g["age"].nunique(dropna=False) == 1
        a, b = (cohort.arrays[c][0] for c in g["case_id"])
        assert int(hamming_matrix(np.array([phash(a), phash(b)]))[0, 1]) > DEFAULT_MAX_DISTANCE
    dups = t[t["duplicate_of"].notna()]
    assert len(dups) == 3 * round(0.03 * 120)
    by_id = t.set_index("case_id")
    copy = Cohort(cohort.name, cohort.table.copy(), cohort.columns, arrays=cohort.arrays)
    marked = mark_duplicates(copy, progress=False).table.set_index("case_id")
    for case_id, source in zip(dups["case_id"], dups["duplicate_of"]):
        assert by_id.loc[source, "site"] == by_id.loc[case_id, "site"]
        assert by_id.loc[source, "label"] == by_id.loc[case_id, "label"]
        assert by_id.loc[source, "patient_id"] != by_id.loc[case_id, "patient_id"]  # why dedup matters
        assert not np.array_equal(cohort.arrays[source][0], cohort.arrays[case_id][0])
        assert marked.loc[source, "duplicate_group"] == marked.loc[case_id, "duplicate_group"]
    grouped = marked.groupby("duplicate_group").filter(lambda g: len(g) > 1)
    injected = set(dups["case_id"]) | set(dups["duplicate_of"])
    assert len(set(grouped.index) - injected) <= 0.03 * len(t)  # few false alarms between unrelated scans


# ----------------------------------------------------------------------------- files


def test_written_layout_and_round_trip(written):
    generated = generate(SMALL, progress=False)
    assert READERS.get("synthetic").detect(written)
    read = read_cohort(written)
    assert read.name == "synthetic" and read.problems == []
    skip = ["image_path", "mask_paths"]
    pd.testing.assert_frame_equal(read.table.drop(columns=skip), generated.table.drop(columns=skip))
    assert read.columns == generated.columns
    for row in read.table.to_dict("records"):
        site, label = row["site"], row["label"]
        name = row["case_id"].rsplit("/", 1)[1]
        assert Path(row["image_path"]) == written / site / "Dataset_BUSI_with_GT" / label / f"{name}.png"
        image, masks = generated.arrays[row["case_id"]]
        assert np.array_equal(load_gray(row["image_path"]), image)
        assert [Path(p).name for p in row["mask_paths"]] == [f"{name}_mask.png", f"{name}_mask_1.png"][: len(masks)]
        for path, mask in zip(row["mask_paths"], masks):
            assert set(np.unique(np.asarray(Image.open(path)))) <= {0, 255}
            assert np.array_equal(load_mask(path), mask)
    # The tinted site writes RGB whose channels differ, yet reads back to the same grey pixels.
    tinted = read.table.loc[read.table["site"] == "site_b", "image_path"].iloc[0]
    rgb = np.asarray(Image.open(tinted))
    assert rgb.ndim == 3 and (rgb[..., 0].astype(int) - rgb[..., 2] > 5).mean() > 0.5
    csv = pd.read_csv(written / METADATA_FILE, dtype=str, keep_default_na=False).set_index("site")
    assert (csv.loc["site_a", "symptoms"] != "").all() and (csv.loc["site_c", "symptoms"] == "").all()


def test_sets_are_joined_with_ampersands_as_in_breast():
    column = METADATA_COLUMNS["symptoms"]
    assert format_cell(["nipple discharge", "palpable mass"], column) == "nipple discharge&palpable mass"
    assert parse_cell("palpable mass&nipple discharge", column) == ["nipple discharge", "palpable mass"]
    assert parse_cell("", column) is None and np.isnan(parse_cell("", METADATA_COLUMNS["age"]))
    with pytest.raises(ValueError, match="'symptoms'.*not among levels"):
        parse_cell("fever", column)


def test_tint_lut_is_exact_in_luminance():
    lut = tint_lut((1.1, 1.0, 0.8))
    grey = np.asarray(Image.fromarray(lut[None]).convert("L"))[0]
    assert np.array_equal(grey, np.arange(256))
    assert (lut[:, 0].astype(int) - lut[:, 2] > 0).sum() > 200


def test_write_refuses_a_foreign_or_different_folder(written, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(CohortError, match="not a synthetic cohort"):
        write(SMALL, foreign, progress=False)
    copy = broken_copy(written, tmp_path)
    with pytest.raises(CohortError, match="another config"):
        write(SyntheticConfig(images_per_site=16, image_size=96, seed=5), copy, progress=False)


# ----------------------------------------------------------------------------- bad input


def test_not_a_synthetic_folder_names_the_layout(tmp_path):
    with pytest.raises(CohortError, match="metadata.csv"):
        SyntheticReader().read(tmp_path)


def test_missing_csv_or_bad_config_is_an_error(written, tmp_path):
    copy = broken_copy(written, tmp_path)
    (copy / METADATA_FILE).unlink()
    with pytest.raises(CohortError, match="metadata.csv: missing"):
        SyntheticReader().read(copy)
    (copy / CONFIG_FILE).write_text('{"format": "something else"}')
    with pytest.raises(CohortError, match="expected"):
        SyntheticReader().read(copy)


def _rewrite_csv(root: Path, change) -> pd.DataFrame:
    records = pd.read_csv(root / METADATA_FILE, dtype=str, keep_default_na=False)
    records = change(records)
    records.to_csv(root / METADATA_FILE, index=False)
    return records


@pytest.mark.parametrize(
    "damage, reason",
    [
        ("truncated image", "unreadable or truncated image"),
        ("missing image", "image file is missing"),
        ("mask of another size", "differs from image size"),
        ("file without row", "file without its row"),
        ("unknown label", "unknown label"),
        ("bad metadata value", "column 'age': expected a number"),
    ],
)
def test_bad_cases_are_reported_skipped_or_fatal_under_strict(written, tmp_path, damage, reason):
    copy = broken_copy(written, tmp_path)
    records = pd.read_csv(copy / METADATA_FILE, dtype=str, keep_default_na=False)
    lesion = records[records["masks"] != ""].iloc[0]
    image = copy / lesion["image"]
    if damage == "truncated image":
        image.write_bytes(image.read_bytes()[:200])
    elif damage == "missing image":
        image.unlink()
    elif damage == "mask of another size":
        Image.fromarray(np.zeros((10, 12), np.uint8)).save(copy / lesion["masks"].split("&")[0])
    elif damage == "file without row":
        _rewrite_csv(copy, lambda r: r[r["case_id"] != lesion["case_id"]])
    elif damage == "unknown label":
        _rewrite_csv(copy, lambda r: r.assign(label=r["label"].where(r["case_id"] != lesion["case_id"], "cyst")))
    elif damage == "bad metadata value":
        _rewrite_csv(copy, lambda r: r.assign(age=r["age"].where(r["case_id"] != lesion["case_id"], "forty")))
    result = SyntheticReader().read(copy)
    assert lesion["case_id"] not in set(result.table["case_id"])
    assert len(result) == len(records) - 1
    assert result.problems and all(reason in p.reason for p in result.problems)
    assert any(Path(p.file).name.startswith(Path(lesion["image"]).stem) for p in result.problems)
    with pytest.raises(CohortError, match=reason):
        SyntheticReader().read(copy, strict=True)
