"""Robust fine-tuning of the foundation model itself: the expensive alternatives CRoPD is measured against.

`finetune_robust` copies a pipeline, unfreezes the foundation model (all of it, or its last N blocks) and
trains it on adversarial examples made inside every step by PGD through the copy (docs/methods.md section 3):
- `aft`: adversarial fine-tuning (Madry et al.), CE on PGD examples of the CE; the head trains too;
- `tecoa`: TeCoA (Mao et al. 2023), the same loss with the head fixed — for CLIP the head is the text-embedding
  classifier of `cropkit.foundation.clip`, which is what keeps zero-shot transfer to other class sets possible. Its
  logits are CLIP's, logit_scale * cosine, in the loss and in the PGD alike, as TeCoA's code has them
  (ZSRobust4FoundationModel `finetuning.py`, `multiGPU_CLIP`: image embedding @ (logit_scale * text embedding).T);
  for a linear probe, 100 (CLIP's logit scale) times the probe's cosine logits (below);
- `pmg-aft`: PMG-AFT (Wang et al. 2024) as its code has it (`PMG_AFT.py`, `train`): CE(x_adv) (batch mean) +
  alpha * KL(P_orig(x_adv) || P(x_adv)) + beta * KL(P(x) || P(x_adv)), each KL summed over the batch
  (`nn.KLDivLoss(reduction="sum")`, input log_softmax of the adversarial output, target softmax of the frozen
  original's or the clean output, gradient through both), all of it and its PGD on *cosine* logits: PMG_AFT.py
  renormalises the logit-scaled text embeddings (`multiGPU_CLIP`), so CLIP's scale cancels, and its `validate`
  attacks and scores the same cosines. Two ports to a linear probe that do not work (`investigations/
  pmg_aft_port.py`): its logits divided by 100, the kit's port before recipe 6 (CE and KLs nearly flat in
  unbounded logits: clean accuracy fell to 20% at the quick profile's budget, the superseded rows of
  `finetune_recipe.json`), and its raw logits (each batch-summed KL outweighs the batch-mean CE by the batch size,
  and a constant prediction, which sets both KLs to 0, wins);
- `trades`: TRADES (Zhang et al. 2019), CE(f(x), y) + beta * KL(P(x) || P(x_adv)) (batch mean), x_adv maximising
  that KL (summed) in eval mode; the AFF protocol of the adversarial contrastive learning papers (beta 6), as in
  RobustSSL_Benchmark's `trades_loss` (KL direction, reductions, one clean forward shared by CE and KL, the
  gradient through it). Deviations: the attack starts uniformly in the eps-ball (theirs: x + 0.001 * N(0, 1));
  an ACL encoder sends clean and adversarial images through its `pgd` BatchNorm, their `--dualBN 0` (their
  default `trades_loss_dual` sends clean ones through `normal`).
TeCoA and PMG-AFT keep the head fixed and work on its cosine logits (`heads.CosineHead`, `method_pipeline`): for
CLIP's zero-shot head the cosine with each text embedding, for a linear probe the cosine between the standardised
features and each class's weight row (the bias left out; the probe's class vectors play the text embeddings'
part, a kit choice), times the method's scale. The fine-tuned pipeline keeps that head, so it is evaluated on the
logits it was trained on, as both codes evaluate CLIP. AFT and TRADES train the head's own logits.
Every method may grow the attack's radius linearly from 0 to eps over its first `eps_warmup_epochs`: the idea of
the eps-warmup of Debenedetti, Sehwag & Mittal 2023, "A Light Recipe to Train Robust Vision Transformers", whose
code ramps eps per epoch with a fixed step of 1.5 * eps / steps; the kit's ramp per optimiser step, with the step
scaled to the current radius, is its own choice. Not in the TeCoA or PMG-AFT code, which start
from CLIP at full eps; a small ViT from its MAE start collapses to near-chance clean accuracy under full-eps PGD
from the first step (`investigations/finetune_recipe.json`), so the kit's recipe uses it for every method alike.
One training loop serves all four; runs are checkpointed every epoch, resumable, and cached by the config and
the starting pipeline's `module_key`, so notebooks share them. Every epoch's history carries its cost
(`cropkit.core.cost`): wall-clock, examples, FLOPs (attack steps included), trainable parameters, peak memory.
"""

from __future__ import annotations

import copy
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cropkit.core import precision
from cropkit.core.checkpoint import (
    cache_key,
    existing_directory,
    load_snapshot,
    load_weights,
    module_key,
    save_weights,
)
from cropkit.core.cost import measure
from cropkit.core.loop import RunningMeans, cosine_schedule, descend, resumable_training, shuffled_batches
from cropkit.core.paths import cache_dir
from cropkit.core.validate import (
    UNTRAINED,
    Summary,
    boolean,
    check_fields,
    choice,
    integer,
    non_negative,
    optional,
    positive,
    radius,
    require,
)
from cropkit.data import ImageData
from cropkit.eval.ascent import linf_ascent
from cropkit.eval.inputs import head_matches
from cropkit.foundation import Pipeline
from cropkit.foundation.heads import CosineHead

Method = Literal["aft", "tecoa", "pmg-aft", "trades"]
METHODS = ("aft", "tecoa", "pmg-aft", "trades")
CLIP_LOGIT_SCALE = 100.0  # exp(4.6052), the cap TeCoA's and PMG-AFT's code clamp CLIP's logit scale to
TRAINS_HEAD = {"aft": True, "tecoa": False, "pmg-aft": False, "trades": True}
DEFAULT_BETA = {"pmg-aft": 1.0, "trades": 6.0}
# Bump when a code change alters what fine-tuning produces for the same config (it keys the cache); 2: PMG-AFT's
# logits, TRADES' single clean forward; 3: the history records the accuracy on each step's own PGD examples;
# 4: the weights after every epoch are kept (`FinetunedPipeline.at_epoch`); 5: eps-warmup; 6: PMG-AFT on the head's
# cosine logits (and deployed with them) instead of logits / 100, TeCoA on 100 x a probe's cosines, not its logits.
RECIPE_VERSION = 6


@dataclass(frozen=True)
class FinetuneConfig:
    """One robust fine-tuning run. `last_blocks=None` trains the whole foundation model; `train_head=None` takes
    the method's default (`TRAINS_HEAD`); `beta=None` the method's (`DEFAULT_BETA`); `attack_step=None` is
    2.5 * eps / attack_steps (scaled with the radius during `eps_warmup_epochs`, module docstring)."""

    method: Method = "aft"
    eps: float = 0.1
    attack_steps: int = 3
    attack_step: float | None = None
    last_blocks: int | None = None
    train_head: bool | None = None
    alpha: float = 1.0
    beta: float | None = None
    epochs: int = 2
    eps_warmup_epochs: int = 0
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.05
    n_train: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_fields(self, method=choice(METHODS, "fine-tuning method"), eps=radius, attack_steps=integer(1),
                     attack_step=optional(positive), last_blocks=optional(integer(1)), train_head=optional(boolean),
                     alpha=non_negative, beta=optional(non_negative),
                     epochs=integer(1, why=UNTRAINED), eps_warmup_epochs=integer(0), batch_size=integer(1),
                     lr=positive, weight_decay=non_negative, n_train=optional(integer(1)), seed=integer(0))
        require(self.eps_warmup_epochs <= self.epochs, "FinetuneConfig.eps_warmup_epochs", self.eps_warmup_epochs,
                f"longer than the run's {self.epochs} epochs: it would never attack at eps", "pick at most `epochs`")

    @property
    def trains_head(self) -> bool:
        return TRAINS_HEAD[self.method] if self.train_head is None else self.train_head

    @property
    def kl_weight(self) -> float:
        return DEFAULT_BETA.get(self.method, 0.0) if self.beta is None else self.beta

    @property
    def step_size(self) -> float:
        return self.attack_step if self.attack_step is not None else 2.5 * self.eps / self.attack_steps

    def radius(self, step: int, steps_per_epoch: int) -> float:
        """The attack's radius at optimiser step `step` (from 0): eps, grown linearly during the warmup."""
        warmup = self.eps_warmup_epochs * steps_per_epoch
        return self.eps if step >= warmup else self.eps * (step + 1) / warmup

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

    def at_epoch(self, epoch: int) -> Pipeline:
        """The fine-tuned pipeline as it was after `epoch` epochs (its cost: `self.history[:epoch]`)."""
        earlier = copy.deepcopy(self.pipeline)
        load_snapshot(earlier, self.path, epoch)
        return earlier


def kl_divergence(p_logits: Tensor, q_logits: Tensor, reduction: Literal["sum", "batchmean"]) -> Tensor:
    """KL(P || Q) of the softmax distributions of two logit batches (a true KL: log-probabilities on both sides)."""
    return F.kl_div(F.log_softmax(q_logits, dim=1), F.log_softmax(p_logits, dim=1), log_target=True,
                    reduction=reduction)


def finetune_loss(
    model: nn.Module, guide: nn.Module | None, config: FinetuneConfig, x: Tensor, y: Tensor,
    generator: torch.Generator | None = None, eps: float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """The training loss of `config.method` on one batch, and its parts for the history (module docstring).

    `guide` is the frozen original pipeline (PMG-AFT only); `eps` the radius of this step (default `config.eps`;
    the step size scales with it). For TeCoA and PMG-AFT the pipelines carry the method's cosine head
    (`method_pipeline`). The adversarial examples are made with the model in eval mode (RobustSSL's TRADES does
    so; TeCoA's and PMG-AFT's CLIP tower has no layer that differs).
    """
    eps = config.eps if eps is None else eps
    step = config.step_size * eps / config.eps if config.eps > 0 else config.step_size
    training = model.training
    model.eval()
    if config.method == "trades":
        with torch.no_grad():
            clean_logits = model(x)
        x_adv = linf_ascent(lambda v: kl_divergence(clean_logits, model(v), "sum"), x, eps,
                            steps=config.attack_steps, step=step, generator=generator)
    else:
        x_adv = linf_ascent(lambda v: F.cross_entropy(model(v), y), x, eps, steps=config.attack_steps, step=step,
                            generator=generator)
    model.train(training)
    adv_logits = model(x_adv)
    # Accuracy on the step's own adversarial examples and on the clean batch: robust training accuracy that rises
    # while clean accuracy falls is label leaking (the model reads the attack's perturbation), not robustness.
    # For AFT and TeCoA this costs one no-grad forward, counted in the run's FLOPs like every other pass.
    adv_accuracy = _accuracy(adv_logits, y)
    if config.method == "trades":
        clean = model(x)  # one forward for both terms; the attack's clean logits hold no graph
        clean_ce, kl = F.cross_entropy(clean, y), kl_divergence(clean, adv_logits, "batchmean")
        return clean_ce + config.kl_weight * kl, {"clean_ce": clean_ce.item(), "kl": kl.item(),
                                                  "adv_accuracy": adv_accuracy, "clean_accuracy": _accuracy(clean, y)}
    adv_ce = F.cross_entropy(adv_logits, y)
    if config.method != "pmg-aft":
        with torch.no_grad():
            clean_accuracy = _accuracy(model(x), y)
        return adv_ce, {"adv_ce": adv_ce.item(), "adv_accuracy": adv_accuracy, "clean_accuracy": clean_accuracy}
    if guide is None:
        raise ValueError("PMG-AFT needs the frozen original model as its guide")
    with torch.no_grad():
        guide_logits = guide(x_adv)
    clean_logits = model(x)
    kl_guide = kl_divergence(guide_logits, adv_logits, "sum")
    kl_clean = kl_divergence(clean_logits, adv_logits, "sum")
    loss = adv_ce + config.alpha * kl_guide + config.kl_weight * kl_clean
    return loss, {"adv_ce": adv_ce.item(), "kl_guide": kl_guide.item(), "kl_clean": kl_clean.item(),
                  "adv_accuracy": adv_accuracy, "clean_accuracy": _accuracy(clean_logits, y)}


def _accuracy(logits: Tensor, y: Tensor) -> float:
    return (logits.argmax(dim=1) == y).float().mean().item()


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


def cosine_scale(method: str, head: nn.Module) -> float | None:
    """What `method` trains on, as a multiple of the head's cosine logits: TeCoA the head's `logit_scale` (CLIP's),
    else `CLIP_LOGIT_SCALE`; PMG-AFT 1, the cosines themselves; AFT and TRADES None (the head's own logits)."""
    if method == "tecoa":
        return float(getattr(head, "logit_scale", CLIP_LOGIT_SCALE))
    return 1.0 if method == "pmg-aft" else None


def method_pipeline(pipeline: Pipeline, method: str) -> Pipeline:
    """`pipeline` as `method` trains, attacks and deploys it (module docstring): its modules (shared, not copied)
    with the scaled cosine head for TeCoA and PMG-AFT; `pipeline` itself for AFT and TRADES."""
    scale = cosine_scale(method, pipeline.head)
    return pipeline if scale is None else Pipeline(pipeline.preprocessor, pipeline.foundation,
                                                   CosineHead(pipeline.head, scale))


def finetune_dir(config: FinetuneConfig, start: str, data: ImageData) -> Path:
    """Where a run is cached: keyed by the config, the starting pipeline's `module_key` (its weights, classes and
    settings), the recipe and the data's digest."""
    key = cache_key(asdict(config) | {"start": start}, recipe=RECIPE_VERSION, data=data.digest())
    return cache_dir() / "finetuned" / f"{config.method}-{data.name}-{key}"


def finetune_robust(
    pipeline: Pipeline, train: ImageData, config: FinetuneConfig, *, device: torch.device | str | None = None,
    force: bool = False, progress: bool = True,
) -> FinetunedPipeline:
    """Robustly fine-tune a copy of `pipeline` on `train` (or load the cached result); `pipeline` is left as it is.

    AdamW with a cosine schedule (the adversarial CE of a fresh linear head is tens of nats: plain SGD at the
    papers' rates diverges here); bf16 autocast on CUDA. `config.n_train` trains on a seeded subset. A head whose
    number of classes is not `train`'s is refused before any work.
    """
    require(isinstance(config, FinetuneConfig), "config", config, "not a FinetuneConfig",
            "pass e.g. FinetuneConfig(method='tecoa', eps=0.1)")
    require(isinstance(train, ImageData) and len(train) > 0, "train", train, "not a non-empty ImageData",
            "load it with cropkit.data.load_dataset(name, 'train')")
    head_matches(pipeline, train, "pipeline", "fine-tune a pipeline whose head was fitted on this dataset "
                 "(cropkit.eval.protocols.fit_slf, or CLIP's zero-shot head built from this dataset's class names)")
    if cosine_scale(config.method, pipeline.head) is not None:
        head = type(pipeline.head).__name__
        require(callable(getattr(pipeline.head, "cosine", None)), "pipeline", Summary(f"a pipeline with a {head}"),
                f"{config.name} trains on the head's cosine logits, and this head has no cosine(features)",
                "fine-tune a pipeline with a LinearHead (fit_slf) or CLIP's zero-shot head")
    data = train.take(config.n_train, seed=config.seed) if config.n_train else train
    out = finetune_dir(config, module_key(pipeline), data)
    tuned = method_pipeline(copy.deepcopy(pipeline).cpu(), config.method)
    found = existing_directory(out)
    if found is not None and not force:
        saved = load_weights(tuned, found)
        return FinetunedPipeline(tuned.requires_grad_(False).eval(), config, saved["history"], found)

    device = precision.resolve_device(device)
    tuned.to(device)
    guide = method_pipeline(pipeline.to(device), config.method) if config.method == "pmg-aft" else None
    parameters = unfreeze(tuned, config)
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = cosine_schedule(optimizer, config.epochs * math.ceil(len(data) / config.batch_size))
    images, labels = data.tensors()
    steps_per_epoch = math.ceil(len(images) / config.batch_size)

    def run_epoch(epoch: int) -> dict[str, float]:
        generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        means = RunningMeans()
        tuned.train()
        with measure(tuned, examples=len(images), device=device, count_flops="first-batch") as cost:
            for i, batch in enumerate(shuffled_batches(len(images), config.batch_size, generator)):
                x, y = images[batch].to(device, non_blocking=True), labels[batch].to(device, non_blocking=True)
                eps = config.radius(epoch * steps_per_epoch + i, steps_per_epoch)
                with cost.batch(len(batch)):
                    with precision.autocast(device):
                        loss, parts = finetune_loss(tuned, guide, config, x, y, generator, eps)
                    descend(loss, optimizer, scheduler, name=config.name, epoch=epoch)
                means.add(parts | {"loss": loss.item(), "eps": eps}, len(batch))
        tuned.eval()
        return means.means("train_") | cost.fields()

    partial = out.with_name(out.name + ".partial")
    snapshots = out.with_name(out.name + ".epochs")
    history = resumable_training(partial, model=tuned, optimizer=optimizer, scheduler=scheduler,
                                 config=asdict(config), epochs=config.epochs, run_epoch=run_epoch,
                                 desc=f"{config.name} on {data.name}", progress=progress, restart=force,
                                 snapshots=snapshots)
    tuned.cpu().requires_grad_(False).eval()
    save_weights(tuned, out, {"finetune": asdict(config), "history": history}, snapshots)
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(snapshots, ignore_errors=True)
    return FinetunedPipeline(tuned, config, history, out)
