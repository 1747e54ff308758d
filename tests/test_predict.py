"""`senolab predict` as a user runs it: trained runs applied to new images, from a working
folder with relative paths. Its probabilities are the evaluation's (the preprocessing
travels with the model), a case manifest's metadata reach a fusing model, mammograms come
back through the crop and turn into their own pixels, and bad inputs are reported and
skipped (or one line for a bad model), never a traceback."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from senolab.cli import main as senolab

REPO = Path(__file__).resolve().parents[1]
SMALL_UNET = {"encoder_options": {"widths": [8, 16, 32, 64]}}
TINY = {"kind": "experiment", "name": "tiny",
        "data": {"cohorts": ["synthetic"], "synthetic": {"n_sites": 2, "images_per_site": 16, "image_size": 64},
                 "image_size": 32, "split": {"kind": "holdout", "test_fraction": 0.25, "seed": 0}},
        "model": {**SMALL_UNET, "heads": {"classification": True, "segmentation": True, "bbox": True}},
        "train": {"epochs": 1, "batch_size": 8}, "evaluation": {"bootstrap": 10}}
# image + clinical metadata (age, tissue, symptoms, family history), classification only
FUSED = {**TINY, "name": "fused", "model": {**SMALL_UNET, "fusion": "concat",
                                            "fusion_options": {"modalities": ["metadata"]},
                                            "heads": {"classification": True, "segmentation": False, "bbox": False}}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_torch_thread):
    """A working folder with two trained runs (runs/tiny: image only, segmenting;
    runs/fused: metadata fused) and a folder of other synthetic images (other/)."""
    from senolab.cohorts.synthetic import SyntheticConfig, write

    folder = tmp_path_factory.mktemp("predict")
    before = Path.cwd()
    os.chdir(folder)
    for config in (TINY, FUSED):
        Path(f"{config['name']}.yaml").write_text(yaml.safe_dump(config))
        assert senolab(["train", f"{config['name']}.yaml", "--out", f"runs/{config['name']}", "--quiet"]) == 0
    write(SyntheticConfig(images_per_site=6, image_size=80, seed=5), Path("other"), progress=False)
    yield folder
    os.chdir(before)


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "senolab.cli", *args], capture_output=True, text=True, timeout=300,
                          env=env)


def output_name(image: str, source: str) -> str:
    return Path(image).resolve().relative_to(Path(source).resolve()).with_suffix("").as_posix().replace("/", "__")


def test_predict_gives_the_evaluations_probabilities_with_masks_and_maps_at_image_size(trained):
    from senolab.cohorts.readers import read_cohort

    assert senolab(["evaluate", "runs/tiny", "--on", "other", "--out", "runs/eval", "--quiet"]) == 0
    assert senolab(["predict", "runs/tiny", "other", "--out", "pred", "--quiet", "--threshold", "youden",
                    "--explain", "gradcam"]) == 0
    evaluated = pd.read_parquet("runs/eval/predictions.parquet")
    paths = read_cohort("other").table.set_index("case_id")["image_path"].map(lambda p: str(Path(p).resolve()))
    evaluated["image"] = evaluated["case_id"].map(paths)
    predicted = pd.read_csv("pred/predictions.csv")
    predicted["image"] = predicted["image"].map(lambda p: str(Path(p).resolve()))
    both = evaluated.merge(predicted, on="image", suffixes=("_eval", "_pred"))
    assert len(both) == len(evaluated) > 0
    # evaluate runs the model as trained, predict with BatchNorm folded: float rounding apart, the same
    assert np.allclose(both["prob_malignant_eval"], both["prob_malignant_pred"], atol=1e-5)
    summary = json.loads(Path("pred/summary.json").read_text())
    stored = json.loads(Path("runs/tiny/model/artifacts/preprocessing.json").read_text())["clinical"]["thresholds"]
    assert summary["threshold_rule"] == "youden" and summary["threshold"] == pytest.approx(stored["youden"])
    assert ((predicted["score"] >= summary["threshold"]) == (predicted["predicted_class"] == "malignant")).all()
    assert predicted["lesion_area_mm2"].isna().all()  # PNGs carry no spacing: NaN, never a guess
    first = predicted.iloc[0]
    name = output_name(first["image"], "other")
    for picture in (Path("pred/masks") / f"{name}.png", Path("pred/explanations/gradcam") / f"{name}.png"):
        assert np.asarray(Image.open(picture)).shape == (first["height"], first["width"])  # the image's own size
    assert 0 <= first["box_x0"] <= first["box_x1"] <= first["width"]


def test_bad_inputs_are_reported_and_skipped_and_a_bad_model_is_one_line(trained, tmp_path, capsys):
    from dicom_builders import mammogram_dicom, strip_pixel_data

    bad = tmp_path / "bad"
    bad.mkdir()
    good = sorted(p for p in Path("other").rglob("*.png") if "_mask" not in p.name)[0]
    shutil.copy(good, bad / "good.png")
    (bad / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"truncated" * 10)
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(bad / "animation.gif")
    strip_pixel_data(mammogram_dicom(bad / "header_only.dcm", np.full((48, 40), 900, np.uint16)))
    Image.fromarray(np.full((6, 5), 128, np.uint8)).save(bad / "tiny.png")  # under a quarter of the 32 px input
    result = cli("predict", "runs/tiny", str(bad), "--out", "pred_bad", "--quiet")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(Path("pred_bad/summary.json").read_text())
    reasons = {Path(s["file"]).name: s["reason"] for s in summary["skipped"]}
    assert reasons["truncated.png"].startswith("unreadable image")
    assert reasons["animation.gif"].startswith("unsupported format (.gif")
    assert reasons["header_only.dcm"].startswith("unreadable image (DicomError")
    assert reasons["tiny.png"].startswith("image too small (5x6 px")
    assert summary["predicted"] == 1 == len(pd.read_csv("pred_bad/predictions.csv"))
    assert summary["found"] == 4  # every file is accounted for: predicted, or skipped with its reason
    assert "unreadable image" in result.stdout and "image too small" in result.stdout

    capsys.readouterr()
    assert senolab(["predict", "other", "other", "--out", "pred2"]) == 2
    nothing = capsys.readouterr().err.strip()
    assert len(nothing.splitlines()) == 1 and "not a trained model" in nothing
    old = tmp_path / "old_run"
    shutil.copytree("runs/tiny/model", old / "model")
    state_file = old / "model" / "artifacts" / "preprocessing.json"
    state = json.loads(state_file.read_text())
    del state["modality"]  # as a package written before the modality was stored
    state_file.write_text(json.dumps(state))
    assert senolab(["predict", str(old), "other", "--out", "pred3"]) == 2
    older = capsys.readouterr().err.strip()
    assert len(older.splitlines()) == 1 and "incompatible senolab version (lacks modality)" in older


def manifest_folder(folder: Path, n: int = 6) -> Path:
    """Some of other/'s images as a case manifest with two metadata columns the fused
    model reads (age, family_history) and one it never saw (shoe_size)."""
    from senolab.cohorts.readers import read_cohort

    table = read_cohort("other").table.head(n)
    folder.mkdir()
    rows = []
    for i, row in enumerate(table.to_dict("records")):
        name = f"case{i}.png"
        shutil.copy(row["image_path"], folder / name)
        rows.append({"image": name, "label": row["label"], "patient": f"p{i}", "age": row["age"],
                     "family_history": row["family_history"] or "", "shoe_size": 36 + i})
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    sidecar = {"name": "clinic", "columns": {"age": {"kind": "numeric", "range": [0, 120]},
                                             "family_history": {"kind": "categorical", "levels": ["no", "yes"]},
                                             "shoe_size": {"kind": "numeric", "range": [20, 60]}}}
    (folder / "manifest.yaml").write_text(yaml.safe_dump(sidecar))
    return folder


def test_a_manifests_metadata_reach_a_fusing_model_and_unknown_columns_are_named(trained, tmp_path, capsys):
    from senolab.cohorts.readers import read_cohort

    folder = manifest_folder(tmp_path / "clinic")
    assert senolab(["evaluate", "runs/fused", "--on", str(folder), "--out", "runs/eval_clinic", "--quiet"]) == 0
    assert senolab(["predict", "runs/fused", str(folder), "--out", "pred_clinic", "--quiet"]) == 0
    evaluated = pd.read_parquet("runs/eval_clinic/predictions.parquet")
    paths = read_cohort(folder).table.set_index("case_id")["image_path"].map(lambda p: str(Path(p).resolve()))
    evaluated["image"] = evaluated["case_id"].map(paths)
    predicted = pd.read_csv("pred_clinic/predictions.csv")
    predicted["image"] = predicted["image"].map(lambda p: str(Path(p).resolve()))
    both = evaluated.merge(predicted, on="image", suffixes=("_eval", "_pred"))
    assert len(both) == 6
    assert np.allclose(both["prob_malignant_eval"], both["prob_malignant_pred"], atol=1e-5)
    summary = json.loads(Path("pred_clinic/summary.json").read_text())
    assert summary["input_kind"] == "manifest"
    assert summary["metadata"]["used"] == ["age", "family_history"]
    assert summary["metadata"]["ignored"] == ["shoe_size"]
    assert set(summary["metadata"]["missing"]) == {"tissue_composition", "symptoms"}
    # the same images without their metadata (a plain folder): every field masked, other probabilities
    images = tmp_path / "images_only"
    images.mkdir()
    for picture in folder.glob("*.png"):
        shutil.copy(picture, images / picture.name)
    assert senolab(["predict", "runs/fused", str(images), "--out", "pred_masked", "--quiet"]) == 0
    masked = pd.read_csv("pred_masked/predictions.csv").assign(name=lambda t: t["image"].map(lambda p: Path(p).name))
    fed = predicted.assign(name=predicted["image"].map(lambda p: Path(p).name)).merge(masked, on="name")
    assert not np.allclose(fed["score_x"], fed["score_y"], atol=1e-6)

    capsys.readouterr()
    assert senolab(["export", "runs/fused", "--out", "onnx_fused"]) == 2
    refused = capsys.readouterr().err.strip()
    assert len(refused.splitlines()) == 1 and "image-only models" in refused


def test_a_mammograms_mask_comes_back_through_the_crop_and_the_turn(one_torch_thread):
    import torch

    from senolab.cohorts.dataset import letterbox, normalised_box
    from senolab.cohorts.imaging import bbox_from_mask
    from senolab.cohorts.prepare import prepare
    from senolab.cohorts.synthetic_mammography import MammographyConfig, generate_mammography
    from senolab.runners.predict import input_frame, unletterbox

    cohort = generate_mammography(MammographyConfig(images_per_site=8, image_size=192, seed=3), progress=False)
    row = next(r for r in cohort.table.to_dict("records") if r["laterality"] == "R" and cohort.arrays[r["case_id"]][1])
    image, (lesion,) = cohort.arrays[row["case_id"]]
    prepared, (prepared_lesion,) = prepare(image, [lesion], row)
    model_space = letterbox(prepared, [prepared_lesion], 96).mask  # what a perfect model would predict
    frame = input_frame(image, {"modality": "MG", "laterality": "R"}, "US")
    assert frame.flip and frame.box != (0, image.shape[0], 0, image.shape[1])

    def dice(a, b):
        return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())

    back = frame.to_input(model_space.astype(np.uint8), mask=True)
    assert back.shape == image.shape and dice(back, lesion) > 0.8
    naive = unletterbox(model_space.astype(np.uint8), image.shape)  # the letterbox alone, as for ultrasound
    assert dice(naive, lesion) < dice(back, lesion) - 0.3
    box, _ = normalised_box(torch.from_numpy(model_space)[None])
    assert np.allclose(frame.box_to_input(box.tolist()), bbox_from_mask(lesion), atol=3)


def test_a_dicom_mammogram_is_predicted_in_its_own_pixels_with_its_area_in_mm2(trained, tmp_path):
    from dicom_builders import mammogram_dicom

    from senolab.cohorts.dicom import read_dicom
    from senolab.cohorts.synthetic_mammography import MammographyConfig, generate_mammography
    from senolab.runners.predict import input_frame

    cohort = generate_mammography(MammographyConfig(images_per_site=4, image_size=160, seed=1), progress=False)
    row = next(r for r in cohort.table.to_dict("records") if r["laterality"] == "R")
    folder = tmp_path / "screening"
    folder.mkdir()
    path = mammogram_dicom(folder / "right.dcm", cohort.arrays[row["case_id"]][0], laterality="R",
                           spacing=(0.07, 0.07))
    assert senolab(["predict", "runs/tiny", str(folder), "--out", "pred_mg", "--quiet"]) == 0
    (case,) = pd.read_csv("pred_mg/predictions.csv").to_dict("records")
    # the tiny model learnt ultrasound: a mammogram is predicted, and said to be outside its training
    assert json.loads(Path("pred_mg/summary.json").read_text())["other_modality"] == [case["image"]]
    assert case["modality"] == "MG" and case["pixel_spacing_mm"] == pytest.approx(0.07)
    assert case["lesion_area_mm2"] == pytest.approx(case["lesion_area_px"] * 0.07 ** 2)
    pixels = read_dicom(path).pixels
    mask = np.asarray(Image.open("pred_mg/masks/right.png")) > 0
    assert mask.shape == pixels.shape and mask.sum() == case["lesion_area_px"] > 0
    top, bottom, left, right = input_frame(pixels, {"modality": "MG", "laterality": "R"}).box
    outside = mask.copy()
    outside[top:bottom, left:right] = False
    assert not outside.any()  # nothing predicted where the model never looked
    assert left <= case["box_x0"] <= case["box_x1"] <= right and top <= case["box_y0"] <= case["box_y1"] <= bottom
