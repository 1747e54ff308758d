"""`senolab predict MODEL INPUT --out OUT`: a trained model applied to new, unlabelled images.

MODEL is a training run folder (``senolab train``), a study unit's folder
(``.../runs/<target>/<method>/seed<k>``), a packaged model folder (``model/``, holding
``MLmodel``) or an MLflow model URI (``runs:/<run id>/model``). INPUT is an image file or
a folder searched recursively for images (PNG, JPEG, PGM, TIFF, BMP, and DICOM ``.dcm`` /
``.dicom``, windowed for display as :mod:`senolab.cohorts.dicom` does); files named like
masks (``*_mask*``) are skipped and said so. The preprocessing is the training's, saved
with the model (:mod:`senolab.runners.packaged`).

Written to OUT: ``predictions.csv`` (one row per image: class probabilities, the
malignancy score, the class at the threshold, the lesion box and area in the image's own
pixels), ``masks/<name>.png`` (the predicted lesion mask at the image's size),
``overlays/<name>.png`` (the image with the mask outlined) and ``summary.json`` (what was
read, predicted and skipped, with reasons).
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from senolab.errors import InputError
from senolab.paths import describe_path, writable_folder

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pgm", ".tif", ".tiff", ".bmp", ".dcm", ".dicom")
CHUNK = 16  # images per call of the model


def predict_images(model: str, source: str | Path, out: str | Path, threshold: float = 0.5,
                   progress: bool = True) -> dict:
    """Predict every image under ``source`` with ``model``; write OUT (module docstring); the summary."""
    import mlflow

    out = writable_folder(Path(out).absolute(), "output folder")
    images, skipped = find_images(Path(source))
    with tempfile.TemporaryDirectory(prefix="senolab-predict-") as tmp:
        # the python model itself: it takes the images decoded here, so each is read once
        packaged = mlflow.pyfunc.load_model(str(package_folder(model, Path(tmp)))).unwrap_python_model()
        rows = []
        for start in tqdm(range(0, len(images), CHUNK), desc="predict", unit="batch", disable=not progress):
            readable, unreadable = _readable(images[start:start + CHUNK])
            skipped += unreadable
            if readable:
                outputs = packaged.predict_images([image for _, image in readable], pd.DataFrame(index=range(len(readable))))
                rows += [_write_case(path, image, output, Path(source), out, threshold)
                         for (path, image), output in zip(readable, outputs.to_dict("records"))]
    pd.DataFrame(rows).to_csv(out / "predictions.csv", index=False)
    summary = {"model": str(model), "input": str(source), "threshold": threshold, "found": len(images),
               "predicted": len(rows), "skipped": skipped}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def package_folder(model: str, scratch: Path) -> Path:
    """The packaged model folder that ``model`` names (downloaded into ``scratch`` for a URI)."""
    if "://" in model or model.startswith(("runs:", "models:")):
        import mlflow

        return Path(mlflow.artifacts.download_artifacts(model, dst_path=str(scratch)))
    path = Path(model)
    for candidate in (path, path / "model"):
        if (candidate / "MLmodel").is_file():
            return candidate
    raise InputError(f"{model}: not a trained model (expected a run folder with model/MLmodel, a model folder or "
                     f"an MLflow URI such as runs:/<run id>/model); found {describe_path(path)}")


def find_images(source: Path) -> tuple[list[Path], list[dict]]:
    """The images to predict, and the files passed over with a reason."""
    found = describe_path(source)
    if found == "a file":
        return [source], []
    if found != "a folder":
        raise InputError(f"{source}: expected an image or a folder of images, found {found}")
    images, skipped = [], []
    for path in sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        if "_mask" in path.stem:
            skipped.append({"file": str(path), "reason": "a mask file (its name contains '_mask')"})
        elif not path.is_file():
            skipped.append({"file": str(path), "reason": f"{describe_path(path)}, not an image file"})
        else:
            images.append(path)
    if not images:
        raise InputError(f"{source}: no image found (looked for {', '.join(IMAGE_SUFFIXES)})")
    return images, skipped


def _readable(paths: list[Path]) -> tuple[list[tuple[Path, np.ndarray]], list[dict]]:
    from senolab.cohorts.imaging import load_gray

    readable, skipped = [], []
    for path in paths:
        try:
            readable.append((path, load_gray(path)))
        except Exception as err:  # noqa: BLE001 - any decoding failure is the same skip, with its reason
            skipped.append({"file": str(path), "reason": f"unreadable image ({type(err).__name__}: {err})"})
    return readable, skipped


def _write_case(path: Path, image: np.ndarray, output: dict, source: Path, out: Path, threshold: float) -> dict:
    """The case's row; its mask and overlay PNGs at the image's own size."""
    from PIL import Image

    name = path.relative_to(source).with_suffix("").as_posix().replace("/", "__") if source.is_dir() else path.stem
    row = {"image": str(path), "width": image.shape[1], "height": image.shape[0]}
    row.update({k: v for k, v in output.items() if k.startswith("prob_") or k == "score"})
    if "score" in output:
        row["predicted_class"] = "malignant" if output["score"] >= threshold else "benign"
    if "mask" in output:
        mask = unletterbox(np.asarray(output["mask"], np.uint8), image.shape)
        row["lesion_area_px"] = int(mask.sum())
        for folder, picture in (("masks", mask * 255), ("overlays", overlay(image, mask))):
            (out / folder).mkdir(exist_ok=True)
            Image.fromarray(picture.astype(np.uint8)).save(out / folder / f"{name}.png")
    if "bbox" in output:
        row.update(dict(zip(("box_x0", "box_y0", "box_x1", "box_y1"), unletterbox_box(output["bbox"], image.shape))))
    return row


def _letterbox_geometry(shape: tuple[int, int], size: int) -> tuple[float, int, int, int, int]:
    """As :func:`senolab.cohorts.dataset.letterbox` placed the image: scale, its size and offset."""
    h, w = shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    return scale, nh, nw, (size - nh) // 2, (size - nw) // 2


def unletterbox(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A model-space (size x size) mask back on the image's own pixel grid (0/1)."""
    from PIL import Image

    _, nh, nw, top, left = _letterbox_geometry(shape, mask.shape[0])
    inner = Image.fromarray(mask[top:top + nh, left:left + nw] * 255)
    return (np.asarray(inner.resize((shape[1], shape[0]), Image.Resampling.NEAREST)) > 127).astype(np.uint8)


def unletterbox_box(box, shape: tuple[int, int]) -> list[float]:
    """A normalised xyxy box of the letterboxed square in the image's own pixels."""
    h, w = shape
    side = max(h, w)  # the square's side in image pixels; the image sits centred in it
    x0, y0, x1, y1 = (float(v) * side for v in box)
    dx, dy = (side - w) / 2, (side - h) / 2
    return [float(np.clip(x0 - dx, 0, w)), float(np.clip(y0 - dy, 0, h)),
            float(np.clip(x1 - dx, 0, w)), float(np.clip(y1 - dy, 0, h))]


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The grayscale image in RGB with the mask's outline in red."""
    rgb = np.repeat(image[..., None], 3, axis=2).astype(np.uint8)
    inside = mask.astype(bool)
    edge = inside & ~(np.roll(inside, 1, 0) & np.roll(inside, -1, 0) & np.roll(inside, 1, 1) & np.roll(inside, -1, 1))
    rgb[edge] = (255, 0, 0)
    return rgb
