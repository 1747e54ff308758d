"""Self-supervised methods (``SSL_METHODS``): lightly's heads, losses and masking, around a senolab encoder.

A method is an ``nn.Module`` built from the encoder it pretrains (built without a
decoder) and its options. Each training step it gets ``views``: a list of ``n_views``
augmented batches of the same images (B, 1, H, W), and returns the loss; ``after_step``
runs after the optimiser step (momentum updates). Nothing else reaches it: no label, no
mask, no case id (the loop hands it views made from a label-free batch).

- ``simclr`` (Chen et al. 2020): contrastive; two views of an image attract, every other
  image in the batch repels (NT-Xent on a projection of the embedding).
- ``byol`` (Grill et al. 2020): self-distillation; the online branch predicts the
  projection a momentum copy makes of the other view (no negatives, so small batches
  work).
- ``mae`` (He et al. 2022): masked autoencoding for ViTs; 75% of the patch tokens are
  hidden and a light decoder reconstructs their pixels from the visible ones.

``lightly`` is imported when a method is built (``senolab[ssl]``), so the registry's names
and fit checks are known without it.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from senolab._optional import require
from senolab.models.encoders import Encoder
from senolab.registry import Registry

SSL_METHODS: Registry = Registry("self-supervised method")


class SSLMethod(nn.Module):
    """Base class: ``n_views`` views per step, ``loss(views)``, ``after_step(progress)``."""

    n_views = 2
    vit_only = False  # the method needs a timm VisionTransformer (masks its tokens)

    def __init__(self, encoder: Encoder):
        super().__init__()
        self.encoder = encoder

    @classmethod
    def check_encoder(cls, encoder: str, encoder_options: dict) -> None:
        """A ValueError when this method cannot pretrain the named encoder."""
        if encoder != "timm":
            raise ValueError(f"senolab pretrain pretrains timm encoders (model.encoder: timm); got {encoder!r}")
        if cls.vit_only:
            from senolab.models.timm_encoder import is_vit

            name = str(encoder_options.get("name", ""))
            if not is_vit(name):
                raise ValueError(f"{cls.name} masks a ViT's patch tokens and needs a timm ViT "
                                 f"(e.g. vit_tiny_patch16_224); {name!r} is not one: use simclr or byol")

    def loss(self, views: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def after_step(self, progress: float) -> None:
        """Called after each optimiser step with how far the run is (0..1)."""

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The encoder's embedding: what fine-tuning starts from and the k-NN monitor reads."""
        return self.encoder(images).embedding


@SSL_METHODS.register("simclr")
class SimCLR(SSLMethod):
    """NT-Xent on a 2-layer projection of the embedding (lightly's head and loss)."""

    name = "simclr"

    def __init__(self, encoder: Encoder, projection_dim: int = 128, hidden_dim: int = 512, temperature: float = 0.2):
        super().__init__(encoder)
        modules, losses = require("lightly.models.modules"), require("lightly.loss")
        self.projection = modules.SimCLRProjectionHead(encoder.embedding_dim, hidden_dim, projection_dim)
        self.criterion = losses.NTXentLoss(temperature=temperature)

    def loss(self, views: list[torch.Tensor]) -> torch.Tensor:
        first, second = (self.projection(self.embed(v)) for v in views)
        return self.criterion(first, second)


@SSL_METHODS.register("byol")
class BYOL(SSLMethod):
    """Online encoder + projection + prediction against a momentum (EMA) target branch."""

    name = "byol"

    def __init__(self, encoder: Encoder, projection_dim: int = 128, hidden_dim: int = 512,
                 momentum: tuple[float, float] = (0.99, 1.0)):
        super().__init__(encoder)
        modules, losses = require("lightly.models.modules"), require("lightly.loss")
        utils = require("lightly.models.utils")
        self.projection = modules.BYOLProjectionHead(encoder.embedding_dim, hidden_dim, projection_dim)
        self.prediction = modules.BYOLPredictionHead(projection_dim, hidden_dim, projection_dim)
        self.target_encoder = copy.deepcopy(encoder)
        self.target_projection = copy.deepcopy(self.projection)
        utils.deactivate_requires_grad(self.target_encoder)
        utils.deactivate_requires_grad(self.target_projection)
        self.criterion = losses.NegativeCosineSimilarity()
        self.momentum = tuple(momentum)

    def _target(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.target_projection(self.target_encoder(images).embedding)

    def loss(self, views: list[torch.Tensor]) -> torch.Tensor:
        first, second = views
        online = [self.prediction(self.projection(self.embed(v))) for v in (first, second)]
        target = [self._target(v) for v in (first, second)]
        return 0.5 * (self.criterion(online[0], target[1]) + self.criterion(online[1], target[0]))

    def after_step(self, progress: float) -> None:
        utils, scheduler = require("lightly.models.utils"), require("lightly.utils.scheduler")
        # the target follows the online branch ever more slowly (cosine from 0.99 to 1)
        m = scheduler.cosine_schedule(int(progress * 1000), 1000, *self.momentum)
        utils.update_momentum(self.encoder, self.target_encoder, m=m)
        utils.update_momentum(self.projection, self.target_projection, m=m)


@SSL_METHODS.register("mae")
class MAE(SSLMethod):
    """Masked autoencoder on a timm ViT (lightly's MaskedVisionTransformerTIMM and decoder)."""

    name = "mae"
    n_views = 1
    vit_only = True

    def __init__(self, encoder: Encoder, image_size: int = 128, mask_ratio: float = 0.75, decoder_dim: int = 128,
                 decoder_depth: int = 2, decoder_heads: int = 4):
        super().__init__(encoder)
        modules = require("lightly.models.modules")
        vit = encoder.backbone
        self.patch = int(vit.patch_embed.patch_size[0])
        if image_size % self.patch:
            raise ValueError(f"mae: the image size {image_size} must be a multiple of the patch size {self.patch}")
        self.mask_ratio = mask_ratio
        self.masked = modules.MaskedVisionTransformerTIMM(vit=vit)
        self.prefix = int(vit.num_prefix_tokens)
        num_patches = (image_size // self.patch) ** 2
        self.decoder = modules.MAEDecoderTIMM(
            num_patches=num_patches, patch_size=self.patch, in_chans=int(vit.patch_embed.proj.in_channels),
            embed_dim=vit.embed_dim, decoder_embed_dim=decoder_dim, decoder_depth=decoder_depth,
            decoder_num_heads=decoder_heads, num_prefix_tokens=self.prefix)

    def loss(self, views: list[torch.Tensor]) -> torch.Tensor:
        utils = require("lightly.models.utils")
        (images,) = views
        batch = images.shape[0]
        length = (images.shape[-2] // self.patch) * (images.shape[-1] // self.patch) + self.prefix
        keep, hidden = utils.random_token_mask(size=(batch, length), mask_ratio=self.mask_ratio, device=images.device)
        encoded = self.masked.encode(images=images, idx_keep=keep)
        tokens = utils.repeat_token(self.decoder.mask_token, (batch, length))
        tokens = utils.set_at_index(tokens, keep, self.decoder.embed(encoded).type_as(tokens))
        predicted = self.decoder.predict(utils.get_at_index(self.decoder.decode(tokens), hidden))
        # the hidden indices count the prefix (class) token, the patches do not
        target = utils.get_at_index(utils.patchify(images, self.patch), hidden - self.prefix)
        return nn.functional.mse_loss(predicted, target)
