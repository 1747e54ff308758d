"""CycleGAN: network shapes, the image pool, a short CPU training, and the example figure."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from senolab.adaptation import CycleGAN, save_translation_examples
from senolab.adaptation.cyclegan import ImagePool, PatchDiscriminator, ResnetGenerator

SIZE = 64


def site_images(n: int, seed: int, target: bool) -> torch.Tensor:
    """Bright disks on speckle; the target site is brighter, lower-contrast and smoother."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    centre = SIZE / 2 + (torch.rand(n, 2, generator=g) - 0.5) * SIZE * 0.4
    radius = SIZE * (0.1 + 0.15 * torch.rand(n, generator=g))
    disk = (((yy - centre[:, :1, None]) ** 2 + (xx - centre[:, 1:, None]) ** 2).sqrt() < radius[:, None, None]).float()
    images = 0.15 + 0.6 * disk[:, None] + 0.25 * torch.rand(n, 1, SIZE, SIZE, generator=g)
    if target:
        images = 0.35 + 0.5 * F.avg_pool2d(images, 3, stride=1, padding=1, count_include_pad=False)
    return images.clamp(0, 1)


def small_cyclegan() -> CycleGAN:
    return CycleGAN(ngf=8, ndf=8, n_blocks=2)


def test_generator_keeps_the_size_and_the_discriminator_sees_70_pixel_patches():
    x = torch.rand(2, 1, SIZE, SIZE) * 2 - 1
    assert ResnetGenerator(ngf=4, n_blocks=1)(x).shape == x.shape
    with pytest.raises(ValueError, match="divisible by 4"):
        ResnetGenerator(ngf=4, n_blocks=1)(torch.rand(1, 1, 30, 30))

    # The receptive field of one patch logit: the input pixels its gradient reaches. The
    # InstanceNorms couple every pixel through the feature statistics, so they go first.
    discriminator = PatchDiscriminator(ndf=4)
    for index, layer in enumerate(discriminator.net):
        if isinstance(layer, nn.InstanceNorm2d):
            discriminator.net[index] = nn.Identity()
    image = torch.rand(1, 1, 160, 160, requires_grad=True)
    logits = discriminator(image)
    logits[0, 0, logits.shape[2] // 2, logits.shape[3] // 2].backward()
    rows = image.grad[0, 0].abs().sum(1).nonzero()
    assert int(rows.max() - rows.min() + 1) == 70


def test_image_pool_returns_old_fakes_once_full():
    pool = ImagePool(size=4, seed=0)
    first = torch.arange(4.0).view(4, 1, 1, 1)
    assert torch.equal(pool.query(first), first)  # filling: the images themselves
    queries = [torch.full((1, 1, 1, 1), 100.0 + i) for i in range(60)]
    older = [not torch.equal(pool.query(q), q) for q in queries]
    assert 15 < sum(older) < 45  # about half the time an older image comes back
    assert len(pool.images) == 4


def test_a_short_cpu_training_lowers_cycle_error_and_keeps_size_and_range():
    torch.manual_seed(0)
    source, target = site_images(24, 0, False), site_images(24, 1, True)
    held_out = site_images(8, 2, False)
    model = small_cyclegan()

    def reconstruction_error() -> float:
        _, reconstructed = model.cycle(held_out, "source_to_target")
        return float((reconstructed - held_out).abs().mean())

    before = reconstruction_error()
    history = model.fit(source, target, steps=60, batch_size=2, seed=0, progress=False)
    after = reconstruction_error()

    assert after < 0.6 * before, (before, after)
    cycle = history["cycle"]
    assert sum(cycle[-10:]) < 0.6 * sum(cycle[:10]), cycle
    for key in ("generator_adv", "cycle", "identity", "discriminator"):
        assert len(history[key]) == 60 and all(torch.isfinite(torch.tensor(history[key])))
    for direction, images in (("source_to_target", source[:5]), ("target_to_source", target[:5])):
        translated = model.translate(images, direction)
        assert translated.shape == images.shape
        assert translated.min() >= 0 and translated.max() <= 1
    assert not any(p.requires_grad for p in model.parameters())  # fitted: frozen for downstream use


def test_translation_is_deterministic_for_a_seed():
    source, target = site_images(6, 0, False), site_images(6, 1, True)
    outputs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = CycleGAN(ngf=4, ndf=4, n_blocks=1)
        model.fit(source, target, steps=3, seed=5, progress=False)
        outputs.append(model.translate(source))
    assert torch.equal(*outputs)


def test_bad_inputs_are_refused_with_the_argument_named():
    model = CycleGAN(ngf=4, ndf=4, n_blocks=1)
    good = site_images(2, 0, False)
    with pytest.raises(ValueError, match="source_images.*\\[0, 1\\]"):
        model.fit(good * 3, good, steps=1, progress=False)
    with pytest.raises(ValueError, match="target_images.*\\(N,1,H,W\\)"):
        model.fit(good, good[:, 0], steps=1, progress=False)
    with pytest.raises(ValueError, match="direction"):
        model.translate(good, "sideways")


def test_translation_examples_figure_is_written(tmp_path):
    model = CycleGAN(ngf=4, ndf=4, n_blocks=1)
    path = save_translation_examples(model, site_images(3, 0, False), site_images(3, 1, True),
                                     tmp_path / "figures" / "cyclegan.png", n=3)
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
