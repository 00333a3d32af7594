"""The frozen foundation model: a transformers ViT-MAE encoder made deterministic and differentiable end to end.

transformers' ViT-MAE masks 75% of the patches at random on every forward, inference included. A frozen
feature extractor must see every patch in a fixed order, so the wrapper sets `mask_ratio = 0` and passes a fixed
`noise` (0, 1, 2, ...). It is frozen with `requires_grad_(False)` and `eval()`, never with `no_grad`: attacks
differentiate through it. Resizing and normalisation happen inside, in torch, so it takes [0, 1] images.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
import transformers
from torch import Tensor, nn
from transformers import AutoImageProcessor, ViTMAEModel

from cropkit.core.validate import InputError, choice, require

Pooling = Literal["cls", "mean"]


def check_images(x: Tensor, channels: int | tuple[int, ...] | None = None) -> None:
    """Raise a clear error unless `x` is a float batch of images (N, C, H, W) with an allowed channel count."""
    if not isinstance(x, Tensor) or x.ndim != 4 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"expected a float image batch of shape (N, C, H, W) with values in [0, 1], got {shape}")
    allowed = (channels,) if isinstance(channels, int) else channels
    if allowed is not None and x.shape[1] not in allowed:
        raise ValueError(f"expected images with {' or '.join(map(str, allowed))} channels, got shape {tuple(x.shape)}")


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers with errors only and no progress bars (a loading or saving bar per model clutters notebooks)."""
    verbosity, bars = transformers.logging.get_verbosity(), transformers.utils.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bars:
            transformers.utils.logging.enable_progress_bar()


@contextlib.contextmanager
def pretrained_source(name_or_path: str | os.PathLike[str], parameter: str = "name_or_path") -> Iterator[None]:
    """Load from `name_or_path` inside this block; a folder that does not exist, a hub id out of reach (no network)
    or a damaged checkpoint becomes an `InputError` that says which and what to use instead (transformers raises
    an OSError from deep inside, and takes a mistyped folder for a hub id)."""
    text = os.fspath(name_or_path)
    folder = Path(text).expanduser()
    local = (isinstance(name_or_path, os.PathLike) or text.startswith((".", "/", "~")) or text.count("/") > 1
             or folder.exists())
    alternatives = ("'embedded' (the kit's own ViT-MAE, offline), a folder written by save_pretrained, or a hub id "
                    "such as facebook/vit-mae-large")
    require(not local or folder.is_dir(), parameter, text, "no such folder", f"pass {alternatives}")
    try:
        yield
    except InputError:
        raise
    except Exception as error:  # transformers and huggingface_hub raise OSError, ValueError or their own types
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        if local:
            raise InputError(parameter, text, f"not a loadable checkpoint folder ({first})",
                             "it needs the files save_pretrained writes (config.json, model.safetensors, the "
                             "processor's JSON); a damaged kit cache folder can be deleted and rebuilt (`cropkit "
                             "pretrain-fm --force` for the embedded model)") from error
        raise InputError(parameter, text, f"could not be loaded from the Hugging Face hub or its local cache ({first})",
                         "without a network, pass 'embedded' (the kit's own ViT-MAE) or a local folder written by "
                         "save_pretrained; with one, check the id") from error


class FrozenImageEncoder(nn.Module):
    """What every frozen foundation model shares: [0, 1] images in (grey-scale repeated to the model's channels),
    resized and normalised inside, in torch, so that attacks work in pixel space; it stays in eval mode, and
    `feature_dim` says how wide its pooled features are. Subclasses run the network on `self.pixels(x)`."""

    def __init__(self, image_mean: Sequence[float], image_std: Sequence[float], *, image_size: int, num_channels: int,
                 feature_dim: int, name: str, resize: str = "bilinear") -> None:
        super().__init__()
        self.name, self.resize = name, resize
        self.image_size, self.num_channels, self.feature_dim = int(image_size), int(num_channels), int(feature_dim)
        self.register_buffer("mean", torch.tensor(list(image_mean), dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(list(image_std), dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)

    def pixels(self, x: Tensor) -> Tensor:
        """`x` in [0, 1] as the network's input: its channels, its resolution, its normalisation."""
        check_images(x, (1, 3) if self.num_channels == 3 else (self.num_channels,))
        if x.shape[1] != self.num_channels:  # grey-scale images into an RGB model
            x = x.expand(-1, self.num_channels, -1, -1)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode=self.resize, align_corners=False)
        return (x - self.mean) / self.std

    def train(self, mode: bool = True) -> FrozenImageEncoder:
        """Stay in eval mode whatever the caller asks: the foundation model is frozen (fine-tuning changes its
        weights, not its behaviour)."""
        return super().train(False)


class FoundationModel(FrozenImageEncoder):
    """Frozen ViT-MAE encoder: [0, 1] images of any size in, pooled features (N, hidden_size) out."""

    def __init__(
        self,
        encoder: ViTMAEModel,
        image_mean: list[float],
        image_std: list[float],
        pooling: Pooling = "mean",
        name: str = "vit-mae",
    ) -> None:
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        config = encoder.config
        super().__init__(image_mean, image_std, image_size=config.image_size, num_channels=config.num_channels,
                         feature_dim=config.hidden_size, name=name)
        config.mask_ratio = 0.0  # keep every patch (see the module docstring)
        self.encoder = encoder.requires_grad_(False).eval()
        self.pooling = pooling
        num_patches = (self.image_size // int(config.patch_size)) ** 2
        self.register_buffer("noise", torch.arange(num_patches, dtype=torch.float32).unsqueeze(0), persistent=False)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike[str], pooling: Pooling = "mean", **kwargs: object
    ) -> FoundationModel:
        """Load a ViT-MAE checkpoint (a hub id such as `facebook/vit-mae-large`, or a local folder) and freeze it.

        The image processor saved beside the weights supplies the normalisation; `kwargs` go to
        `ViTMAEModel.from_pretrained` (e.g. `attn_implementation`, `dtype`). A checkpoint missing encoder
        weights is an error rather than a silently random model; unused decoder weights are expected.
        """
        choice(("cls", "mean"), "pooling")("pooling", pooling)
        with quiet_transformers(), pretrained_source(name_or_path):  # unused decoder weights: no warning
            encoder, info = ViTMAEModel.from_pretrained(name_or_path, output_loading_info=True, **kwargs)
            processor = AutoImageProcessor.from_pretrained(name_or_path)
        if info["missing_keys"] or info["mismatched_keys"]:
            raise ValueError(f"{name_or_path} does not hold a complete ViT-MAE encoder; missing or mismatched: "
                             f"{sorted(info['missing_keys'] | set(map(str, info['mismatched_keys'])))[:5]}")
        return cls(encoder, list(processor.image_mean), list(processor.image_std), pooling, name=str(name_or_path))

    def last_blocks(self, n: int) -> list[nn.Module]:
        """The last `n` transformer layers and the norm after them: what fine-tuning the top of the model trains."""
        layers = self.encoder.layers
        if not 1 <= n <= len(layers):
            raise ValueError(f"last_blocks must be between 1 and {len(layers)} for this model, got {n}")
        return [*layers[-n:], self.encoder.layernorm]

    def forward(self, x: Tensor) -> Tensor:
        x = self.pixels(x)
        noise = self.noise.expand(x.shape[0], -1)
        hidden = self.encoder(pixel_values=x.to(self.encoder.dtype), noise=noise).last_hidden_state
        pooled = hidden[:, 0] if self.pooling == "cls" else hidden[:, 1:].mean(dim=1)
        return pooled.float()
