"""The torch Dataset: cohort rows to batch dicts (:class:`Batch`, docs/contracts.md#batch).

Images are letterboxed to ``size`` x ``size`` (resized keeping the aspect ratio, then
padded with zeros) so lesion shape is not distorted, and scaled to [0, 1]. Training-time
augmentation uses torchio (flip, affine, gamma, noise, blur, bias field) on the image and
mask together; it is seeded per (seed, epoch, index), so a run is reproducible on CPU
whatever the number of DataLoader workers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

from senolab.cohorts.pixels import box_masks, case_image, case_masks
from senolab.cohorts.prepare import prepare
from senolab.cohorts.schema import LABELS, SEGMENTABLE, Cohort
from senolab.cohorts.tabular import MetadataEncoder

BINARY = ("benign", "malignant")


class Batch(TypedDict):
    """The batch dict every model, loss, adaptation method and explainer reads.

    Shapes are those of a collated batch (PyTorch's default collate of
    :meth:`CohortDataset.__getitem__` items, which have the same keys without the leading
    ``B``); ``H = W =`` the dataset's ``size``. The contract, with what each value means,
    is docs/contracts.md#batch; tests/test_contracts.py checks these keys against a real batch.
    """

    case_id: list[str]  # (B,) case ids; one item holds a str
    image: torch.Tensor  # (B, 1, H, W) float32 in [0, 1], letterboxed (zero padding)
    mask: torch.Tensor  # (B, 1, H, W) float32 {0, 1}: union of the lesion masks; zeros where has_mask is False
    has_mask: torch.Tensor  # (B,) bool: the mask is a target (mask_kind outline or circle; empty = no lesion)
    label: torch.Tensor  # (B,) int64 index into the task's classes; 0 where has_label is False
    has_label: torch.Tensor  # (B,) bool: False for unlabelled cohorts and labels outside the classes
    bbox: torch.Tensor  # (B, 4) float32 normalised xyxy around all lesion pixels; zeros if none
    has_bbox: torch.Tensor  # (B,) bool: a lesion is located (by its mask or its box)
    spacing_mm: torch.Tensor  # (B,) float32 mm per pixel of the model input (letterboxed); NaN when unknown
    site: torch.Tensor  # (B,) int64 index into the dataset's site vocabulary; -1 if not in it
    meta_num: torch.Tensor  # (B, Fn) float32 encoded numeric/ordinal/multi metadata; 0 where missing
    meta_num_missing: torch.Tensor  # (B, Fn) bool, True where the value is missing
    meta_cat: torch.Tensor  # (B, Fc) int64 categorical codes 1..L, 0 for missing or unseen
    radiomics: torch.Tensor  # (B, R) float32 standardised features (R = 0 without radiomics)


@dataclass
class Letterboxed:
    image: np.ndarray  # float32 size x size in [0, 1]
    mask: np.ndarray  # float32 size x size {0, 1}: union of the lesions (their filled boxes for mask_kind "box")
    scale: float  # input pixels per pixel of the image given (the prepared one)


def letterbox(image: np.ndarray, masks: list[np.ndarray], size: int) -> Letterboxed:
    """Resize the longer side to ``size`` keeping the aspect ratio; pad the rest with 0."""
    h, w = image.shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    top, left = (size - nh) // 2, (size - nw) // 2
    out = np.zeros((size, size), np.float32)
    resized = Image.fromarray(image).resize((nw, nh), Image.Resampling.BILINEAR)
    out[top : top + nh, left : left + nw] = np.asarray(resized, np.float32) / 255.0
    mask = np.zeros((size, size), np.float32)
    if masks:
        union = np.logical_or.reduce(masks).astype(np.uint8) * 255
        small = Image.fromarray(union).resize((nw, nh), Image.Resampling.NEAREST)
        mask[top : top + nh, left : left + nw] = np.asarray(small) > 127
    return Letterboxed(out, mask, scale)


def normalised_box(mask: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """xyxy in [0, 1] of the box around all lesion pixels (1 x H x W); zeros if none.

    With several lesions (18 BUSI images) the box encloses them all, so it stays the box
    of the mask after any augmentation.
    """
    ys, xs = torch.nonzero(mask[0] > 0.5, as_tuple=True)
    if len(xs) == 0:
        return torch.zeros(4), False
    h, w = mask.shape[-2:]
    box = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
    return box / torch.tensor([w, h, w, h], dtype=torch.float32), True


def default_augmentation():
    """torchio transforms for 2D ultrasound (images as 1 x H x W x 1 volumes)."""
    import torchio as tio

    return tio.Compose(
        [
            tio.RandomFlip(axes=(1,), flip_probability=0.5),  # left-right; never up-down (depth)
            tio.RandomAffine(scales=(0.9, 1.1, 0.9, 1.1, 1, 1), degrees=(0, 0, 0, 0, -10, 10),
                             translation=(-6, 6, -6, 6, 0, 0), p=0.7),
            tio.RandomGamma(log_gamma=(-0.3, 0.3), p=0.5),
            tio.RandomBiasField(coefficients=0.3, order=2, p=0.3),
            tio.RandomBlur(std=(0, 1, 0, 1, 0, 0), p=0.3),
            tio.RandomNoise(std=(0, 0.03), p=0.3),
        ]
    )


class CohortDataset(Dataset):
    """Rows of a cohort as batch dicts.

    Parameters
    ----------
    classes: the label set of the classification task, e.g. ``LABELS`` (3 classes) or
        ``BINARY``; a case whose label is not among them has ``has_label`` False.
    metadata: a fitted :class:`MetadataEncoder` (fit it on the training rows only).
    radiomics: a DataFrame indexed by ``case_id`` of (already standardised) features.
    sites: the site vocabulary for the ``site`` index (defaults to the rows' sites).
    labelled: False for an unlabelled target cohort (``has_label`` all False).
    """

    def __init__(
        self,
        cohort: Cohort,
        case_ids=None,
        size: int = 128,
        augment: bool = False,
        seed: int = 0,
        classes: tuple[str, ...] = LABELS,
        metadata: MetadataEncoder | None = None,
        radiomics: pd.DataFrame | None = None,
        sites: list[str] | None = None,
        labelled: bool = True,
    ):
        table = cohort.table
        if case_ids is not None:
            table = table.set_index("case_id").loc[list(case_ids)].reset_index()
        self.cohort, self.table = cohort, table.reset_index(drop=True)
        self.size, self.seed, self.epoch, self.classes, self.labelled = size, seed, 0, tuple(classes), labelled
        self.transform = default_augmentation() if augment else None
        self.sites = sorted(self.table["site"].unique()) if sites is None else list(sites)
        self._tabular = metadata.transform(self.table) if metadata is not None else None
        self._radiomics = None
        if radiomics is not None:
            self._radiomics = radiomics.reindex(self.table["case_id"]).to_numpy(np.float32, copy=True)
        self._cache: dict[int, Letterboxed] = {}

    def __len__(self) -> int:
        return len(self.table)

    def set_epoch(self, epoch: int) -> None:
        """Changes the augmentation draw; call it at the start of each epoch."""
        self.epoch = epoch

    def __getitem__(self, index: int) -> Batch:
        """One case as a :class:`Batch` item (no leading batch dimension)."""
        row = self.table.iloc[index]
        boxed = self._letterboxed(index, row)
        image, mask = torch.from_numpy(boxed.image)[None], torch.from_numpy(boxed.mask)[None]
        if self.transform is not None:
            image, mask = self._augment(index, image, mask)
        bbox, has_bbox = normalised_box(mask)
        has_mask = row["mask_kind"] in SEGMENTABLE
        if not has_mask:  # filled boxes gave the box; they are not a segmentation target
            mask, has_bbox = torch.zeros_like(mask), has_bbox and row["mask_kind"] == "box"
        label = row["label"]
        has_label = self.labelled and label in self.classes
        out = {
            "case_id": row["case_id"],
            "image": image,
            "mask": mask,
            "has_mask": torch.tensor(has_mask),
            "label": torch.tensor(self.classes.index(label) if has_label else 0, dtype=torch.long),
            "has_label": torch.tensor(has_label),
            "bbox": bbox,
            "has_bbox": torch.tensor(has_bbox),
            # preparation crops but never resamples: a prepared pixel has the stored spacing
            "spacing_mm": torch.tensor(float(row["pixel_spacing_mm"]) / boxed.scale, dtype=torch.float32),
            "site": torch.tensor(self.sites.index(row["site"]) if row["site"] in self.sites else -1),
        }
        out.update(self._tabular_item(index))  # meta_num, meta_num_missing, meta_cat, radiomics
        return out

    def _letterboxed(self, index: int, row: pd.Series) -> Letterboxed:
        # Decoding and resizing dominate loading; the letterboxed arrays are small.
        if index not in self._cache:
            record = row.to_dict()
            masks = box_masks(record) if record["mask_kind"] == "box" else case_masks(self.cohort, record)
            self._cache[index] = letterbox(*prepare(case_image(self.cohort, record), masks, record), self.size)
        return self._cache[index]

    def _augment(self, index: int, image: torch.Tensor, mask: torch.Tensor):
        import torchio as tio

        subject = tio.Subject(image=tio.ScalarImage(tensor=image[..., None]), mask=tio.LabelMap(tensor=mask[..., None]))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hash((self.seed, self.epoch, index)) % (2**31))
            out = self.transform(subject)
        return out["image"].data[..., 0].float().clamp(0, 1), (out["mask"].data[..., 0] > 0.5).float()

    def _tabular_item(self, index: int) -> dict:
        if self._tabular is None:
            item = {"meta_num": torch.zeros(0), "meta_num_missing": torch.zeros(0, dtype=torch.bool),
                    "meta_cat": torch.zeros(0, dtype=torch.long)}
        else:
            item = {k: torch.from_numpy(np.asarray(v[index])) for k, v in self._tabular.items()}
        item["radiomics"] = torch.from_numpy(self._radiomics[index]) if self._radiomics is not None else torch.zeros(0)
        return item
