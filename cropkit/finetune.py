"""Robust fine-tuning of the foundation model itself: the expensive alternatives CRoPD is measured against.

`finetune_robust` copies a pipeline, unfreezes the foundation model (all of it, or its last N blocks) and
trains it on adversarial examples made inside every step by PGD through the copy (METHOD.md section 3):
- `aft`: adversarial fine-tuning (Madry et al.), CE on PGD examples of the CE; the head trains too;
- `tecoa`: TeCoA (Mao et al. 2023), the same loss with the head fixed — for CLIP the head is the text-embedding
  classifier of `cropkit.models.clip`, which is what keeps zero-shot transfer to other class sets possible;
- `pmg-aft`: PMG-AFT (Wang et al. 2024), TeCoA's loss plus alpha * KL(P_orig(x_adv) || P(x_adv)), the frozen
  original model as a guide, plus beta * KL(P(x) || P(x_adv)); KL summed over the batch as in the paper's code;
- `trades`: TRADES (Zhang et al. 2019), CE(f(x), y) + beta * KL(P(x) || P(x_adv)) (batch mean), x_adv maximising
  that KL; the AFF protocol of the adversarial contrastive learning papers (beta 6).
One training loop serves all four; runs are checkpointed every epoch, resumable, and cached by the config and
a digest of the starting weights, so notebooks share them. Every epoch's history carries its cost
(`cropkit.cost`): wall-clock, examples, FLOPs (attack steps included), trainable parameters, peak memory.
"""

from __future__ import annotations

import copy
import hashlib
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cropkit import precision
from cropkit.checkpoint import config_key, existing_directory, load_weights, save_weights
from cropkit.cost import measure
from cropkit.data import ImageData
from cropkit.loop import RunningMeans, cosine_schedule, descend, resumable_training, shuffled_batches
from cropkit.losses import linf_ascent
from cropkit.models import Pipeline
from cropkit.paths import cache_dir
from cropkit.validate import (UNTRAINED, boolean, check_fields, choice, integer, non_negative, optional, positive,
                              radius)

Method = Literal["aft", "tecoa", "pmg-aft", "trades"]
METHODS = ("aft", "tecoa", "pmg-aft", "trades")
TRAINS_HEAD = {"aft": True, "tecoa": False, "pmg-aft": False, "trades": True}
DEFAULT_BETA = {"pmg-aft": 1.0, "trades": 6.0}
RECIPE_VERSION = 1  # bump when a code change alters what fine-tuning produces for the same config


@dataclass(frozen=True)
class FinetuneConfig:
    """One robust fine-tuning run. `last_blocks=None` trains the whole foundation model; `train_head=None` takes
    the method's default (`TRAINS_HEAD`); `beta=None` the method's (`DEFAULT_BETA`); `attack_step=None` is
    2.5 * eps / attack_steps."""

    method: Method = "aft"
    eps: float = 0.1
    attack_steps: int = 3
    attack_step: float | None = None
    last_blocks: int | None = None
    train_head: bool | None = None
    alpha: float = 1.0
    beta: float | None = None
    epochs: int = 2
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.05
    n_train: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_fields(self, method=choice(METHODS, "fine-tuning method"), eps=radius, attack_steps=integer(1),
                     attack_step=optional(positive), last_blocks=optional(integer(1)), train_head=optional(boolean),
                     alpha=non_negative, beta=optional(non_negative), epochs=integer(1, why=UNTRAINED),
                     batch_size=integer(1), lr=positive, weight_decay=non_negative, n_train=optional(integer(1)),
                     seed=integer(0))

    @property
    def trains_head(self) -> bool:
        return TRAINS_HEAD[self.method] if self.train_head is None else self.train_head

    @property
    def kl_weight(self) -> float:
        return DEFAULT_BETA.get(self.method, 0.0) if self.beta is None else self.beta

    @property
    def step_size(self) -> float:
        return self.attack_step if self.attack_step is not None else 2.5 * self.eps / self.attack_steps

    @property
    def name(self) -> str:
        """Readable label: 'AFT (all blocks)', 'PMG-AFT (last 2 blocks)'."""
        method = {"aft": "AFT", "tecoa": "TeCoA", "pmg-aft": "PMG-AFT", "trades": "TRADES"}[self.method]
        scope = "all blocks" if self.last_blocks is None else f"last {self.last_blocks} blocks"
        return f"{method} ({scope})"


@dataclass
class FinetunedPipeline:
    pipeline: Pipeline
    config: FinetuneConfig
    history: list[dict[str, Any]]
    path: Path


def kl_divergence(p_logits: Tensor, q_logits: Tensor, reduction: Literal["sum", "batchmean"]) -> Tensor:
    """KL(P || Q) of the softmax distributions of two logit batches (a true KL: log-probabilities on both sides)."""
    return F.kl_div(F.log_softmax(q_logits, dim=1), F.log_softmax(p_logits, dim=1), log_target=True,
                    reduction=reduction)


def finetune_loss(model: nn.Module, guide: nn.Module | None, config: FinetuneConfig, x: Tensor, y: Tensor,
                  generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
    """The training loss of `config.method` on one batch, and its parts for the history (module docstring).

    `guide` is the frozen original pipeline (PMG-AFT only). The adversarial examples are made with the model in
    eval mode, as the reference implementations do.
    """
    training = model.training
    model.eval()
    if config.method == "trades":
        with torch.no_grad():
            clean_logits = model(x)
        x_adv = linf_ascent(lambda v: kl_divergence(clean_logits, model(v), "sum"), x, config.eps,
                            steps=config.attack_steps, step=config.step_size, generator=generator)
    else:
        x_adv = linf_ascent(lambda v: F.cross_entropy(model(v), y), x, config.eps, steps=config.attack_steps,
                            step=config.step_size, generator=generator)
    model.train(training)
    adv_logits = model(x_adv)
    if config.method == "trades":
        clean_ce = F.cross_entropy(model(x), y)
        kl = kl_divergence(model(x), adv_logits, "batchmean")  # recomputed: the attack's clean logits hold no graph
        return clean_ce + config.kl_weight * kl, {"clean_ce": clean_ce.item(), "kl": kl.item()}
    adv_ce = F.cross_entropy(adv_logits, y)
    if config.method != "pmg-aft":
        return adv_ce, {"adv_ce": adv_ce.item()}
    if guide is None:
        raise ValueError("PMG-AFT needs the frozen original model as its guide")
    with torch.no_grad():
        guide_logits = guide(x_adv)
    kl_guide = kl_divergence(guide_logits, adv_logits, "sum")
    kl_clean = kl_divergence(model(x), adv_logits, "sum")
    loss = adv_ce + config.alpha * kl_guide + config.kl_weight * kl_clean
    return loss, {"adv_ce": adv_ce.item(), "kl_guide": kl_guide.item(), "kl_clean": kl_clean.item()}


def weights_digest(model: nn.Module) -> str:
    """Short hash of a module's parameters and persistent buffers: which starting point a run fine-tuned."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())  # 0-dim too
    return digest.hexdigest()[:12]


def unfreeze(pipeline: Pipeline, config: FinetuneConfig) -> list[nn.Parameter]:
    """Make the parts `config` trains require gradients (and only those); return their parameters."""
    pipeline.requires_grad_(False)
    foundation = pipeline.foundation
    if config.last_blocks is None:
        parts = [foundation]
    elif hasattr(foundation, "last_blocks"):
        parts = foundation.last_blocks(config.last_blocks)
    else:
        raise ValueError(f"{type(foundation).__name__} does not say what its blocks are; use last_blocks=None")
    if config.trains_head:
        parts.append(pipeline.head)
    for part in parts:
        part.requires_grad_(True)
    return [p for p in pipeline.parameters() if p.requires_grad]


def finetune_dir(config: FinetuneConfig, start: str, data: ImageData) -> Path:
    key = config_key(asdict(config) | {"start": start, "data": [data.name, data.split, len(data)],
                                       "recipe": RECIPE_VERSION})
    return cache_dir() / "finetuned" / f"{config.method}-{data.name}-{key}"


def finetune_robust(
    pipeline: Pipeline, train: ImageData, config: FinetuneConfig, *, device: torch.device | str | None = None,
    force: bool = False, progress: bool = True,
) -> FinetunedPipeline:
    """Robustly fine-tune a copy of `pipeline` on `train` (or load the cached result); `pipeline` is left as it is.

    AdamW with a cosine schedule (the adversarial CE of a fresh linear head is tens of nats: plain SGD at the
    papers' rates diverges here); bf16 autocast on CUDA. `config.n_train` trains on a seeded subset.
    """
    data = train.take(config.n_train, seed=config.seed) if config.n_train else train
    out = finetune_dir(config, weights_digest(pipeline), data)
    tuned = copy.deepcopy(pipeline).cpu()
    found = existing_directory(out)
    if found is not None and not force:
        saved = load_weights(tuned, found)
        return FinetunedPipeline(tuned.requires_grad_(False).eval(), config, saved["history"], found)

    device = precision.resolve_device(device)
    tuned.to(device)
    guide = pipeline.to(device).eval() if config.method == "pmg-aft" else None
    parameters = unfreeze(tuned, config)
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = cosine_schedule(optimizer, config.epochs * math.ceil(len(data) / config.batch_size))
    images, labels = data.tensors()

    def run_epoch(epoch: int) -> dict[str, float]:
        generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        means = RunningMeans()
        tuned.train()
        with measure(tuned, examples=len(images), device=device) as cost:
            for batch in shuffled_batches(len(images), config.batch_size, generator):
                x, y = images[batch].to(device, non_blocking=True), labels[batch].to(device, non_blocking=True)
                with precision.autocast(device):
                    loss, parts = finetune_loss(tuned, guide, config, x, y, generator)
                descend(loss, optimizer, scheduler, name=config.name, epoch=epoch)
                means.add(parts | {"loss": loss.item()}, len(batch))
        tuned.eval()
        return means.means("train_") | cost.fields()

    partial = out.with_name(out.name + ".partial")
    history = resumable_training(partial, model=tuned, optimizer=optimizer, scheduler=scheduler,
                                 config=asdict(config), epochs=config.epochs, run_epoch=run_epoch,
                                 desc=f"{config.name} on {data.name}", progress=progress, restart=force)
    tuned.cpu().requires_grad_(False).eval()
    save_weights(tuned, out, {"finetune": asdict(config), "history": history})
    shutil.rmtree(partial, ignore_errors=True)
    return FinetunedPipeline(tuned, config, history, out)
