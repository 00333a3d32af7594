"""The embedded default foundation model: a small ViT-MAE pre-trained by the kit with the MAE objective.

It stands in for `facebook/vit-mae-large` where nothing can be downloaded, and ships with the package like a
downloaded checkpoint (`embedded/<dataset>-seed<seed>/`, each with its card: `cropkit pretrain-fm --ship`
writes them), one folder per independent pre-training run. Pre-training from scratch stays one call away: it is
deterministic given the seed, checkpoints every epoch (an interrupted run resumes), and saves with
`save_pretrained` under the cache, keyed by a hash of the config, the recipe and the data, then loads through
`FoundationModel.from_pretrained` exactly like a hub checkpoint.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import AutoConfig, ViTImageProcessor, ViTMAEConfig, ViTMAEForPreTraining
from transformers.models.vit_mae.modeling_vit_mae import build_2d_sinusoidal_position_embedding

from cropkit.core import precision
from cropkit.core.checkpoint import atomic_directory, cache_key, read_json, write_json
from cropkit.core.loop import RunningMeans, cosine_schedule, descend, resumable_training, shuffled_batches
from cropkit.core.paths import cache_dir
from cropkit.core.validate import (
    UNTRAINED,
    boolean,
    check_fields,
    choice,
    fraction,
    integer,
    non_negative,
    positive,
    require,
    text,
)
from cropkit.data import ImageData, load_dataset
from cropkit.foundation.backbone import HubBackbone
from cropkit.foundation.model import FoundationModel, Pooling, pretrained_source, quiet_transformers

# Bump when a code change alters what pre-training produces for the same config (it keys the cache).
RECIPE_VERSION = 1


@dataclass(frozen=True)
class MAEConfig:
    """Architecture and schedule of a from-scratch ViT-MAE; the defaults are the embedded MNIST-5k model."""

    dataset: str = "mnist5k"
    image_size: int = 28
    patch_size: int = 4
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    mlp_ratio: int = 4
    decoder_hidden_size: int = 64
    decoder_layers: int = 2
    decoder_heads: int = 4
    mask_ratio: float = 0.75
    norm_pix_loss: bool = False  # MAE's loss on per-patch normalised pixels (He et al. 2022: better features)
    max_shift: int = 2  # random translation in pixels, the augmentation (flips would change digits)
    epochs: int = 80
    batch_size: int = 128
    lr: float = 1.5e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        positive_int = integer(1)
        check_fields(self, dataset=text, image_size=positive_int, patch_size=positive_int, hidden_size=positive_int,
                     num_layers=positive_int, num_heads=positive_int, mlp_ratio=positive_int,
                     decoder_hidden_size=positive_int, decoder_layers=positive_int, decoder_heads=positive_int,
                     mask_ratio=fraction(include_zero=True, include_one=False), norm_pix_loss=boolean,
                     max_shift=integer(0), epochs=integer(1, why=UNTRAINED),
                     batch_size=positive_int, lr=positive, weight_decay=non_negative, warmup_epochs=integer(0),
                     seed=integer(0))
        for field, size, divisor in (("patch_size", self.image_size, self.patch_size),
                                     ("num_heads", self.hidden_size, self.num_heads),
                                     ("decoder_heads", self.decoder_hidden_size, self.decoder_heads)):
            require(size % divisor == 0, f"MAEConfig.{field}", divisor, f"does not divide {size}",
                    f"pick a divisor of {size} (or change the size it divides)")
    def vit_config(self, num_channels: int) -> ViTMAEConfig:
        return ViTMAEConfig(
            image_size=self.image_size,
            patch_size=self.patch_size,
            num_channels=num_channels,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            intermediate_size=self.mlp_ratio * self.hidden_size,
            decoder_hidden_size=self.decoder_hidden_size,
            decoder_num_hidden_layers=self.decoder_layers,
            decoder_num_attention_heads=self.decoder_heads,
            decoder_intermediate_size=self.mlp_ratio * self.decoder_hidden_size,
            mask_ratio=self.mask_ratio,
            norm_pix_loss=self.norm_pix_loss,
            # transformers defaults to 1e-12, which with zero-initialised tokens gives NaN gradients on blank
            # patches (docs/methods.md section 4); 1e-6 is the original MAE's value.
            layer_norm_eps=1e-6,
        )


def build_mae(config: MAEConfig, num_channels: int) -> ViTMAEForPreTraining:
    """A freshly initialised ViT-MAE, with the two initialisation traps of transformers 5 repaired.

    Built from a config, transformers 5.23 leaves both fixed sin-cos position tables (encoder and decoder) at
    zero, so the decoder cannot tell the masked patches apart and the loss never falls below predicting the
    mean; and it starts the CLS and mask tokens at zero (NaN gradients on blank patches, docs/methods.md section 4).
    We write the sin-cos tables and draw both tokens from N(0, 0.02), as the original MAE does.
    """
    torch.manual_seed(config.seed)
    model = ViTMAEForPreTraining(config.vit_config(num_channels))
    grid = config.image_size // config.patch_size
    with torch.no_grad():  # initialisation only, not a forward pass
        for table in (model.vit.embeddings.position_embeddings, model.decoder.decoder_pos_embed):
            table.copy_(build_2d_sinusoidal_position_embedding(grid, grid, table.shape[-1], cls_token=True)[None])
        nn.init.normal_(model.vit.embeddings.cls_token, std=0.02)
        nn.init.normal_(model.decoder.mask_token, std=0.02)
    return model


def _random_shift(x: Tensor, max_shift: int, generator: torch.Generator, fill: Tensor) -> Tensor:
    """Translate each image by up to `max_shift` pixels, batched; uncovered pixels get `fill` (black, per channel)."""
    if max_shift == 0:
        return x
    n, c, h, w = x.shape
    padded = fill.to(x.device).expand(n, c, h + 2 * max_shift, w + 2 * max_shift).clone()
    padded[:, :, max_shift:max_shift + h, max_shift:max_shift + w] = x
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None].expand(-1, c, -1, w + 2 * max_shift)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :].expand(-1, c, h, -1)
    return padded.gather(2, rows).gather(3, cols)


def training_data(config: MAEConfig) -> ImageData:
    """The images `config` pre-trains on: the training split at the model's resolution."""
    return load_dataset(config.dataset, "train", image_size=config.image_size)


def foundation_dir(config: MAEConfig, data: ImageData | None = None) -> Path:
    """Where the model for `config` is (or will be) cached: keyed by the config, the recipe and the data's digest."""
    data = training_data(config) if data is None else data
    key = cache_key(asdict(config), recipe=RECIPE_VERSION, data=data.digest())
    return cache_dir() / "foundation" / f"mae-{config.dataset}-{key}"


def pretrain_mae(
    config: MAEConfig = MAEConfig(), *, force: bool = False, progress: bool = True, device: str | None = None
) -> Path:
    """Pre-train (or find in the cache) the ViT-MAE for `config`; return its `save_pretrained` folder.

    Runs on `device` (default: CUDA when present). Random draws come from CPU generators seeded per epoch, so
    a resumed run continues exactly where the interrupted one stopped.
    """
    require(config.mask_ratio > 0, "MAEConfig.mask_ratio", config.mask_ratio, "MAE pre-training learns to fill in "
            "masked patches, and none would be masked", "pass a mask_ratio in (0, 1), e.g. 0.75")
    data = training_data(config)
    out = foundation_dir(config, data)
    if (out / "config.json").is_file() and not force:
        return out
    images, _ = data.tensors()
    mean = images.mean(dim=(0, 2, 3)).tolist()
    std = images.std(dim=(0, 2, 3)).tolist()
    device = precision.resolve_device(device)
    model = build_mae(config, num_channels=images.shape[1]).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.95), weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(images) / config.batch_size)
    scheduler = cosine_schedule(optimizer, config.epochs * steps_per_epoch, config.warmup_epochs * steps_per_epoch)
    shift, scale = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    images = ((images - shift) / scale).to(device)
    num_patches = (config.image_size // config.patch_size) ** 2

    def run_epoch(epoch: int) -> dict[str, float]:
        generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)  # per epoch: resume-proof
        means = RunningMeans()
        model.train()
        for batch in shuffled_batches(len(images), config.batch_size, generator):
            x = _random_shift(images[batch.to(device)], config.max_shift, generator, fill=-shift / scale)
            noise = torch.rand(len(batch), num_patches, generator=generator).to(device)
            loss = model(pixel_values=x, noise=noise).loss
            descend(loss, optimizer, scheduler, name="MAE pre-training", epoch=epoch)
            means.add({"loss": loss.item()}, len(batch))
        return means.means() | {"lr": scheduler.get_last_lr()[0]}

    partial = out.with_name(out.name + ".partial")
    history = resumable_training(partial, model=model, optimizer=optimizer, scheduler=scheduler,
                                 config=asdict(config), epochs=config.epochs, run_epoch=run_epoch,
                                 desc=f"MAE pre-training on {config.dataset}", progress=progress, restart=force)
    with atomic_directory(out) as tmp, quiet_transformers():
        model.save_pretrained(tmp)
        ViTImageProcessor(do_resize=True, size={"height": config.image_size, "width": config.image_size},
                          do_rescale=True, do_normalize=True, image_mean=mean, image_std=std).save_pretrained(tmp)
        write_json(tmp / "cropkit_pretraining.json", {"config": asdict(config), "history": history})
    shutil.rmtree(partial, ignore_errors=True)
    return out


# Embedded pre-training settings per dataset (kit choices). For MNIST-5k, linear probe on 1,000 test images
# (investigations/pretraining_budget.py, 2-core CPU): pixel loss 20/40/80 epochs 80.7/85.5/91.7%; the normalised-
# pixel loss at 40 epochs 89.8% (raw pixels 89.7%) at half the cost of 80, so the preset takes that (notebook 00's
# probe, with its own weight-decay choice, gave 88.6% against pixels' 89.7% on a fresh clone: not resolved).
PRESETS: dict[str, MAEConfig] = {
    "mnist5k": MAEConfig(norm_pix_loss=True, epochs=40),
    # Sized for a CPU (measured: 463 s on 2 cores); on a GPU, `cropkit pretrain-fm --epochs` buys more.
    "cifar10-subset": MAEConfig(dataset="cifar10-subset", image_size=32, max_shift=4, epochs=30),
}


SHIPPED = Path(__file__).with_name("embedded")  # the checkpoints that ship with the package, one folder each
CARD = "card.json"


def embedded_config(spec: str) -> MAEConfig:
    """The pre-training config that `embedded[:<dataset>][@<seed>]` names: the dataset's preset (default
    mnist5k) with its seed (default 0), one independent pre-training run per seed."""
    name, _, seed = spec.partition("@")
    dataset = name.partition(":")[2] or "mnist5k"
    require(name == "embedded" or name.startswith("embedded:"), "spec", spec, "not an embedded model's name",
            "write embedded, embedded:<dataset> or either with @<seed>, e.g. embedded@1")
    require(dataset in PRESETS, "spec", spec, f"No embedded foundation model for {dataset!r}",
            f"presets exist for {sorted(PRESETS)}; pass one of them, or pre-train with pretrain_mae(MAEConfig(...))")
    require(seed == "" or seed.isdigit(), "spec", spec, f"the seed {seed!r} is not a whole number",
            "write the pre-training seed after @, e.g. embedded@1")
    return replace(PRESETS[dataset], seed=int(seed or 0))


def shipped_dir(config: MAEConfig) -> Path:
    """Where the package keeps the checkpoint of `config`, if it ships one."""
    return SHIPPED / f"{config.dataset}-seed{config.seed}"


def shipped_model(config: MAEConfig, data: ImageData | None = None) -> Path | None:
    """The shipped checkpoint of `config`, or None: only one whose card says it was pre-trained by this recipe
    from exactly this config on exactly this data (its digest), so a shipped file never stands in for another."""
    card = shipped_dir(config) / CARD
    if not card.is_file():
        return None
    made = read_json(card)
    data = training_data(config) if data is None else data
    same = (made["recipe"], made["config"], made["data"]) == (RECIPE_VERSION, asdict(config), data.digest())
    return card.parent if same else None


def load_foundation(spec: str | os.PathLike[str] = "embedded", pooling: Pooling = "mean", *,
                    progress: bool = True, from_scratch: bool = False) -> FoundationModel:
    """The frozen foundation model named by `spec`.

    `embedded[:<dataset>][@<seed>]` is the kit's ViT-MAE pre-trained on a preset dataset (default mnist5k) with
    that seed (default 0): the checkpoint that ships with the package when there is one for it (`shipped_model`),
    else pre-trained on first use and cached; `from_scratch=True` always pre-trains (cached), as a user without
    the shipped files would. Anything else is a hub id or a local `save_pretrained` folder: a ViT-MAE (such as
    `facebook/vit-mae-large`) becomes a `FoundationModel`, any other vision backbone (ViT, DINOv2, ConvNeXt, ...) a
    `HubBackbone`, whose `pooling="mean"` (the default) takes the model's own pooled output and `"cls"` its CLS
    token.
    """
    spec = os.fspath(spec) if isinstance(spec, os.PathLike) else spec
    text("spec", spec)
    choice(("cls", "mean"), "pooling")("pooling", pooling)  # before minutes of pre-training, not after
    if spec.startswith("embedded"):
        config = embedded_config(spec)
        shipped = None if from_scratch else shipped_model(config)
        path = shipped or pretrain_mae(config, progress=progress)
        model = FoundationModel.from_pretrained(path, pooling=pooling)
        origin = "shipped" if shipped else f"pre-trained here, {path.name}"
        model.name = f"embedded ViT-MAE ({config.dataset}, seed {config.seed}, {origin})"
    else:
        with quiet_transformers(), pretrained_source(spec):
            model_type = AutoConfig.from_pretrained(spec).model_type
        model = (FoundationModel.from_pretrained(spec, pooling=pooling) if model_type == "vit_mae" else
                 HubBackbone.from_pretrained(spec, pooling="cls" if pooling == "cls" else "pooler"))
    model.spec = spec  # what loads it again (a pre-processor's card names it)
    return model
