"""Domain-adaptation methods: the registry, the label wall, and each method's defining property."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from senolab.adaptation import METHODS, AdaptationMethod, TargetBatch, TargetLabelAccess, strip_labels
from senolab.adaptation.alignment import coral_loss, mmd_loss
from senolab.adaptation.augment import strong_augment, weak_augment
from senolab.adaptation.dann import ganin_lambda, reverse_gradient
from senolab.adaptation.harmonise import match_histogram
from senolab.adaptation.quality import intensity_distance, translation_quality
from senolab.adaptation.wall import is_label_key
from senolab.models import build_model, multitask_losses

SIZE = 32


# --------------------------------------------------------------------------- fixtures
class TinyMultiTask(nn.Module):
    """A small model with the docs/contracts.md#model-outputs contract (and BatchNorm, for AdaBN)."""

    def __init__(self, classes: int = 2, width: int = 8, dim: int = 16):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        )
        self.project = nn.Linear(width, dim)
        self.classify = nn.Linear(dim, classes)
        self.segment = nn.Conv2d(width, 1, 1)
        self.box = nn.Linear(dim, 4)

    def forward(self, batch):
        features = self.encoder(batch["image"])
        embedding = self.project(features.mean((2, 3)))
        seg = F.interpolate(self.segment(features), size=batch["image"].shape[-2:], mode="bilinear", align_corners=False)
        return {"embedding": embedding, "logits": self.classify(embedding), "seg_logits": seg,
                "bbox": torch.sigmoid(self.box(embedding))}


def lesion_images(n: int, generator: torch.Generator, size: int = SIZE):
    """Bright disks (large = class 1) on speckle; returns images in [0, 1], masks, labels."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    labels = torch.randint(0, 2, (n,), generator=generator)
    radius = torch.where(labels == 1, 0.3 * size, 0.15 * size)
    centre = size / 2 + (torch.rand(n, 2, generator=generator) - 0.5) * size * 0.3
    dist = ((yy - centre[:, 0, None, None]) ** 2 + (xx - centre[:, 1, None, None]) ** 2).sqrt()
    masks = (dist < radius[:, None, None]).float()[:, None]
    speckle = 0.25 * torch.rand(n, 1, size, size, generator=generator)
    return (0.2 + 0.6 * masks + speckle).clamp(0, 1), masks, labels


def site_batch(n: int, seed: int, target: bool) -> dict:
    """A full batch of the contract; the target site is darker, gamma-shifted and noisier."""
    generator = torch.Generator().manual_seed(seed)
    images, masks, labels = lesion_images(n, generator)
    if target:
        images = (0.7 * images.pow(1.8) + 0.1 * torch.rand(images.shape, generator=generator)).clamp(0, 1)
    return {
        "image": images, "mask": masks, "has_mask": torch.ones(n, dtype=torch.bool),
        "label": labels, "has_label": torch.ones(n, dtype=torch.bool),
        "bbox": torch.tensor([[0.2, 0.2, 0.8, 0.8]]).repeat(n, 1), "has_bbox": torch.ones(n, dtype=torch.bool),
        "site": torch.full((n,), int(target)), "case_id": [f"{'t' if target else 's'}{seed}-{i}" for i in range(n)],
    }


def loaders(n_batches: int = 3, batch: int = 8):
    return ([site_batch(batch, seed, target=False) for seed in range(n_batches)],
            [site_batch(batch, 100 + seed, target=True) for seed in range(n_batches)])


# Keeps the CycleGAN inside the registry test to a few seconds.
FAST = {"cyclegan": {"steps": 3, "ngf": 4, "ndf": 4, "n_blocks": 1, "max_images": 16}}


def build(name: str) -> AdaptationMethod:
    return METHODS.build(name, **FAST.get(name, {}))


def default_model() -> nn.Module:
    """The real default multi-task model (residual U-Net with BatchNorm, all three heads)."""
    return build_model(heads={"cls": {"num_classes": 2}, "seg": {}, "box": {}})


def task_loss(out, batch) -> torch.Tensor:
    return sum(multitask_losses(out, batch).values())


def run_steps(method: AdaptationMethod, model: nn.Module, source, target, steps: int = 3):
    """The engine's loop in miniature: prepare, a few optimisation steps, adapt for inference."""
    method.prepare(model, source, target)
    params = [p for p in [*model.parameters(), *method.parameters()] if p.requires_grad]
    optimiser = torch.optim.SGD(params, lr=0.05)
    history = []
    for step in range(steps):
        s, t = source[step % len(source)], target[step % len(target)]
        out = method(model, s, t, step, steps)  # like the engine: a target batch whether needed or not
        loss = task_loss(out.source_out, s) + sum(out.losses.values())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        history.append(out)
    return history, method.adapt_for_inference(model, target)


# ------------------------------------------------------------------ the whole registry
@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_trains_a_few_steps_with_finite_named_losses(name):
    torch.manual_seed(0)
    source, target = loaders()
    model, method = default_model(), build(name)
    before = copy.deepcopy(model.state_dict())
    history, adapted = run_steps(method, model, source, target)

    for out in history:
        assert set(out.losses) == set(method.loss_names)
        for loss_name, value in out.losses.items():
            assert value.ndim == 0 and torch.isfinite(value), (loss_name, value)
            assert value.requires_grad, f"{name}: loss {loss_name} does not reach any parameter"
        assert (out.target_out is not None) == (method.target_forward and method.needs_target)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items()), "no parameter moved"

    adapted.eval()
    evaluation = adapted(method.harmonise(target[0], "target"))
    assert all(torch.isfinite(v).all() for v in evaluation.values())
    assert isinstance(METHODS.get(name).transductive, bool)
    # Source-domain inference (model selection on source validation): nothing to adapt.
    assert method.adapt_for_inference(model, None) is model


def test_transductive_flags_follow_the_use_of_target_images():
    inductive = {name for name in METHODS if not METHODS.get(name).transductive}
    assert inductive == {"erm", "per_image_standardisation", "fedavg", "fedprox", "fedbn", "fedadam", "local"}
    assert {name for name in METHODS if METHODS.get(name).needs_target} == {"dann", "coral", "mmd", "entropy", "self_training"}


def test_a_method_that_needs_target_batches_refuses_to_step_without_one():
    source, target = loaders(1)
    model, method = TinyMultiTask(), build("coral")
    method.prepare(model, source, target)
    with pytest.raises(ValueError, match="needs a target batch"):
        method(model, source[0], None, 0, 10)


# ------------------------------------------------------------------------ label wall
class LabelSpy(dict):
    """A labelled batch that records every read of a label key."""

    reads: list = []

    def __getitem__(self, key):
        if is_label_key(key):
            LabelSpy.reads.append(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        if is_label_key(key):
            LabelSpy.reads.append(key)
        return super().get(key, default)


def test_strip_labels_removes_every_outcome_key_and_the_guard_refuses_them():
    batch = site_batch(4, 0, target=True)
    batch["labels_birads"] = torch.zeros(4)
    stripped = strip_labels(batch)
    assert isinstance(stripped, TargetBatch)
    assert set(stripped) == {"image", "site", "case_id"}
    for key in ("label", "mask", "bbox", "has_label", "has_mask", "has_bbox", "labels_birads"):
        with pytest.raises(TargetLabelAccess):
            stripped[key]
        with pytest.raises(TargetLabelAccess):
            stripped.get(key, None)
        with pytest.raises(TargetLabelAccess):
            stripped[key] = torch.zeros(4)
    with pytest.raises(TargetLabelAccess):
        TargetBatch(batch)
    assert strip_labels(stripped) is stripped
    assert isinstance(stripped.replace(image=stripped["image"] * 2), TargetBatch)


@pytest.mark.parametrize("name", METHODS.names())
def test_no_method_reads_a_target_label(name):
    torch.manual_seed(0)
    source, _ = loaders(2)
    LabelSpy.reads = []
    target = [LabelSpy(site_batch(8, 100 + i, target=True)) for i in range(2)]
    run_steps(build(name), TinyMultiTask(), source, target, steps=2)
    assert LabelSpy.reads == [], f"{name} read target label keys {LabelSpy.reads}"


class CheatingInTheStep(AdaptationMethod):
    needs_target = True

    def _losses(self, model, source_batch, source_out, target_batch, target_out, step, total_steps):
        return {"cheat": F.cross_entropy(model(target_batch)["logits"], target_batch["label"])}


class CheatingInPrepare(AdaptationMethod):
    def _prepare(self, model, source_loader, target_loader):
        self.labels = [batch.get("label") for batch in target_loader]


class CheatingAtInference(AdaptationMethod):
    def _adapt_for_inference(self, model, target_loader):
        next(iter(target_loader))["has_label"]
        return model


@pytest.mark.parametrize("cheat", [CheatingInTheStep, CheatingInPrepare, CheatingAtInference])
def test_a_method_that_tries_to_read_target_labels_fails_loudly(cheat):
    source, target = loaders(1)
    with pytest.raises(TargetLabelAccess):
        run_steps(cheat(), TinyMultiTask(), source, target, steps=1)


# ------------------------------------------------------------------------------ DANN
def test_ganin_schedule_rises_from_zero_to_one():
    values = [ganin_lambda(step, 100) for step in range(0, 101, 10)]
    assert values[0] == 0.0 and values[-1] == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    assert all(a < b for a, b in zip(values, values[1:]))


def test_gradient_reversal_flips_the_encoder_gradient_exactly():
    torch.manual_seed(0)
    # float64, so that "exactly" can be checked to 1e-12 despite a different order of operations
    source, target = ([{**b, "image": b["image"].double()} for b in batches] for batches in loaders(1))
    model, method = TinyMultiTask().double(), build("dann")
    method.prepare(model, source, target)
    method.double()
    step, total = 30, 100
    scale = ganin_lambda(step, total)

    def gradients(reversed_: bool):
        model.zero_grad()
        method.zero_grad()
        out = method(model, source[0], target[0], step, total)
        if reversed_:
            loss = out.losses["dann"]
        else:  # the same domain loss without the reversal layer
            features = torch.cat([out.source_out["embedding"], out.target_out["embedding"]])
            domain = torch.cat([torch.zeros(8), torch.ones(8)]).double()
            loss = F.binary_cross_entropy_with_logits(method.classifier(features).squeeze(1), domain)
        loss.backward()
        return ([p.grad.clone() for p in model.encoder.parameters()],
                [p.grad.clone() for p in method.classifier.parameters()])

    # BatchNorm running statistics move with every forward; both passes must see the same.
    state = copy.deepcopy(model.state_dict())
    encoder_rev, classifier_rev = gradients(True)
    model.load_state_dict(state)
    encoder_plain, classifier_plain = gradients(False)
    for rev, plain in zip(encoder_rev, encoder_plain):
        assert plain.abs().sum() > 0
        torch.testing.assert_close(rev, -scale * plain, rtol=1e-12, atol=1e-15)
    for rev, plain in zip(classifier_rev, classifier_plain):  # the classifier itself is not reversed
        torch.testing.assert_close(rev, plain)


def test_reverse_gradient_is_identity_forward():
    x = torch.randn(4, 3, requires_grad=True)
    y = reverse_gradient(x, 0.25)
    assert torch.equal(y, x)
    y.sum().backward()
    assert torch.equal(x.grad, torch.full_like(x, -0.25))


# ----------------------------------------------------------------------- CORAL and MMD
def test_coral_and_mmd_vanish_for_identical_distributions():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 16, generator=g)
    assert coral_loss(x, x).item() == 0.0
    assert mmd_loss(x, x).item() == pytest.approx(0.0, abs=1e-7)
    # Two samples of one distribution: small against any real shift below.
    y = torch.randn(64, 16, generator=g)
    assert coral_loss(x, y) < 0.2 * coral_loss(x, 1.5 * y)
    assert mmd_loss(x, y) < 0.1 * mmd_loss(x, y + 1.0)


def test_coral_grows_monotonically_with_a_covariance_shift():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 16, generator=g), torch.randn(64, 16, generator=g)
    values = [coral_loss(x, y * scale).item() for scale in (1.0, 1.5, 2.0, 3.0, 4.0)]
    assert all(a < b for a, b in zip(values, values[1:])), values


def test_mmd_grows_monotonically_with_a_mean_and_a_covariance_shift():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(64, 16, generator=g), torch.randn(64, 16, generator=g)
    shifted = [mmd_loss(x, y + shift).item() for shift in (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)]
    scaled = [mmd_loss(x, y * scale).item() for scale in (1.0, 1.5, 2.0, 3.0)]
    for values in (shifted, scaled):
        assert all(a < b for a, b in zip(values, values[1:])), values


def test_mmd_pulls_the_site_embeddings_together():
    """MMD alone aligns the sites (its median bandwidth makes shrinking the features useless)."""
    torch.manual_seed(0)
    source, target = loaders(1, batch=16)
    model, method = TinyMultiTask(), METHODS.build("mmd", weight=1.0)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    values = []
    for step in range(20):
        out = method(model, source[0], target[0], step, 20)
        values.append(out.losses["mmd"].item())
        optimiser.zero_grad()
        out.losses["mmd"].backward()
        optimiser.step()
    assert values[-1] < 0.5 * values[0], values


# ----------------------------------------------------------------------------- AdaBN
def test_adabn_changes_only_batch_norm_statistics_towards_the_target():
    torch.manual_seed(0)
    source, target = loaders(3)
    model = TinyMultiTask().train()
    with torch.no_grad():  # source statistics in the running buffers
        for batch in source * 5:
            model(batch)
    model.eval()
    original = copy.deepcopy(model.state_dict())

    adapted = build("adabn").adapt_for_inference(model, target)

    for key, value in model.state_dict().items():  # the given model is untouched
        assert torch.equal(value, original[key]), key
    statistics = ("running_mean", "running_var", "num_batches_tracked")
    for key, value in adapted.state_dict().items():
        if key.endswith(statistics):
            assert not torch.equal(value, original[key]), f"{key} did not move"
        else:
            assert torch.equal(value, original[key]), f"{key} changed but is not a BatchNorm statistic"

    # The first BatchNorm now holds the target's per-channel mean and variance of its input.
    conv, bn_before, bn_after = model.encoder[0], model.encoder[1], adapted.encoder[1]
    with torch.no_grad():
        inputs = torch.cat([conv(batch["image"]) for batch in target])
    target_mean = inputs.mean((0, 2, 3))
    target_var = torch.stack([conv(b["image"]).var((0, 2, 3), unbiased=True) for b in target]).mean(0).detach()
    assert (bn_after.running_mean - target_mean).abs().max() < 1e-4
    assert (bn_after.running_mean - target_mean).norm() < 0.1 * (bn_before.running_mean - target_mean).norm()
    torch.testing.assert_close(bn_after.running_var, target_var, rtol=1e-4, atol=1e-6)
    assert not adapted.training


def test_adabn_refuses_a_model_without_batch_norm():
    model = nn.Sequential(nn.Conv2d(1, 2, 3))
    with pytest.raises(ValueError, match="BatchNorm"):
        build("adabn").adapt_for_inference(model, [{"image": torch.rand(2, 1, 8, 8)}])


# -------------------------------------------------------------- entropy, self-training
def test_entropy_minimisation_makes_target_predictions_confident():
    torch.manual_seed(0)
    _, target = loaders(1, batch=16)
    model, method = TinyMultiTask(), METHODS.build("entropy", weight=1.0)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.02)
    values = []
    for step in range(15):
        out = method(model, target[0], target[0], step, 15)  # a source batch is required, any will do
        values.append(out.losses["entropy_cls"].item())
        optimiser.zero_grad()
        sum(out.losses.values()).backward()
        optimiser.step()
    assert values[-1] < 0.5 * values[0], values


def test_self_training_learns_only_from_confident_pseudo_labels():
    torch.manual_seed(0)
    source, target = loaders(1)
    model = TinyMultiTask()
    unsure = METHODS.build("self_training", threshold=1.0)  # nothing is ever fully confident
    losses = unsure(model, source[0], target[0], 0, 10).losses
    assert all(value.item() == 0.0 for value in losses.values())
    eager = METHODS.build("self_training", threshold=0.01)  # every prediction is a pseudo-label
    losses = eager(model, source[0], target[0], 0, 10).losses
    assert all(value.item() > 0.0 for value in losses.values())


def test_self_training_views_depend_only_on_seed_and_step():
    """So a run resumed from a checkpoint draws the same augmentations."""
    source, target = loaders(1)
    model = TinyMultiTask().eval()  # eval: BatchNorm statistics must not drift between calls
    first, second = METHODS.build("self_training", threshold=0.01), METHODS.build("self_training", threshold=0.01)
    second(model, source[0], target[0], 0, 10)  # a different history before step 5
    a = first(model, source[0], target[0], 5, 10).losses
    b = second(model, source[0], target[0], 5, 10).losses
    c = second(model, source[0], target[0], 6, 10).losses
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["self_training_cls"], c["self_training_cls"])


def test_weak_and_strong_views_are_seeded_images_in_range():
    images = site_batch(6, 0, target=False)["image"]
    for augment in (weak_augment, strong_augment):
        a = augment(images, torch.Generator().manual_seed(3))
        b = augment(images, torch.Generator().manual_seed(3))
        assert a.shape == images.shape and torch.equal(a, b)
        assert a.min() >= 0 and a.max() <= 1
        assert not torch.equal(a, images)


# --------------------------------------------------------------- intensity harmonisation
def test_histogram_matching_moves_source_histograms_to_the_target():
    source, target = loaders(2)
    method = build("histogram_matching")
    method.prepare(TinyMultiTask(), source, target)
    pooled_target = torch.cat([b["image"] for b in target])
    batch = source[0]
    matched = method.harmonise(batch, "source")["image"]
    for original, new in zip(batch["image"], matched):
        before, after = intensity_distance(original, pooled_target), intensity_distance(new, pooled_target)
        assert after < 0.2 * before, (before, after)
        order = original.flatten().argsort()  # the grey-level mapping is monotone
        assert (new.flatten()[order].diff() >= -1e-6).all()
    assert method.harmonise(target[0], "target")["image"] is target[0]["image"]
    assert torch.equal(batch["label"], method.harmonise(batch, "source")["label"])

    restored = build("histogram_matching")  # e.g. loaded from a checkpoint, never prepared
    restored.load_state_dict(method.state_dict())
    assert torch.equal(restored.harmonise(batch, "source")["image"], matched)


def test_match_histogram_to_itself_is_nearly_identity():
    image = site_batch(1, 0, target=False)["image"][0]
    values = torch.sort(image.flatten()).values
    quantiles = torch.arange(1, values.numel() + 1, dtype=torch.float32) / values.numel()
    assert (match_histogram(image, quantiles, values) - image).abs().max() < 1e-5


def test_per_image_standardisation_gives_zero_mean_unit_variance_at_both_sites():
    method = build("per_image_standardisation")
    for domain, batch in (("source", site_batch(4, 0, False)), ("target", site_batch(4, 1, True))):
        images = method.harmonise(batch, domain)["image"]
        torch.testing.assert_close(images.mean((1, 2, 3)), torch.zeros(4), atol=1e-5, rtol=0)
        torch.testing.assert_close(images.std((1, 2, 3)), torch.ones(4), atol=1e-4, rtol=0)


# ------------------------------------------------------------------ translation quality
def _threshold_segmenter(images: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(images, 3, stride=1, padding=1) - 0.55


def test_translation_quality_rewards_a_faithful_translation_and_catches_a_destructive_one():
    g = torch.Generator().manual_seed(0)
    target, _, _ = lesion_images(40, g)
    source_clean, masks, _ = lesion_images(40, g)
    source = source_clean.pow(2.0) * 0.9  # darker, lower-contrast site

    def undo(images):  # the exact inverse of the site effect
        return (images / 0.9).pow(0.5)

    good = translation_quality(undo, source, target, _threshold_segmenter, masks)
    assert good.intensity_distance_after < 0.2 * good.intensity_distance_before
    assert good.site_accuracy_before > 0.9 and good.site_accuracy_after < 0.75
    assert good.dice_translated > 0.9 and good.dice_agreement > 0.8

    def erase(images):  # matches the mean grey level but removes the lesion
        return torch.full_like(images, float(target.mean()))

    bad = translation_quality(erase, source, target, _threshold_segmenter, masks)
    assert bad.dice_translated < 0.1

    same = translation_quality(lambda x: x, source, target)
    assert same.site_accuracy_after == same.site_accuracy_before
    assert same.intensity_distance_after == same.intensity_distance_before
    assert same.dice_agreement is None
