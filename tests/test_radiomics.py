"""senolab.radiomics: golden values against pyradiomics, cache, failure isolation, ComBat,
feature hygiene, parameters, the parquet table and the command line."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from senolab.cohorts.imaging import bbox_from_mask, load_gray, load_mask
from senolab.cohorts.schema import Cohort
from senolab.radiomics import (
    DEFAULT_PARAMS_FILE,
    ComBat,
    ComBatError,
    DropConstant,
    DropCorrelated,
    DropIncomplete,
    ParamsError,
    RadiomicsError,
    Standardise,
    build_pipeline,
    extract_features,
    feature_columns,
    load_features,
    load_params,
    site_effect,
    site_effect_before_after,
    site_effect_figure,
)
from senolab.radiomics.parameters import lesion_box_suffices

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.exists(), reason=f"real datasets not found at {DATA}")

BUSI = DATA / "busi" / "Dataset_BUSI_with_GT"
BUSBRA = DATA / "busbra" / "BUSBRA"
BREAST = DATA / "breast" / "BrEaST-Lesions_USG-images_and_masks"


# --- helpers ---------------------------------------------------------------------------


def cohort_of(cases: list[dict], name: str = "test") -> Cohort:
    """A cohort table from {case_id, image, masks, site, label, spacing} records (files)."""
    rows = []
    for case in cases:
        image = Path(case["image"])
        width = height = 0
        boxes = []
        if image.exists():
            try:
                height, width = load_gray(image).shape
                boxes = [bbox_from_mask(load_mask(m)) for m in case["masks"]]
            except OSError:
                pass  # a corrupt image: the extraction must report it
        rows.append(
            {
                "case_id": case["case_id"],
                "patient_id": case["case_id"],
                "cohort": name,
                "site": case.get("site", "site_a"),
                "scanner": "unknown",
                "modality": "US",
                "image_path": str(image),
                "mask_paths": [str(m) for m in case["masks"]],
                "other_mask_paths": [],
                "label": case.get("label", "benign"),
                "pixel_spacing_mm": case.get("spacing", float("nan")),
                "width": width,
                "height": height,
                "mask_kind": "outline",
                "lesion_bboxes": boxes,
            }
        )
    return Cohort(name, pd.DataFrame(rows))


def direct_pyradiomics(image_path, mask_path, spacing: float) -> dict[str, float]:
    """What a user would write: the shipped parameter file, pyradiomics, one lesion."""
    import SimpleITK as sitk
    from radiomics.featureextractor import RadiomicsFeatureExtractor

    extractor = RadiomicsFeatureExtractor(str(DEFAULT_PARAMS_FILE))
    image = sitk.GetImageFromArray(load_gray(image_path).astype(np.float64))
    mask = sitk.GetImageFromArray(load_mask(mask_path).astype(np.uint8))
    image.SetSpacing((spacing, spacing))
    mask.SetSpacing((spacing, spacing))
    return {k: float(v) for k, v in extractor.execute(image, mask).items() if not k.startswith("diagnostics_")}


def same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def write_png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


def small_file_cohort(tmp_path: Path) -> tuple[Cohort, list[Path]]:
    """Four BUSI benign cases copied to tmp_path (so a test may change a mask)."""
    cases, masks = [], []
    for i, stem in enumerate(["benign (1)", "benign (2)", "benign (3)", "benign (4)"]):
        image = shutil.copy(BUSI / "benign" / f"{stem}.png", tmp_path / f"img{i}.png")
        mask = shutil.copy(BUSI / "benign" / f"{stem}_mask.png", tmp_path / f"img{i}_mask.png")
        masks.append(Path(mask))
        cases.append({"case_id": f"t/{i}", "image": image, "masks": [mask], "site": "busi"})
    return cohort_of(cases), masks


class CountingExecute:
    """Wraps pyradiomics' real RadiomicsFeatureExtractor.execute to count its calls."""

    def __init__(self, monkeypatch):
        from radiomics.featureextractor import RadiomicsFeatureExtractor

        self.calls = 0
        real = RadiomicsFeatureExtractor.execute

        def counted(extractor, *args, **kwargs):
            self.calls += 1
            return real(extractor, *args, **kwargs)

        monkeypatch.setattr(RadiomicsFeatureExtractor, "execute", counted)


# --- golden values ---------------------------------------------------------------------


@needs_data
def test_every_feature_equals_a_direct_pyradiomics_call_for_one_lesion_per_dataset(tmp_path):
    cases = [
        {"case_id": "busi/benign (1)", "image": BUSI / "benign" / "benign (1).png",
         "masks": [BUSI / "benign" / "benign (1)_mask.png"], "site": "busi"},
        {"case_id": "busbra/bus_0001-l", "image": BUSBRA / "Images" / "bus_0001-l.png",
         "masks": [BUSBRA / "Masks" / "mask_0001-l.png"], "site": "busbra", "label": "malignant"},
        # a known spacing, so that SetSpacing is exercised (shape features in mm)
        {"case_id": "breast/case001", "image": BREAST / "case001.png",
         "masks": [BREAST / "case001_tumor.png"], "site": "breast", "spacing": 0.105},
    ]
    result = extract_features(cohort_of(cases), jobs=2, cache_dir=tmp_path / "cache", progress=False)
    table = result.table.set_index("case_id")
    assert (table["status"] == "ok").all(), result.summary()
    for case in cases:
        expected = direct_pyradiomics(case["image"], case["masks"][0], case.get("spacing", 1.0))
        row = table.loc[case["case_id"]]
        assert feature_columns(result.table) == list(expected)
        assert len(expected) == 101  # 9 shape2D + 18 firstorder + 23 glcm + 16 glrlm + 16 glszm + 14 gldm + 5 ngtdm
        different = [k for k, v in expected.items() if not same(float(row[k]), v)]
        assert not different, f"{case['case_id']}: {different[:5]}"
    assert table.loc["breast/case001", "spacing_known"] and not table.loc["busi/benign (1)", "spacing_known"]
    assert not any(c.startswith("original_shape_") for c in result.table.columns)  # 3D shape stays off


@needs_data
def test_2d_extraction_equals_pyradiomics_force2d_on_a_one_slice_volume(tmp_path):
    """The in-plane values pyradiomics' force2D gives for a one-slice volume: all four
    texture directions (force2D on a true 2D image would keep the x direction only)."""
    import SimpleITK as sitk
    import yaml
    from radiomics.featureextractor import RadiomicsFeatureExtractor

    image, mask = BUSI / "malignant" / "malignant (1).png", BUSI / "malignant" / "malignant (1)_mask.png"
    cases = [{"case_id": "c", "image": image, "masks": [mask], "label": "malignant"}]
    ours = extract_features(cohort_of(cases), jobs=1, use_cache=False, progress=False).table.iloc[0]
    params = yaml.safe_load(DEFAULT_PARAMS_FILE.read_text())
    params["setting"].update(force2D=True, force2Ddimension=0)
    volume = sitk.GetImageFromArray(load_gray(image).astype(np.float64)[None])
    labels = sitk.GetImageFromArray(load_mask(mask).astype(np.uint8)[None])
    sliced = {k: float(v) for k, v in RadiomicsFeatureExtractor(params).execute(volume, labels).items()
              if not k.startswith("diagnostics_")}
    assert set(sliced) == set(feature_columns(ours.to_frame().T))
    assert all(math.isclose(float(ours[k]), v, rel_tol=1e-9, abs_tol=1e-12) for k, v in sliced.items())


# --- cache ------------------------------------------------------------------------------


@needs_data
def test_second_run_computes_nothing_and_a_changed_mask_recomputes_only_its_case(tmp_path, monkeypatch):
    cohort, masks = small_file_cohort(tmp_path)
    counter = CountingExecute(monkeypatch)
    cache = tmp_path / "cache"

    first = extract_features(cohort, jobs=1, cache_dir=cache, progress=False)
    assert counter.calls == 4 and first.stats == {"computed": 4, "from_cache": 0}

    second = extract_features(cohort, jobs=1, cache_dir=cache, progress=False)
    assert counter.calls == 4 and second.stats == {"computed": 0, "from_cache": 4}
    pd.testing.assert_frame_equal(first.table, second.table)

    mask = load_mask(masks[2])
    grown = mask | np.roll(mask, 3, axis=1)  # the same lesion, redrawn a little wider
    write_png(masks[2], (grown * 255).astype(np.uint8))
    third = extract_features(cohort, jobs=1, cache_dir=cache, progress=False)
    assert counter.calls == 5 and third.stats == {"computed": 1, "from_cache": 3}
    changed = (third.table[feature_columns(third.table)] != first.table[feature_columns(first.table)]).any(axis=1)
    assert changed.tolist() == [False, False, True, False]


def test_in_memory_cohort_is_extracted_and_cached_by_array_content(tmp_path):
    from senolab.cohorts.synthetic import SyntheticConfig, generate

    cohort = generate(SyntheticConfig(images_per_site=4, image_size=64), progress=False)
    first = extract_features(cohort, jobs=2, cache_dir=tmp_path, progress=False)
    n_lesions = sum(len(masks) for _, masks in cohort.arrays.values())
    assert first.stats["computed"] == n_lesions > 0
    # At 64 px the generator may place a lesion outside the field: an empty mask, which
    # must fail (with pyradiomics' reason) and only those.
    empty = {(case_id, i) for case_id, (_, masks) in cohort.arrays.items() for i, m in enumerate(masks) if not m.any()}
    failed = first.table[first.table["status"] == "failed"]
    assert set(zip(failed["case_id"], failed["lesion_index"])) == empty, first.summary()
    assert (first.table["status"] == "ok").sum() == n_lesions - len(empty) > 5
    normals = cohort.table.loc[cohort.table["label"] == "normal", "case_id"]
    assert set(first.table.loc[first.table["status"] == "no_lesion", "case_id"]) == set(normals)
    assert first.table["spacing_known"].all()
    second = extract_features(cohort, jobs=2, cache_dir=tmp_path, progress=False)
    assert second.stats == {"computed": 0, "from_cache": n_lesions}
    pd.testing.assert_frame_equal(first.table, second.table)


# --- failure isolation ------------------------------------------------------------------


@needs_data
def test_bad_cases_yield_error_rows_and_a_summary_while_the_others_are_correct(tmp_path):
    good_image, good_mask = BUSI / "benign" / "benign (5).png", BUSI / "benign" / "benign (5)_mask.png"
    shape = load_gray(good_image).shape
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    one_pixel = np.zeros(shape, np.uint8)
    one_pixel[40, 60] = 255
    write_png(tmp_path / "one_pixel.png", one_pixel)
    write_png(tmp_path / "empty.png", np.zeros(shape, np.uint8))
    cases = [
        {"case_id": "good", "image": good_image, "masks": [good_mask]},
        {"case_id": "corrupt", "image": corrupt, "masks": [good_mask]},
        {"case_id": "one_pixel", "image": good_image, "masks": [tmp_path / "one_pixel.png"]},
        {"case_id": "empty_mask", "image": good_image, "masks": [tmp_path / "empty.png"]},
        {"case_id": "missing_mask", "image": good_image, "masks": [tmp_path / "nowhere.png"]},
        {"case_id": "normal", "image": good_image, "masks": [], "label": "normal"},
    ]
    cohort = cohort_of(cases)
    result = extract_features(cohort, jobs=2, cache_dir=tmp_path / "cache", progress=False)
    table = result.table.set_index("case_id")
    assert table["status"].to_dict() == {
        "good": "ok", "corrupt": "failed", "one_pixel": "failed", "empty_mask": "failed",
        "missing_mask": "failed", "normal": "no_lesion",
    }
    assert table.loc["corrupt", "error"].startswith("image read:")
    assert "1 segmented voxel" in table.loc["one_pixel", "error"]
    assert table.loc["empty_mask", "error"].startswith("pyradiomics:")
    assert table.loc["missing_mask", "error"].startswith("mask read: FileNotFoundError")
    assert pd.isna(table.loc["normal", "error"]) and pd.isna(table.loc["normal", "lesion_index"])
    features = feature_columns(result.table)
    assert table.loc[table["status"] != "ok", features].isna().all().all()
    expected = direct_pyradiomics(good_image, good_mask, 1.0)
    assert all(same(float(table.loc["good", k]), v) for k, v in expected.items())

    summary = result.summary()
    assert "1 ok, 4 failed, 1 without lesion" in summary
    for case_id in ("corrupt", "one_pixel", "empty_mask", "missing_mask"):
        assert f"{case_id} lesion 0:" in summary
    assert result.failures()["case_id"].tolist() == ["corrupt", "one_pixel", "empty_mask", "missing_mask"]

    with pytest.raises(RadiomicsError, match="one_pixel lesion 0"):
        extract_features(cohort, jobs=1, cache_dir=tmp_path / "cache", strict=True, progress=False)


# --- parameters and the table -------------------------------------------------------------


def test_default_parameters_are_2d_and_hashed_with_the_pyradiomics_version():
    import radiomics

    params = load_params()
    assert params.params["setting"]["force2D"] is False  # true 2D images: see default_2d.yaml
    assert "shape" not in params.params["featureClass"] and "shape2D" in params.params["featureClass"]
    assert params.pyradiomics_version == radiomics.__version__
    assert load_params(DEFAULT_PARAMS_FILE).hash == params.hash and len(params.hash) == 64
    assert params.provenance()["params_hash"] == params.hash


def test_a_user_parameter_file_changes_the_hash_and_bad_files_are_refused(tmp_path):
    import yaml

    base = yaml.safe_load(DEFAULT_PARAMS_FILE.read_text())
    base["setting"]["binWidth"] = 16
    mine = tmp_path / "mine.yaml"
    mine.write_text(yaml.safe_dump(base))
    assert load_params(mine).hash != load_params().hash

    def refused(change, match):
        params = yaml.safe_load(DEFAULT_PARAMS_FILE.read_text())
        change(params)
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(params))
        with pytest.raises(ParamsError, match=match):
            load_params(path)

    refused(lambda p: p["featureClass"].update(shape=None), "featureClass.shape")
    refused(lambda p: p["setting"].update(force2D=True), "force2D must be false")
    refused(lambda p: p["setting"].update(binWidth="wide"), "schema")
    refused(lambda p: p["setting"].update(label=255), "label must be 1")
    with pytest.raises(ParamsError, match="found nothing"):
        load_params(tmp_path / "absent.yaml")


@needs_data
def test_optional_filters_from_a_user_file_add_filtered_features(tmp_path):
    import yaml

    params = yaml.safe_load(DEFAULT_PARAMS_FILE.read_text())
    params["imageType"] = {"Original": {}, "LoG": {"sigma": [2.0]}}
    params["featureClass"] = {"firstorder": None, "shape2D": None}
    path = tmp_path / "log.yaml"
    path.write_text(yaml.safe_dump(params))
    cases = [{"case_id": "c", "image": BUSI / "benign" / "benign (1).png",
              "masks": [BUSI / "benign" / "benign (1)_mask.png"]}]
    result = extract_features(cohort_of(cases), path, jobs=1, use_cache=False, progress=False)
    columns = feature_columns(result.table)
    assert any(c.startswith("log-sigma-2-0-mm-") and "_firstorder_" in c for c in columns), columns
    assert result.table["status"].tolist() == ["ok"]
    assert result.provenance["params"]["imageType"]["LoG"] == {"sigma": [2.0]}
    # A filter reads pixels outside the lesion's box: the image must reach pyradiomics whole.
    assert not lesion_box_suffices(params) and lesion_box_suffices(load_params().params)
    import SimpleITK as sitk
    from radiomics.featureextractor import RadiomicsFeatureExtractor

    image = sitk.GetImageFromArray(load_gray(cases[0]["image"]).astype(np.float64))
    mask = sitk.GetImageFromArray(load_mask(cases[0]["masks"][0]).astype(np.uint8))
    direct = RadiomicsFeatureExtractor(str(path)).execute(image, mask)
    assert all(same(float(result.table.iloc[0][k]), float(direct[k])) for k in columns)


def test_feature_table_round_trips_through_parquet_with_its_provenance(tmp_path):
    from senolab.cohorts.synthetic import SyntheticConfig, generate

    cohort = generate(SyntheticConfig(images_per_site=4, image_size=64), progress=False)
    result = extract_features(cohort, jobs=1, cache_dir=tmp_path / "cache", progress=False)
    path = result.write(tmp_path / "out" / "features.parquet")
    loaded = load_features(path)
    pd.testing.assert_frame_equal(loaded, result.table)
    provenance = loaded.attrs["senolab.radiomics"]
    assert provenance["params_hash"] == load_params().hash
    assert provenance["pyradiomics_version"] == load_params().pyradiomics_version
    assert provenance["params"] == load_params().params
    assert str(loaded["lesion_index"].dtype) == "Int64"

    other = tmp_path / "other.parquet"
    pd.DataFrame({"a": [1]}).to_parquet(other)
    with pytest.raises(RadiomicsError, match="provenance"):
        load_features(other)


# --- ComBat and hygiene -------------------------------------------------------------------


def shifted_features(seed: int = 0, n_per_site: int = 300, p: int = 12):
    """Three sites with their own location and scale on every feature, different label
    prevalence per site, and a malignant-vs-benign difference inside the signal."""
    rng = np.random.default_rng(seed)
    codes = np.repeat(np.arange(3), n_per_site)
    sites = np.array(["a", "b", "c"])[codes]
    label = (rng.random(len(codes)) < np.array([0.2, 0.5, 0.8])[codes]).astype(int)
    location = rng.normal(0, 3, (3, p))
    scale = rng.uniform(0.5, 2.5, (3, p))
    signal = 1.5 * label[:, None] + rng.normal(size=(len(codes), p))
    X = pd.DataFrame(10 + location[codes] + scale[codes] * signal, columns=[f"f{i}" for i in range(p)])
    return X, sites, label


def per_label_site_spread(X: pd.DataFrame, sites, label) -> tuple[float, float]:
    """Mean over features of the spread across sites of (mean, variance) within each label."""
    means, variances = [], []
    for value in (0, 1):
        rows = label == value
        groups = X[rows].groupby(sites[rows])
        means.append(groups.mean().std().mean())
        variances.append((groups.var().max() / groups.var().min()).mean())
    return float(np.mean(means)), float(np.mean(variances))


def label_difference(X: pd.DataFrame, label) -> float:
    """Malignant minus benign, in pooled standard deviations, averaged over features."""
    return float(((X[label == 1].mean() - X[label == 0].mean()) / X.std()).mean())


def test_combat_equalises_site_means_and_variances_and_keeps_the_label_difference():
    X, sites, label = shifted_features()
    covariates = pd.DataFrame({"label": np.where(label == 1, "malignant", "benign")})
    harmonised = ComBat().fit(X, sites, covariates).transform(X, sites)

    mean_before, var_before = per_label_site_spread(X, sites, label)
    mean_after, var_after = per_label_site_spread(harmonised, sites, label)
    assert mean_before > 1.5 and mean_after < 0.2 * mean_before
    assert var_before > 4.0 and var_after < 1.6
    # the biology survives: about as large as before, relative to the spread of the data
    assert label_difference(harmonised, label) > 0.9 * label_difference(X, label) > 0.3
    effect = site_effect_before_after(X, harmonised, sites)
    assert (effect["kruskal_h_after"] < effect["kruskal_h_before"]).all()

    # Without the label as covariate the unequal prevalence is taken for a site effect,
    # and part of the label difference is removed with it.
    blind = ComBat().fit(X, sites).transform(X, sites)
    assert label_difference(blind, label) < 0.9 * label_difference(harmonised, label)


def test_combat_fits_on_train_only_and_transforms_new_cases_of_known_sites():
    X, sites, label = shifted_features(seed=1)
    train = np.arange(len(X)) % 3 != 0
    covariates = pd.DataFrame({"label": label[train]})
    model = ComBat().fit(X[train], sites[train], covariates)
    test = model.transform(X[~train], sites[~train])
    mean_before, _ = per_label_site_spread(X[~train], sites[~train], label[~train])
    mean_after, _ = per_label_site_spread(test, sites[~train], label[~train])
    assert mean_after < 0.3 * mean_before
    with pytest.raises(ComBatError, match=r"sites \['z'\] were not seen"):
        model.transform(X.iloc[:2], ["z", "a"])
    with pytest.raises(ComBatError, match="at least 2 training cases"):
        ComBat().fit(X.iloc[:3], ["a", "a", "b"])
    with pytest.raises(ValueError, match="missing or infinite"):
        ComBat().fit(X.assign(f0=np.nan), sites)


def test_combat_without_shrinkage_is_the_plain_location_scale_model():
    X, sites, _ = shifted_features(seed=2, p=4)
    harmonised = ComBat(empirical_bayes=False).fit(X, sites).transform(X, sites)
    # every site now has exactly the pooled mean and the pooled within-site variance
    means = harmonised.groupby(sites).mean()
    np.testing.assert_allclose(means.to_numpy(), np.tile(X.mean().to_numpy(), (3, 1)), rtol=1e-9)
    variances = harmonised.groupby(sites).var()
    np.testing.assert_allclose(variances.to_numpy() / variances.to_numpy()[0], 1.0, rtol=1e-9)


def test_hygiene_steps_drop_constant_and_duplicate_features_and_standardise_on_train():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(200, 3))
    X = pd.DataFrame(
        {
            "a": base[:, 0],
            "a_twin": 2 * base[:, 0] + 0.01 * rng.normal(size=200),  # |r| > 0.99
            "b": base[:, 1] * 5 + 3,
            "flat": np.full(200, 7.0),
            "c": base[:, 2],
            "holes": np.where(rng.random(200) < 0.1, np.nan, 1.0),
        }
    )
    assert DropIncomplete().fit(X).columns_ == ["a", "a_twin", "b", "flat", "c"]
    complete = X.drop(columns="holes")
    assert DropConstant().fit(complete).dropped_ == ["flat"]
    assert DropCorrelated(0.95).fit(complete.drop(columns="flat")).columns_ == ["a", "b", "c"]

    train, test = complete.iloc[:150], complete.iloc[150:] + 1.0
    scaler = Standardise().fit(train)
    np.testing.assert_allclose(scaler.transform(train).mean(), 0.0, atol=1e-12)
    assert scaler.transform(test)["a"].mean() > 0.5  # test statistics are not used
    assert scaler.transform(train)["flat"].eq(0).all()

    pipeline = build_pipeline(
        ["drop_incomplete", "drop_constant", {"drop_correlated": {"threshold": 0.9}}, "standardise"]
    )
    out = pipeline.fit(X.iloc[:150]).transform(X.iloc[150:])
    assert list(out.columns) == ["a", "b", "c"]
    with pytest.raises(KeyError, match="unknown feature hygiene step 'combta'"):
        build_pipeline(["combta"])
    with pytest.raises(KeyError, match="fitted but are absent"):
        pipeline.transform(X.drop(columns="b"))


def test_site_effect_table_and_figure(tmp_path):
    X, sites, label = shifted_features(seed=3, n_per_site=60, p=5)
    X["same_everywhere"] = np.random.default_rng(0).normal(size=len(X))
    table = site_effect(X, sites)
    assert table.index[-1] == "same_everywhere" and table["kruskal_p"].iloc[0] < 1e-10
    harmonised = ComBat().fit(X, sites, pd.DataFrame({"label": label})).transform(X, sites)
    path = site_effect_figure({"before": X, "after ComBat": harmonised}, sites, tmp_path / "fig.png",
                              features=list(table.index[:3]))
    assert path.stat().st_size > 10_000


# --- command line -------------------------------------------------------------------------


def test_command_line_extracts_a_cohort_folder_and_describes_the_table(tmp_path, capsys):
    from senolab.cli import main
    from senolab.cohorts.synthetic import SyntheticConfig, write

    root = write(SyntheticConfig(images_per_site=4, image_size=64), tmp_path / "cohort", progress=False)
    out = tmp_path / "features.parquet"
    args = ["radiomics", "extract", str(root), "--out", str(out), "-j", "2",
            "--cache", str(tmp_path / "cache"), "--quiet"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "computed" in first and "0 from cache" in first and str(out.resolve()) in first
    assert main(args) == 0
    assert "computed 0 lesions" in capsys.readouterr().out

    figure = tmp_path / "describe.png"
    assert main(["radiomics", "describe", str(out), "--figure", str(figure), "--top", "3"]) == 0
    text = capsys.readouterr().out
    assert "features that shift most between sites" in text and "101 features" in text
    assert figure.stat().st_size > 10_000

    assert main(["radiomics", "extract", str(tmp_path / "nothing"), "--out", str(out),
                 "--cache", str(tmp_path / "cache")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'nothing'}")
