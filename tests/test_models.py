"""Encoders, heads, the multi-task model and its losses (senolab.models)."""
from __future__ import annotations

import dataclasses
import itertools
import math
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from senolab.models import (
    ENCODERS,
    HEADS,
    LossConfig,
    MultiTaskModel,
    box_from_params,
    build_encoder,
    build_model,
    multitask_losses,
)
from senolab.models.heads import MIN_BOX_SIZE
from senolab.models.losses import focal_loss, generalized_box_iou, soft_dice_loss

SIZE = 64


pytestmark = pytest.mark.usefixtures("one_torch_thread")
HEAD_SUBSETS = [
    subset for r in range(1, 4) for subset in itertools.combinations(("cls", "seg", "box"), r)
]


def make_batch(batch_size: int = 2, size: int = SIZE, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch_size, 1, size, size)
    mask[:, :, size // 4 : size // 2, size // 8 : size // 2] = 1
    return {
        "image": torch.rand(batch_size, 1, size, size, generator=gen),
        "mask": mask,
        "has_mask": torch.ones(batch_size, dtype=torch.bool),
        "label": torch.arange(batch_size) % 3,
        "has_label": torch.ones(batch_size, dtype=torch.bool),
        "bbox": torch.tensor([[0.125, 0.25, 0.5, 0.5]]).repeat(batch_size, 1),
        "has_bbox": torch.ones(batch_size, dtype=torch.bool),
        "meta_num": torch.rand(batch_size, 3, generator=gen),
    }


def test_registries_list_every_component():
    assert ENCODERS.names() == ["hybrid", "timm", "unet", "vit"]  # timm: tests/test_timm_encoders.py
    assert HEADS.names() == ["box", "cls", "seg"]


@pytest.mark.parametrize("heads", HEAD_SUBSETS, ids="+".join)
@pytest.mark.parametrize("encoder", ["unet", "hybrid", "vit"])
def test_every_encoder_and_head_subset_trains(encoder, heads):
    torch.manual_seed(0)
    model = build_model(encoder, {name: {} for name in heads})
    batch = make_batch()
    out = model(batch)

    assert out["embedding"].shape == (2, model.encoder.embedding_dim)
    assert ("tokens" in out) == (encoder != "unet")
    if "tokens" in out:
        assert out["tokens"].shape == (2, (SIZE // 16) ** 2, model.encoder.embedding_dim)
    expected = {"cls": ("logits", (2, 3)), "seg": ("seg_logits", (2, 1, SIZE, SIZE)), "box": ("bbox", (2, 4))}
    for task, (key, shape) in expected.items():
        assert (key in out) == (task in heads)
        if key in out:
            assert out[key].shape == shape

    losses = multitask_losses(out, batch)
    assert sorted(losses) == sorted(heads)
    sum(losses.values()).backward()
    starved = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not starved, f"parameters without gradient: {starved}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_default_unet_has_at_most_two_million_parameters():
    encoder = build_encoder("unet")
    n_params = sum(p.numel() for p in encoder.parameters())
    assert 0.5e6 < n_params <= 2e6
    assert encoder.has_decoder and any(isinstance(m, nn.BatchNorm2d) for m in encoder.modules())


def test_binary_classification_head():
    torch.manual_seed(0)
    model = build_model("unet", {"cls": {"num_classes": 2}})
    assert model(make_batch())["logits"].shape == (2, 2)


def test_import_does_not_need_transformers():
    code = "import sys, senolab.models; assert 'transformers' not in sys.modules, 'transformers imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_same_seed_builds_identical_models():
    batch = make_batch()
    outputs = []
    for _ in range(2):
        torch.manual_seed(3)
        model = build_model("hybrid").eval()
        outputs.append(model(batch))
    for key in outputs[0]:
        assert torch.equal(outputs[0][key], outputs[1][key])


@pytest.mark.parametrize("encoder", ["unet", "hybrid", "vit"])
def test_gradcam_layer_outputs_the_feature_map_the_classifier_reads(encoder):
    torch.manual_seed(0)
    model = build_model(encoder, {"cls": {}})
    seen = []
    model.encoder.gradcam_layer.register_forward_hook(lambda module, args, output: seen.append(output))
    encoded = model.encoder(make_batch()["image"])
    assert len(seen) == 1 and seen[0].dim() == 4
    assert torch.equal(seen[0], encoded.feature_map)
    (grad,) = torch.autograd.grad(model.heads["cls"](encoded).sum(), seen[0])
    assert grad.abs().sum() > 0


def test_input_size_must_fit_the_encoder():
    with pytest.raises(ValueError, match="multiples of 16"):
        build_encoder("unet")(torch.rand(1, 1, 60, 64))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        build_encoder("unet")(torch.rand(1, 64, 64))


def test_segmentation_head_needs_a_decoder():
    encoder = build_encoder("unet", decoder=False)
    with pytest.raises(ValueError, match="without a decoder"):
        MultiTaskModel(encoder, {"seg": {}})


def test_checkpoint_loads_by_path_with_weights_only(tmp_path):
    torch.manual_seed(0)
    trained = build_model("unet", {"cls": {}, "seg": {}})
    encoder_file, model_file = tmp_path / "encoder.pt", tmp_path / "model.pt"
    torch.save(trained.encoder.state_dict(), encoder_file)
    torch.save({"model": trained.state_dict(), "epoch": 3}, model_file)
    image = make_batch()["image"]
    reference = trained.eval().encoder(image)

    torch.manual_seed(1)
    restored = build_model("unet", {"cls": {}, "seg": {}}, checkpoint=encoder_file).eval()
    assert torch.equal(restored.encoder(image).decoder_features, reference.decoder_features)

    # A whole model's checkpoint initialises a classification-only encoder (decoder skipped).
    torch.manual_seed(2)
    cls_only = build_model("unet", {"cls": {}}, checkpoint=model_file).eval()
    assert cls_only.encoder.decoder is None
    assert torch.equal(cls_only.encoder(image).embedding, reference.embedding)

    with pytest.raises(ValueError, match="encoder.pt.*does not fit"):
        build_encoder("unet", widths=(8, 16, 32), checkpoint=encoder_file)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        build_encoder("unet", checkpoint=tmp_path / "missing.pt")


class ConcatFusion(nn.Module):
    """A minimal fusion module honouring the seam: image embedding ++ projected meta_num."""

    def __init__(self, image_dim: int, n_numeric: int, out_dim: int = 32):
        super().__init__()
        self.embedding_dim = out_dim
        self.project = nn.Linear(image_dim + n_numeric, out_dim)

    def forward(self, encoded, batch):
        fused = self.project(torch.cat([encoded.embedding, batch["meta_num"]], dim=1))
        return dataclasses.replace(encoded, embedding=fused)


def test_fusion_module_feeds_the_heads():
    torch.manual_seed(0)
    encoder = build_encoder("unet", decoder=False)
    fusion = ConcatFusion(encoder.embedding_dim, 3)
    model = MultiTaskModel(encoder, {"cls": {}, "box": {}}, fusion=fusion)
    batch = make_batch()
    out = model(batch)
    assert out["embedding"].shape == (2, 32) and out["logits"].shape == (2, 3)
    out["logits"].sum().backward()
    assert fusion.project.weight.grad.abs().sum() > 0
    changed = dict(batch, meta_num=batch["meta_num"] + 1)
    assert not torch.equal(model.eval()(changed)["logits"], model(batch)["logits"])
    with pytest.raises(KeyError, match="no 'image'"):
        model({"meta_num": batch["meta_num"]})


def test_box_parametrisation_is_valid_and_reaches_every_box():
    raw = torch.randn(10000, 4) * 30
    box = box_from_params(raw)
    assert (box[:, 2:] > box[:, :2]).all()
    assert (box >= 0).all() and (box <= 1 + 1e-6).all()
    target = torch.tensor([[0.1, 0.2, 0.7, 0.3], [0.0001, 0.5, 0.9999, 0.502]], dtype=torch.float64)
    size = target[:, 2:] - target[:, :2]
    pos = target[:, :2] / (1 - size)
    raw_size = torch.logit((size - MIN_BOX_SIZE) / (1 - MIN_BOX_SIZE))
    recovered = box_from_params(torch.cat([torch.logit(pos), raw_size], dim=1))
    assert torch.allclose(recovered, target, atol=1e-9)


# ---------------------------------------------------------------- losses


def random_outputs(batch_size: int, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {
        "logits": torch.randn(batch_size, 3, generator=gen, requires_grad=True),
        "seg_logits": torch.randn(batch_size, 1, SIZE, SIZE, generator=gen, requires_grad=True),
        "bbox": box_from_params(torch.randn(batch_size, 4, generator=gen)).requires_grad_(),
    }


def test_cases_that_cannot_contribute_change_nothing():
    batch = make_batch(4)
    batch["has_label"] = torch.tensor([True, False, True, False])
    batch["has_mask"] = torch.tensor([False, True, True, False])
    batch["has_bbox"] = torch.tensor([True, True, False, False])
    outputs = random_outputs(4)
    reference = multitask_losses(outputs, batch)

    other = dict(batch)
    other["label"] = batch["label"].clone()
    other["label"][[1, 3]] = torch.tensor([2, 1])
    other["mask"] = batch["mask"].clone()
    other["mask"][[0, 3]] = 1 - other["mask"][[0, 3]]
    other["bbox"] = batch["bbox"].clone()
    other["bbox"][[2, 3]] = torch.tensor([0.0, 0.0, 1.0, 1.0])
    changed = multitask_losses(outputs, other)
    assert reference.keys() == changed.keys() == {"cls", "seg", "box"}
    for task in reference:
        assert torch.equal(reference[task], changed[task])
    # ... while a contributing case's target does change its task's loss.
    other["label"][0] = 2 - batch["label"][0]
    assert not torch.equal(multitask_losses(outputs, other)["cls"], reference["cls"])


def test_task_without_contributing_case_is_omitted():
    batch = make_batch(2)
    batch["has_mask"] = torch.zeros(2, dtype=torch.bool)
    outputs = random_outputs(2)
    assert set(multitask_losses(outputs, batch)) == {"cls", "box"}
    del outputs["bbox"]
    assert set(multitask_losses(outputs, batch)) == {"cls"}


def test_focal_loss_reduces_to_weighted_cross_entropy_at_gamma_zero():
    gen = torch.Generator().manual_seed(0)
    logits, target = torch.randn(16, 3, generator=gen), torch.randint(0, 3, (16,), generator=gen)
    weight = torch.tensor([0.5, 1.0, 3.0])
    assert torch.allclose(focal_loss(logits, target, 0.0, weight), F.cross_entropy(logits, target, weight=weight))
    assert torch.allclose(focal_loss(logits, target), F.cross_entropy(logits, target))
    assert focal_loss(logits, target, 2.0) < focal_loss(logits, target, 0.0)
    batch = {"label": target, "has_label": torch.ones(16, dtype=torch.bool)}
    config = LossConfig(class_weights=(0.5, 1.0, 3.0))
    assert torch.allclose(multitask_losses({"logits": logits}, batch, config)["cls"],
                          F.cross_entropy(logits, target, weight=weight))


def test_classification_loss_rejects_bad_labels_and_weights():
    logits = torch.randn(2, 3)
    with pytest.raises(ValueError, match=r"'label' must lie in \[0, 3\)"):
        multitask_losses({"logits": logits}, {"label": torch.tensor([0, 3]), "has_label": torch.ones(2, dtype=torch.bool)})
    with pytest.raises(ValueError, match="class_weights has 2 entries"):
        multitask_losses({"logits": logits}, {"label": torch.tensor([0, 1]), "has_label": torch.ones(2, dtype=torch.bool)},
                         LossConfig(class_weights=(1.0, 2.0)))
    with pytest.raises(KeyError, match="'has_label'"):
        multitask_losses({"logits": logits}, {"label": torch.tensor([0, 1])})


def test_giou_against_hand_computed_values():
    a = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0], [0.2, 0.3, 0.6, 0.9]])
    b = torch.tensor([[2.0, 0.0, 3.0, 1.0], [1.0, 1.0, 3.0, 3.0], [0.2, 0.3, 0.6, 0.9]])
    expected = torch.tensor([-1 / 3, 1 / 7 - 2 / 9, 1.0])
    assert torch.allclose(generalized_box_iou(a, b), expected, atol=1e-6)
    batch = {"bbox": a[2:], "has_bbox": torch.ones(1, dtype=torch.bool)}
    assert multitask_losses({"bbox": a[2:]}, batch)["box"] < 1e-5


def test_dice_of_perfect_prediction_is_zero_and_lesion_free_images_skip_dice():
    mask = make_batch(2)["mask"]
    perfect = (mask * 2 - 1) * 30
    assert soft_dice_loss(perfect, mask) < 1e-6
    assert soft_dice_loss(-perfect, mask) > 0.99
    batch = {"mask": torch.zeros(1, 1, SIZE, SIZE), "has_mask": torch.ones(1, dtype=torch.bool)}
    undecided = torch.zeros(1, 1, SIZE, SIZE)
    loss = multitask_losses({"seg_logits": undecided}, batch, LossConfig(bce_weight=2.0))["seg"]
    assert math.isclose(loss.item(), 2 * math.log(2), rel_tol=1e-6)  # BCE only, no Dice term
