"""Training the pre-processor: CRoPD and its auto-encoder baselines.

`train_preprocessor` never sees the foundation model: it takes only a config, builds the auto-encoder and
trains it on the dataset's training split. Kinds (docs/methods.md section 1):
- `cropd`: MSE reconstruction + lam * L_con(f_en(x_adv), f_en(x)), x_adv from FGSM-RS on L_con through the
  encoder only;
- `recon`: reconstruction only (lambda = 0);
- `adv-recon`: adversarial denoising, reconstruct x from an FGSM-RS x_adv that maximises the reconstruction error.
Each epoch is checkpointed (resume after an interruption) and the finished model is cached by config hash, so
notebooks share trained pre-processors instead of retraining them.
"""

from __future__ import annotations

import math
import shutil
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cropkit.core import distributed, precision
from cropkit.core.checkpoint import cache_key, existing_directory, load_weights, save_weights
from cropkit.core.cost import measure
from cropkit.core.loop import RunningMeans, cosine_schedule, descend, resumable_training, shuffled_batches
from cropkit.core.paths import cache_dir
from cropkit.core.validate import (
    require,
)
from cropkit.cropd.autoencoders import build_autoencoder
from cropkit.cropd.bound import latent_similarity
from cropkit.cropd.config import RECIPE_VERSION, PreprocessorConfig
from cropkit.cropd.losses import COLLAPSED, L_CON_BATCH, contrastive_loss, contrastive_terms, reconstruction_loss
from cropkit.cropd.pretrained import TrainedPreprocessor
from cropkit.data import ImageData, load_dataset
from cropkit.eval.ascent import fgsm_rs

MONITOR_SIZE = 512  # held-out test images on which reconstruction and L_con are tracked every epoch


def training_split(config: PreprocessorConfig) -> ImageData:
    """The examples `config` trains on: the dataset's training split, or its class-balanced subset of
    `per_class` examples per class drawn with the config's seed."""
    train = load_dataset(config.dataset, "train")
    return train if config.per_class is None else train.balanced(config.per_class, seed=config.seed)


def epochs_for_steps(steps: int, n_train: int, batch_size: int) -> int:
    """The fewest epochs over `n_train` examples in batches of `batch_size` that take at least `steps` optimiser
    steps: training sets of different sizes get the same budget of steps (not of epochs, which would give a smaller
    set less training)."""
    for name, value in (("steps", steps), ("n_train", n_train), ("batch_size", batch_size)):
        require(value >= 1, name, value, "must be at least 1", "pass a positive count")
    return math.ceil(steps / math.ceil(n_train / batch_size))


def preprocessor_dir(config: PreprocessorConfig, train: ImageData | None = None) -> Path:
    """Where the pre-processor of `config` is cached: keyed by the config, the recipe and the training data's digest."""
    train = training_split(config) if train is None else train
    key = cache_key(config.fields(), recipe=RECIPE_VERSION, data=train.digest())
    return cache_dir() / "preprocessors" / f"{config.kind}-{config.dataset}-{key}"


def psnr(model: nn.Module, images: Tensor, batch_size: int = 512) -> float:
    """Peak signal-to-noise ratio (dB) of the reconstructions of `images` in [0, 1]."""
    device = next(model.parameters()).device
    with torch.inference_mode():
        mse = torch.cat([F.mse_loss(model(x.to(device)), x.to(device), reduction="none").flatten(1).mean(1).cpu()
                         for x in images.split(batch_size)])
    return float((10 * torch.log10(1 / mse.clamp_min(1e-10))).mean())


def monitored_contrastive_loss(model: nn.Module, images: Tensor, labels: Tensor | None, eps: float, tau: float,
                               seed: int = 0) -> dict[str, float]:
    """L_con of f_en under FGSM-RS (the quantity CRoPD minimises) and its increase over the clean L_con, means over
    `images` measured in fixed batches of `L_CON_BATCH` (`contrastive_terms`), or in one batch of all of them when
    a dataset's test split has fewer (a monitor only: its values then sit on another scale)."""
    device = next(model.parameters()).device
    adversarial, clean = contrastive_terms(model.latent, images.to(device), None if labels is None else labels.to(device),
                                           eps, tau=tau, seed=seed, batch_size=min(L_CON_BATCH, len(images)))
    return {"l_con": float(adversarial.mean()), "l_con_increase": float((adversarial - clean).mean())}


def preprocessor_loss(model: nn.Module, config: PreprocessorConfig, x: Tensor, y: Tensor,
                      generator: torch.Generator | None = None,
                      part: slice | None = None) -> tuple[Tensor, dict[str, float]]:
    """The training loss of `config.kind` on one batch, and its parts for the history (module docstring).

    Under data parallelism each rank passes the whole batch and its `part` (`distributed.shard`) and computes
    only those rows: it returns their share of the batch-mean loss (the history parts are its rows' means), so
    the ranks' losses and gradients add up to the one-process ones. FGSM-RS starts from the rows of one draw for
    the whole batch, and L_con's clean latents are gathered from every rank with their gradient.
    """
    part = slice(0, len(x)) if part is None else part
    x_all, x = x, x[part]
    share = len(x) / len(x_all)

    def fgsm_view(loss_of_input: Callable[[Tensor], Tensor]) -> Tensor:
        noise = torch.rand(x_all.shape, generator=generator, device="cpu" if generator is not None else x.device)
        return fgsm_rs(loss_of_input, x, config.eps, noise=noise[part])

    if config.kind == "adv-recon":
        x_adv = fgsm_view(lambda v: reconstruction_loss(model(v), x))
        recon = reconstruction_loss(model(x_adv), x)
        return share * recon, {"recon": recon.item()}
    recon = reconstruction_loss(model(x), x)
    if config.kind == "recon":
        return share * recon, {"recon": recon.item()}
    negatives = None if config.label_free else y
    z = distributed.gather_rows(model.latent(x), len(x_all))
    x_adv = fgsm_view(lambda v: contrastive_loss(model.latent(v), z.detach(), negatives, config.tau, first=part.start))
    con = contrastive_loss(model.latent(x_adv), z, negatives, config.tau, first=part.start)
    return share * (recon + config.lam * con), {"recon": recon.item(), "l_con": con.item()}


def train_preprocessor(
    config: PreprocessorConfig, *, device: str | None = None, force: bool = False, progress: bool = True
) -> TrainedPreprocessor:
    """Train (or load from the cache) the pre-processor for `config`. The foundation model takes no part.

    Under torchrun (after `distributed.init()`) every rank calls it alike: each computes its shard of every
    batch of `config.batch_size`, gradients and history are summed across ranks, rank 0 writes the checkpoints,
    and the result equals one-process training. The cache folder must be shared by the ranks (one file system).
    """
    train = training_split(config)
    out = preprocessor_dir(config, train)
    pixel_mean = float(train.images.float().mean() / 255)
    model = build_autoencoder(config.architecture, train.image_shape[0], train.image_shape[1], config.width,
                              config.latent_channels, config.seed, pixel_mean, config.depth)
    found = existing_directory(out)
    if found is not None and not force:
        saved = load_weights(model, found)
        return warn_if_collapsed(TrainedPreprocessor(model.requires_grad_(False).eval(), config, saved["history"],
                                                     found))

    device = precision.resolve_device(device)
    model.to(device)
    images, labels = (t.to(device) for t in train.tensors())
    monitor_x, monitor_y = monitor_split(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = config.epochs * math.ceil(len(images) / config.batch_size)
    scheduler = cosine_schedule(optimizer, steps)
    smallest_batch = len(images) % config.batch_size or config.batch_size
    if smallest_batch < distributed.world_size():
        raise ValueError(f"{distributed.world_size()} ranks cannot share a batch of {smallest_batch} images (the "
                         f"last of each epoch of {len(images)}); choose another batch_size")

    def run_epoch(epoch: int) -> dict[str, float]:
        generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        model.train()
        means = RunningMeans()
        with measure(model, examples=len(images), device=device, count_flops="first-batch") as cost:
            for batch in shuffled_batches(len(images), config.batch_size, generator):
                part = distributed.shard(len(batch))
                with cost.batch(len(batch)):
                    with precision.autocast(device):
                        loss, parts = preprocessor_loss(model, config, images[batch.to(device)],
                                                        labels[batch.to(device)], generator, part)
                    descend(loss, optimizer, scheduler, name=config.name, epoch=epoch, sharded_model=model)
                means.add(parts, part.stop - part.start)
        model.eval()
        stats = means.means("train_", across_ranks=True) | cost.fields()
        stats["test_psnr"] = psnr(model, monitor_x)
        monitored = monitored_contrastive_loss(model, monitor_x, None if config.label_free else monitor_y, config.eps,
                                               config.tau, config.seed)
        stats |= {f"test_{name}": value for name, value in monitored.items()}
        if len(monitor_x) >= 2:  # collapse shows between different images (`warn_if_collapsed`)
            stats["test_latent_similarity"] = latent_similarity(model, monitor_x)
        return stats

    partial = out.with_name(out.name + ".partial")
    snapshots = out.with_name(out.name + ".epochs")
    history = resumable_training(partial, model=model, optimizer=optimizer, scheduler=scheduler,
                                 config=config.fields(), epochs=config.epochs, run_epoch=run_epoch,
                                 desc=f"{config.name} on {config.dataset}", progress=progress and distributed.is_main(),
                                 restart=force, snapshots=snapshots)
    model.cpu().requires_grad_(False).eval()
    if distributed.is_main():
        save_weights(model, out, {"preprocessor": asdict(config), "history": history}, snapshots)
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(snapshots, ignore_errors=True)
    distributed.barrier()
    return warn_if_collapsed(TrainedPreprocessor(model, config, history, out))


def monitor_split(config: PreprocessorConfig) -> tuple[Tensor, Tensor]:
    """The held-out test images (and labels) on which training tracks reconstruction, L_con and collapse."""
    return load_dataset(config.dataset, "test").take(MONITOR_SIZE, seed=config.seed).tensors()


def warn_if_collapsed(trained: TrainedPreprocessor) -> TrainedPreprocessor:
    """Warn when a CRoPD pre-processor's pooled latent has collapsed (`losses.COLLAPSED`): its L_con then sits at
    log(1 + negatives) whatever the input, so neither that nor the bound's terms speak for robustness, and a reader
    should know before evaluating it. Reads the last epoch's monitored similarity; for models cached before it was
    monitored, measures it on the monitor images. Returns `trained`."""
    config = trained.config
    if config.kind != "cropd" or not distributed.is_main():
        return trained
    similarity = trained.history[-1].get("test_latent_similarity") if trained.history else None
    if similarity is None:
        images = monitor_split(config)[0]
        similarity = latent_similarity(trained.model, images) if len(images) >= 2 else None
    if similarity is not None and similarity >= COLLAPSED:
        warnings.warn(f"pre-processor {config.name} ({config.architecture}, width={config.width}, "
                      f"latent_channels={config.latent_channels}, "
                      f"eps={config.eps}, {config.epochs} epochs on {config.dataset}; {trained.path}) has a collapsed "
                      f"latent: the mean cosine between different test images' pooled latents is {similarity:.3f} >= "
                      f"{COLLAPSED}, so L_con sits at its collapse value for any input and only attacks through the "
                      "whole pipeline say how robust it is. A smaller eps or lam, a wider latent (width, "
                      "latent_channels) or more epochs may avoid it.", RuntimeWarning, stacklevel=2)
    return trained
