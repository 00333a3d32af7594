"""Pre-processors: auto-encoders f_de(f_en(x)) placed in front of the frozen foundation model.

Both map [0, 1] images to [0, 1] images of the same shape and expose `latent(x)`, the encoder output pooled
to one vector per image: the space in which CRoPD's contrastive loss pulls clean and adversarial views together.
- `ConvAutoEncoder`: a small convolutional auto-encoder (the fast default), downsampling by 4.
- `ViTAutoEncoder`: a ViT-MAE-style auto-encoder: a transformers ViT-MAE encoder without masking and the
  ViT-MAE decoder reconstructing every patch. `vit` is the small CPU one (hidden size 3 x width); `VIT_SIZES`
  names the sizes the paper profile uses, stated as fractions of ViT-MAE-Large's encoder (the paper: 6-28%).
The auto-encoders work at the dataset's own resolution (kit choice): the threat model is defined on the
dataset's pixels, and the foundation model resizes to its input size inside.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from cropkit.foundation.model import check_images

Architecture = Literal["conv", "vit", "vit-small", "vit-base", "vit-tiny"]
ARCHITECTURES: tuple[str, ...] = ("conv", "vit", "vit-small", "vit-base", "vit-tiny")


@dataclass(frozen=True)
class ViTSize:
    """A ViT-MAE-style auto-encoder's size. Its patch is the smallest that divides the image into at most 8 x 8
    patches (4 pixels at 32x32, 8 at 64x64, 20 at 160x160; kit choice: 64 tokens whatever the resolution)."""

    hidden_size: int
    num_layers: int
    num_heads: int
    decoder_hidden_size: int
    decoder_layers: int
    decoder_heads: int


# Fractions of ViT-MAE-Large's 303.3M encoder parameters, whole auto-encoder counted, at 32x32 (test_paper_shapes);
# `vit-tiny` has their patch layout at a CPU's size (tests and smoke runs of the paper profile).
VIT_SIZES: dict[str, ViTSize] = {
    "vit-small": ViTSize(384, 12, 6, 192, 2, 3),  # ViT-Small's encoder: 22.3M, 7.4%
    "vit-base": ViTSize(768, 10, 12, 384, 4, 6),  # ViT-Base's width, 10 layers: 78.4M, 25.9%
    "vit-tiny": ViTSize(48, 2, 2, 32, 1, 1),  # 0.1M
}


def grid_patch_size(image_size: int, max_grid: int = 8) -> int:
    """The smallest patch size that divides `image_size` into at most `max_grid` patches per side."""
    for patch in range(math.ceil(image_size / max_grid), image_size + 1):
        if image_size % patch == 0:
            return patch
    raise ValueError(f"image_size must be a positive integer, got {image_size}")


class ConvAutoEncoder(nn.Module):
    """Conv encoder to a (latent_channels, H/4, W/4) map, transposed-conv decoder back to [0, 1] pixels."""

    def __init__(self, channels: int = 1, width: int = 16, latent_channels: int = 64, pixel_mean: float = 0.5) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(2 * width, 2 * width, 4, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(2 * width, latent_channels, 3, padding=1),
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(latent_channels, 2 * width, 3, padding=1), nn.GELU(),
            nn.ConvTranspose2d(2 * width, 2 * width, 4, stride=2, padding=1), nn.GELU(),
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(width, channels, 3, padding=1), nn.Sigmoid(),
        )
        _start_at_mean(self.decoder[-2].bias, pixel_mean)
        self.channels = channels

    def encode(self, x: Tensor) -> Tensor:
        check_images(x, self.channels)
        if x.shape[-1] % 4 or x.shape[-2] % 4:
            raise ValueError(f"ConvAutoEncoder needs height and width divisible by 4, got {tuple(x.shape[-2:])}")
        return self.encoder(x * 2 - 1)

    def latent(self, x: Tensor) -> Tensor:
        """f_en(x) pooled to a vector (global average over positions)."""
        return self.encode(x).mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encode(x))


VIT_DEPTH = 3  # the `vit` auto-encoder's encoder layers unless a depth is given


class ViTAutoEncoder(nn.Module):
    """ViT-MAE encoder (every patch kept, fixed order) and ViT-MAE decoder predicting every patch's pixels."""

    def __init__(self, channels: int = 1, image_size: int = 28, patch_size: int = 4, hidden_size: int = 96,
                 num_layers: int = VIT_DEPTH, decoder_hidden_size: int = 64, decoder_layers: int = 2, seed: int = 0,
                 pixel_mean: float = 0.5, num_heads: int | None = None, decoder_heads: int | None = None) -> None:
        super().__init__()
        from cropkit.foundation.pretrain import MAEConfig, build_mae  # the same repaired ViT-MAE construction

        if image_size % patch_size:
            raise ValueError(f"ViTAutoEncoder: image_size {image_size} is not a multiple of patch_size {patch_size}")
        config = MAEConfig(image_size=image_size, patch_size=patch_size, hidden_size=hidden_size,
                           num_layers=num_layers, num_heads=num_heads or max(1, hidden_size // 32),
                           decoder_hidden_size=decoder_hidden_size, decoder_layers=decoder_layers,
                           decoder_heads=decoder_heads or max(1, decoder_hidden_size // 32), mask_ratio=0.0, seed=seed)
        mae = build_mae(config, num_channels=channels)
        self.encoder, self.decoder = mae.vit, mae.decoder
        _start_at_mean(self.decoder.decoder_pred.bias, pixel_mean)
        self.unpatchify = mae.unpatchify
        self.channels, self.image_size = channels, image_size
        num_patches = (image_size // patch_size) ** 2
        self.register_buffer("order", torch.arange(num_patches, dtype=torch.float32)[None], persistent=False)

    def encode(self, x: Tensor) -> Tensor:
        check_images(x, self.channels)
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"ViTAutoEncoder was built for {self.image_size}x{self.image_size} images, "
                             f"got {tuple(x.shape[-2:])}")
        noise = self.order.expand(x.shape[0], -1)
        return self.encoder(pixel_values=x * 2 - 1, noise=noise).last_hidden_state

    def latent(self, x: Tensor) -> Tensor:
        """f_en(x) pooled to a vector (mean over patch tokens)."""
        return self.encode(x)[:, 1:].mean(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.encode(x)
        restore = self.order.long().expand(x.shape[0], -1)
        patches = self.decoder(tokens, restore).logits
        return torch.sigmoid(self.unpatchify(patches, (self.image_size, self.image_size)))


def _start_at_mean(bias: Tensor, pixel_mean: float) -> None:
    """Start the sigmoid output at the data's mean pixel.

    From the default sigmoid(0) = 0.5, a mostly-black dataset such as MNIST drives every output towards 0 in
    the first steps; the sigmoid saturates and the reconstruction-only auto-encoder stays stuck emitting blank
    images (measured: MSE 0.11 after 8 epochs, against 0.007 after 3 with this start).
    """
    with torch.no_grad():  # initialisation, not a forward pass
        bias.fill_(math.log(pixel_mean / (1 - pixel_mean)))


def build_autoencoder(architecture: Architecture, channels: int, image_size: int | None, width: int = 16,
                      latent_channels: int = 64, seed: int = 0, pixel_mean: float = 0.5,
                      depth: int | None = None) -> nn.Module:
    """A pre-processor by name, seeded; `width` sets the conv width or the `vit` hidden size (3 x width), `depth` the
    `vit` encoder's layers (default `VIT_DEPTH`); the sizes of `VIT_SIZES` fix their own. The ViTs are built for one
    `image_size`; the conv one takes any (None)."""
    if not 0 < pixel_mean < 1:
        raise ValueError(f"pixel_mean must lie in (0, 1), got {pixel_mean}")
    if architecture != "conv" and image_size is None:
        raise ValueError(f"architecture {architecture!r} is built for one image size: pass image_size")
    if depth is not None and (architecture != "vit" or depth < 1):
        raise ValueError(f"depth={depth} with architecture {architecture!r}: only the 'vit' auto-encoder takes a depth "
                         "(its encoder layers, >= 1); size the conv auto-encoder with width")
    torch.manual_seed(seed)
    if architecture == "conv":
        return ConvAutoEncoder(channels, width, latent_channels, pixel_mean)
    if architecture == "vit":
        return ViTAutoEncoder(channels, image_size, hidden_size=3 * width, num_layers=depth or VIT_DEPTH, seed=seed,
                              pixel_mean=pixel_mean)
    if architecture in VIT_SIZES:
        size = VIT_SIZES[architecture]
        return ViTAutoEncoder(channels, image_size, grid_patch_size(image_size), size.hidden_size, size.num_layers,
                              size.decoder_hidden_size, size.decoder_layers, seed, pixel_mean, size.num_heads,
                              size.decoder_heads)
    raise ValueError(f"Unknown pre-processor architecture {architecture!r}; choose one of "
                     f"{', '.join(['conv', 'vit', *VIT_SIZES])}")


def autoencoder_parameters(architecture: Architecture, channels: int, image_size: int | None, width: int = 16,
                           latent_channels: int = 64, depth: int | None = None) -> int:
    """The parameter count of `build_autoencoder(...)`, built on the meta device (no memory, no time; the global
    random state is left as it was)."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = build_autoencoder(architecture, channels, image_size, width, latent_channels, depth=depth)
    return sum(p.numel() for p in model.parameters())


def parameter_fraction(preprocessor: nn.Module, foundation: nn.Module) -> float:
    """The pre-processor's parameter count as a fraction of the foundation model's (the paper: 6-28%)."""
    return sum(p.numel() for p in preprocessor.parameters()) / sum(p.numel() for p in foundation.parameters())
