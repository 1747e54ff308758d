"""CycleGAN: unpaired grayscale image translation between two sites.

Zhu, Park, Isola & Efros, "Unpaired Image-to-Image Translation using Cycle-Consistent
Adversarial Networks", ICCV 2017, with the choices of its reference implementation:

- generator: Johnson et al. (2016) ResNet: 7x7 conv, two stride-2 downsamplings,
  residual blocks, two transposed-conv upsamplings, 7x7 conv, tanh; InstanceNorm
  (Ulyanov et al. 2016) and reflection padding throughout;
- discriminator: the 70x70 PatchGAN of pix2pix (Isola et al. 2017);
- least-squares adversarial loss (Mao et al., LSGAN, 2017);
- cycle loss (L1, lambda = 10) and identity loss (L1, lambda = 10 x 0.5 = 5);
- discriminators see a pool of the last 50 generated images (Shrivastava et al. 2017);
- Adam(2e-4, beta1 = 0.5), constant for the first half of training, then linearly to 0.

Widths default to a CPU budget: ``ngf=16`` generators (the reference uses 64, i.e. 16x
the compute) and ``ndf=32`` discriminators. At 128 px, batch 1, one step took 0.62 s on
one busy CPU core (800 steps, BUSI to BUS-BRA, in 8 minutes). Images are
(N,1,H,W) in [0, 1]; generators work in [-1, 1] internally and translations come back
in [0, 1] with the input's size (H and W must be divisible by ``2 ** n_downsampling``).
"""
from __future__ import annotations

import itertools
import random
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """Johnson-style ResNet generator, (B,C,H,W) in [-1, 1] to the same shape in [-1, 1]."""

    def __init__(self, channels: int = 1, ngf: int = 16, n_downsampling: int = 2, n_blocks: int = 6):
        super().__init__()
        self.factor = 2**n_downsampling
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(channels, ngf, 7), nn.InstanceNorm2d(ngf), nn.ReLU(True)]
        width = ngf
        for _ in range(n_downsampling):
            layers += [nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.InstanceNorm2d(2 * width), nn.ReLU(True)]
            width *= 2
        layers += [ResidualBlock(width) for _ in range(n_blocks)]
        for _ in range(n_downsampling):
            layers += [nn.ConvTranspose2d(width, width // 2, 3, stride=2, padding=1, output_padding=1),
                       nn.InstanceNorm2d(width // 2), nn.ReLU(True)]
            width //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(width, channels, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % self.factor or w % self.factor:
            raise ValueError(f"CycleGAN generator: image size {h}x{w} must be divisible by {self.factor}")
        return self.net(x)


class PatchDiscriminator(nn.Module):
    """PatchGAN: a grid of real/fake logits, each seeing a 70x70 patch (with ``n_layers=3``)."""

    def __init__(self, channels: int = 1, ndf: int = 32, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        width = ndf
        for n in range(1, n_layers + 1):
            out = ndf * min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(width, out, 4, stride=stride, padding=1), nn.InstanceNorm2d(out), nn.LeakyReLU(0.2, True)]
            width = out
        layers.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ImagePool:
    """A buffer of generated images (Shrivastava et al. 2017): with probability 0.5 the
    discriminator sees an older fake instead of the newest, which damps oscillation."""

    def __init__(self, size: int = 50, seed: int = 0):
        self.size, self.images, self.rng = size, [], random.Random(seed)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images
        out = []
        for image in images.detach():
            if len(self.images) < self.size:
                self.images.append(image)
                out.append(image)
            elif self.rng.random() < 0.5:
                slot = self.rng.randrange(self.size)
                out.append(self.images[slot])
                self.images[slot] = image
            else:
                out.append(image)
        return torch.stack(out)


def lsgan_loss(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """Least-squares GAN loss: mean squared distance of the patch scores to 1 (real) or 0."""
    return F.mse_loss(logits, torch.full_like(logits, 1.0 if real else 0.0))


DIRECTIONS = {"source_to_target": "g_source_to_target", "target_to_source": "g_target_to_source"}


class CycleGAN(nn.Module):
    """Two generators and two PatchGAN discriminators between a source and a target site."""

    def __init__(self, ngf: int = 16, ndf: int = 32, n_blocks: int = 6, n_downsampling: int = 2,
                 lambda_cycle: float = 10.0, lambda_identity: float = 0.5, pool_size: int = 50,
                 lr: float = 2e-4, beta1: float = 0.5):
        super().__init__()
        self.g_source_to_target = ResnetGenerator(1, ngf, n_downsampling, n_blocks)
        self.g_target_to_source = ResnetGenerator(1, ngf, n_downsampling, n_blocks)
        self.d_source = PatchDiscriminator(1, ndf)
        self.d_target = PatchDiscriminator(1, ndf)
        self.lambda_cycle, self.lambda_identity = float(lambda_cycle), float(lambda_identity)
        self.pool_size, self.lr, self.beta1 = int(pool_size), float(lr), float(beta1)
        self.history: dict[str, list[float]] = {}

    def generators(self) -> list[nn.Module]:
        return [self.g_source_to_target, self.g_target_to_source]

    def discriminators(self) -> list[nn.Module]:
        return [self.d_source, self.d_target]

    def fit(self, source_images: torch.Tensor, target_images: torch.Tensor, steps: int,
            batch_size: int = 1, seed: int = 0, progress: bool = True) -> dict[str, list[float]]:
        """Train for ``steps`` steps on random (flipped) draws of both image sets.

        Returns (and keeps in ``self.history``) the per-step losses: ``generator_adv``,
        ``cycle`` (mean L1 of both reconstructions, in [-1, 1] units), ``identity``,
        ``discriminator``.
        """
        source, target = _checked_images(source_images, "source_images"), _checked_images(target_images, "target_images")
        if steps <= 0:
            raise ValueError(f"CycleGAN.fit: steps must be positive, got {steps}")
        device = next(self.parameters()).device
        generator = torch.Generator().manual_seed(seed)
        pools = {"source": ImagePool(self.pool_size, seed), "target": ImagePool(self.pool_size, seed + 1)}
        opt_g = torch.optim.Adam(itertools.chain(*(g.parameters() for g in self.generators())), self.lr, betas=(self.beta1, 0.999))
        opt_d = torch.optim.Adam(itertools.chain(*(d.parameters() for d in self.discriminators())), self.lr, betas=(self.beta1, 0.999))
        schedules = [torch.optim.lr_scheduler.LambdaLR(opt, _linear_decay(steps)) for opt in (opt_g, opt_d)]
        self.requires_grad_(True)
        self.train()
        self.history = {"generator_adv": [], "cycle": [], "identity": [], "discriminator": []}
        for _ in tqdm(range(steps), desc="CycleGAN", disable=not progress, leave=False):
            a = _draw(source, batch_size, generator).to(device) * 2 - 1
            b = _draw(target, batch_size, generator).to(device) * 2 - 1
            fakes = self._generator_step(a, b, opt_g)
            self._discriminator_step(a, b, fakes, pools, opt_d)
            for schedule in schedules:
                schedule.step()
        self.eval()
        self.requires_grad_(False)  # fitted: nothing downstream should optimise it
        return self.history

    def _generator_step(self, a: torch.Tensor, b: torch.Tensor, opt: torch.optim.Optimizer) -> tuple:
        for d in self.discriminators():
            d.requires_grad_(False)
        fake_b, fake_a = self.g_source_to_target(a), self.g_target_to_source(b)
        adversarial = lsgan_loss(self.d_target(fake_b), True) + lsgan_loss(self.d_source(fake_a), True)
        cycle = F.l1_loss(self.g_target_to_source(fake_b), a) + F.l1_loss(self.g_source_to_target(fake_a), b)
        identity = torch.zeros((), device=a.device)
        if self.lambda_identity > 0:
            identity = F.l1_loss(self.g_source_to_target(b), b) + F.l1_loss(self.g_target_to_source(a), a)
        loss = adversarial + self.lambda_cycle * cycle + self.lambda_cycle * self.lambda_identity * identity
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for d in self.discriminators():
            d.requires_grad_(True)
        self.history["generator_adv"].append(adversarial.item() / 2)
        self.history["cycle"].append(cycle.item() / 2)
        self.history["identity"].append(identity.item() / 2)
        return fake_a.detach(), fake_b.detach()

    def _discriminator_step(self, a, b, fakes, pools, opt) -> None:
        fake_a, fake_b = fakes
        loss_source = 0.5 * (lsgan_loss(self.d_source(a), True) + lsgan_loss(self.d_source(pools["source"].query(fake_a)), False))
        loss_target = 0.5 * (lsgan_loss(self.d_target(b), True) + lsgan_loss(self.d_target(pools["target"].query(fake_b)), False))
        opt.zero_grad(set_to_none=True)
        (loss_source + loss_target).backward()
        opt.step()
        self.history["discriminator"].append((loss_source.item() + loss_target.item()) / 2)

    @torch.no_grad()
    def translate(self, images: torch.Tensor, direction: str = "source_to_target", batch_size: int = 16) -> torch.Tensor:
        """Translate (N,1,H,W) images in [0, 1]; ``direction`` is one of :data:`DIRECTIONS`."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {sorted(DIRECTIONS)}, got {direction!r}")
        images = _checked_images(images, "images")
        net = getattr(self, DIRECTIONS[direction])
        was_training = net.training
        net.eval()
        device = next(net.parameters()).device
        try:
            out = [(net(chunk.to(device) * 2 - 1) + 1) / 2 for chunk in images.split(batch_size)]
        finally:
            net.train(was_training)
        return torch.cat(out).to(images.device, images.dtype)

    def cycle(self, images: torch.Tensor, direction: str = "source_to_target") -> tuple[torch.Tensor, torch.Tensor]:
        """(translation, reconstruction after translating back)."""
        back = {"source_to_target": "target_to_source", "target_to_source": "source_to_target"}[direction]
        translated = self.translate(images, direction)
        return translated, self.translate(translated, back)


def _linear_decay(steps: int):
    """LR factor: 1 for the first half of training, then linearly down to 0 at the end."""
    half = steps // 2

    def factor(step: int) -> float:
        return 1.0 if step < half else max(0.0, 1.0 - (step - half) / max(steps - half, 1))

    return factor


def _checked_images(images: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 1:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{name}: expected a (N,1,H,W) tensor of grayscale images, got {shape}")
    if len(images) == 0:
        raise ValueError(f"{name}: no images")
    low, high = float(images.min()), float(images.max())
    if low < -1e-6 or high > 1 + 1e-6:
        raise ValueError(f"{name}: expected values in [0, 1], got [{low:.3g}, {high:.3g}]")
    return images.float()


def _draw(images: torch.Tensor, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """A random batch, each image flipped left-right with probability 0.5."""
    picks = torch.randint(0, len(images), (batch_size,), generator=generator)
    batch = images[picks]
    flip = torch.rand(batch_size, generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), batch.flip(-1), batch)


def save_translation_examples(cyclegan: CycleGAN, source_images: torch.Tensor, target_images: torch.Tensor,
                              path: str | Path, n: int = 4) -> Path:
    """A grid figure: for ``n`` images of each site, original / translated / cycle reconstruction."""
    # A bare Figure (no pyplot): no global backend state, so it also works inside Jupyter.
    from matplotlib.figure import Figure

    rows = []
    for name, images, direction in (("source", source_images, "source_to_target"),
                                    ("target", target_images, "target_to_source")):
        originals = images[:n]
        translated, reconstructed = cyclegan.cycle(originals, direction)
        other = "target" if name == "source" else "source"
        rows += [(f"{name}", originals), (f"{name} → {other}", translated), (f"{name} → {other} → {name}", reconstructed)]
    columns = max(len(images) for _, images in rows)
    fig = Figure(figsize=(2 * columns, 2 * len(rows)))
    axes = fig.subplots(len(rows), columns, squeeze=False)
    for r, (title, images) in enumerate(rows):
        for c in range(columns):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(images):
                ax.imshow(images[c, 0].cpu().numpy(), cmap="gray", vmin=0, vmax=1)
        axes[r, 0].set_title(title, fontsize=9, loc="left")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
