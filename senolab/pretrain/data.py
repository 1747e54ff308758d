"""The images of a cohort and nothing else: what self-supervised pretraining reads.

:class:`ImageOnlyDataset` keeps, of the case table, only the columns that say where the
pixels are and how to prepare them (``IMAGE_COLUMNS``); of an in-memory cohort, only the
images. It never holds a label, a mask, a box or an outcome, so none can reach the
pretraining, whatever the method does. (The loop also passes every batch through the label
wall, :func:`senolab.adaptation.wall.strip_labels`.)
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from senolab.cohorts.dataset import letterbox
from senolab.cohorts.imaging import load_gray
from senolab.cohorts.prepare import prepare
from senolab.cohorts.schema import Cohort

# What reading and preparing the pixels needs: the MG preparer reads laterality, the
# letterbox nothing more. Labels, masks, boxes and outcome columns are left behind.
IMAGE_COLUMNS = ("case_id", "image_path", "modality", "laterality", "height", "width")


class ImageOnlyDataset(Dataset):
    """``{"image": (1, size, size) float32 in [0, 1]}`` per case, letterboxed as for training."""

    def __init__(self, cohort: Cohort, case_ids: list[str], size: int):
        table = cohort.table.set_index("case_id").loc[list(case_ids)].reset_index()
        self.rows = table[[c for c in IMAGE_COLUMNS if c in table.columns]].to_dict("records")
        self.images = {cid: cohort.arrays[cid][0] for cid in case_ids if cid in cohort.arrays}
        self.size = size
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if index not in self._cache:
            row = self.rows[index]
            pixels = self.images.get(row["case_id"])
            pixels = pixels if pixels is not None else load_gray(row["image_path"])
            image, _ = prepare(pixels, [], row)
            self._cache[index] = letterbox(image, [], self.size).image
        return {"image": torch.from_numpy(self._cache[index])[None]}
