"""How a case's lesions are located (mask_kind) decides its targets and how it is scored."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from senolab.cohorts.dataset import CohortDataset
from senolab.cohorts.pixels import case_masks, inscribed_disc
from senolab.cohorts.schema import Cohort, CohortError

SIZE = (40, 60)  # height, width


def _row(case_id: str, kind: str, label: str, boxes: list) -> dict:
    return {"case_id": case_id, "patient_id": case_id, "cohort": "toy", "site": "a", "scanner": "x",
            "modality": "US", "image_path": None, "mask_paths": [], "other_mask_paths": [], "label": label,
            "pixel_spacing_mm": 0.1, "width": SIZE[1], "height": SIZE[0], "mask_kind": kind, "lesion_bboxes": boxes}


def _cohort() -> Cohort:
    outline = np.zeros(SIZE, bool)
    outline[10:20, 30:50] = True
    rows = [_row("outline", "outline", "malignant", [[30, 10, 50, 20]]),
            _row("circle", "circle", "benign", [[-5, 5, 15, 25]]),  # centre (5, 15), radius 10: past the left border
            _row("box", "box", "malignant", [[30, 10, 50, 20]]),
            _row("none", "none", "malignant", []),
            _row("normal_circle", "circle", "normal", [])]
    image = np.full(SIZE, 100, np.uint8)
    arrays = {"outline": (image, [outline])}
    arrays.update({r["case_id"]: (image, []) for r in rows[1:]})
    return Cohort("toy", pd.DataFrame(rows), {}, arrays=arrays).validate()


def test_a_circle_is_the_disc_inscribed_in_its_box_and_keeps_its_centre_past_the_border():
    disc = inscribed_disc([-5, 5, 15, 25], *SIZE)
    ys, xs = np.nonzero(disc)
    assert xs.min() == 0 and xs.max() == 14  # the left part of the circle is outside the image
    assert ys.min() == 5 and ys.max() == 24
    assert disc[15, 5] and not disc[5, 14]  # the centre is in; the box's corner is not
    # a radius-10 disc less the segment cut 5 px left of its centre: 100 pi - (100 acos(0.5) - 5 sqrt(75))
    inside = 100 * np.pi - (100 * np.arccos(0.5) - 5 * np.sqrt(75))
    assert abs(disc.sum() - inside) < 5


def test_only_outlines_and_circles_are_segmentation_targets():
    cohort = _cohort()
    rows = cohort.table.set_index("case_id", drop=False)
    assert [m.sum() for m in case_masks(cohort, rows.loc["outline"].to_dict())] == [200]
    assert len(case_masks(cohort, rows.loc["circle"].to_dict())) == 1
    assert case_masks(cohort, rows.loc["box"].to_dict()) == []
    assert case_masks(cohort, rows.loc["none"].to_dict()) == []
    items = {item["case_id"]: item for item in CohortDataset(cohort, size=64)}
    assert items["outline"]["has_mask"] and items["outline"]["has_bbox"]
    assert items["circle"]["has_mask"] and items["circle"]["mask"].sum() > 0
    assert not items["box"]["has_mask"] and items["box"]["mask"].sum() == 0
    assert items["box"]["has_bbox"]  # a box target from the box alone
    np.testing.assert_allclose(items["box"]["bbox"].numpy(), items["outline"]["bbox"].numpy(), atol=1e-6)
    assert not items["none"]["has_mask"] and not items["none"]["has_bbox"]
    assert items["normal_circle"]["has_mask"] and items["normal_circle"]["mask"].sum() == 0  # "no lesion here"


def test_dice_against_a_circle_is_reported_apart_and_boxes_have_no_dice():
    from senolab.engine.predict import _segmentation_columns

    pred = np.zeros((8, 8), bool)
    pred[2:6, 2:6] = True
    truth = pred.copy()
    rows = _cohort().table.set_index("case_id")
    outline = _segmentation_columns(pred, truth, None, rows.loc["outline"])
    circle = _segmentation_columns(pred, truth, None, rows.loc["circle"])
    box = _segmentation_columns(pred, np.zeros_like(truth), None, rows.loc["box"])
    unlocated = _segmentation_columns(pred, np.zeros_like(truth), None, rows.loc["none"])
    assert outline["dice"] == 1.0 and "dice_vs_circle" not in outline
    assert circle["dice_vs_circle"] == 1.0 and np.isnan(circle["dice"]) and np.isnan(circle["hd95_px"])
    # no mask to compare with, but the lesion is there: never a lesion-free false positive
    assert np.isnan(box["dice"]) and box["lesion_present"] and unlocated["lesion_present"]


@pytest.mark.parametrize(("column", "value"), [("modality", "CT"), ("mask_kind", "polygon")])
def test_an_unknown_modality_or_mask_kind_is_refused_by_name(column, value):
    cohort = _cohort()
    cohort.table.loc[0, column] = value
    with pytest.raises(CohortError, match=f"{column}.*{value}"):
        cohort.validate()


def test_circle_cases_take_part_in_the_early_stopping_score_by_their_circle_overlap():
    from senolab.engine.predict import validation_score

    table = pd.DataFrame({"label": [0.0, 1.0], "label_name": ["benign", "malignant"], "score": [0.2, 0.8],
                          "dice": [np.nan, np.nan], "dice_vs_circle": [0.4, 0.6]})
    metrics = validation_score(table, ("cls", "seg"))
    assert metrics["val_dice"] == pytest.approx(0.5) and metrics["val_score"] == pytest.approx(0.75)
