"""Robust foundation models by adversarial contrastive learning: ACL, DynACL, their AIR variants, and RCS.

`pretrain_acl(method, air=..., rcs=..., **settings)` runs one training loop for the whole family (docs/methods.md
section 2). Each step augments the batch twice at strength s, makes adversarial views by PGD on the NT-Xent of
the pair (through the `pgd` BatchNorm branch, the model in eval mode as in the official `PGD_contrastive`, so the
attack moves no running statistic), and minimises, in train mode, `acl_loss` of the natural (`normal` branch)
and adversarial NT-Xent, with DynACL's annealed s and weight w. `air=True` minimises AIR's objective as its code
does (`AIR.py`, `AIR_Loss.forward`): `(1-w) L_nat + (1+w) L_adv + 0.5 SIR + 0.5 AIR`, the contrastive part not
halved (`losses.air_objective`), its regularisers as published by default (`air_form`, `cropkit.acl.losses`).

Each method as its authors' code trains it (`momentum` and `adversarial_weight`):
- DynACL (`train_DynACL.py`) trains with a momentum encoder: the second view of every pair, in the attack too, goes
  through a key encoder that gets no gradient and follows the trained one with m = 0.99 after every step; the key
  encoder is the one released and used downstream. Its loss weight steps at epoch // 50 (epochs 50, 100, ...), one
  epoch before the augmentation strength changes (51, 101, ...).
- DynACL-AIR (AIR's `pretraining.py`) has no momentum encoder and weights w = (2/3)(1 - s), stepping with s.
- ACL and ACL-AIR: w = 0, no momentum encoder.
With `rcs`, the first `warmup` epochs use all data, then every `interval`
epochs a coreset of `fraction` of the training set is selected (`cropkit.acl.rcs`) and trained on until the next
selection.

The finished model is cached by config hash, and every epoch is checkpointed so an interrupted run resumes.
The history has one row per epoch with `seconds` (wall-clock, selection included), `selection_seconds` and
`examples` (the images actually trained on). `TrainedACL.encoder()` is the frozen backbone (`pgd` branch) that
the kit's downstream protocols take as their foundation model; `untrained_encoder(**settings)` is the same
backbone at initialisation, the baseline.

RCS follows its official code (`ACL_RCS/small_scale_datasets/RCS.py`): the selection runs in eval mode, so it
changes no running statistic; a candidate batch's gradient is that of ACL's loss `(L_nat + L_adv) / 2` (not
DynACL's weighting nor AIR's terms, whichever method trains); RD compares clean projections (`normal` branch)
with adversarial ones (`pgd` branch).

Kit choices where the sources are silent or a CPU needs less: SGD with momentum 0.9 in place of LARS; the
warm-up + cosine schedule is stepped per epoch (an RCS epoch has fewer batches); RCS's validation images are
held out of training and un-augmented.
"""

from __future__ import annotations

import copy
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from cropkit.acl.augment import augment, dynacl_strength
from cropkit.acl.losses import AIR_FORMS, AIRForm, acl_loss, air, air_objective, dynacl_weight, nt_xent, sir
from cropkit.acl.rcs import greedy_batch_selection, rd_validation_loss
from cropkit.acl.resnet import ACLModel, Branch, ResNet, RobustEncoder
from cropkit.core import precision
from cropkit.core.checkpoint import cache_key, existing_directory, load_weights, read_json, save_weights, write_json
from cropkit.core.cost import measure
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
    number,
    optional,
    positive,
    radius,
    require,
    text,
)
from cropkit.data import ImageData, load_dataset
from cropkit.eval.ascent import linf_ascent

Method = Literal["acl", "dynacl"]
METHODS = ("acl", "dynacl")
# Bump when a code change alters what training produces for the same config (it keys the cache).
# 2: attack in eval mode, AIR's total unhalved, RCS's selection as in RCS.py; 3: the authors' projection head,
# DynACL's momentum encoder and weight schedule
RECIPE_VERSION = 3
AUTHORS = "authors"  # `ACLConfig.momentum`: what the method's own code does (module docstring)
DYNACL_MOMENTUM = 0.99  # train_DynACL.py's resnet18_momentum(m=0.99)


def authors_momentum(method: Method, air: bool) -> float | None:
    """The key encoder's momentum in the method's own code: 0.99 for DynACL (train_DynACL.py), none for ACL and for
    the AIR variants (AIR's pretraining.py has none)."""
    return DYNACL_MOMENTUM if method == "dynacl" and not air else None


@dataclass(frozen=True)
class RCSConfig:
    """RCS: after `warmup` epochs on all data, every `interval` epochs train on a coreset of `fraction` of it."""

    fraction: float = 0.2
    interval: int = 20
    warmup: int = 100
    validation_fraction: float = 0.01  # held out (unlabeled) for the RD validation gradient
    lr: float = 0.02  # the head's step between picks: RCS.py's Coreset_lr 0.01, which it applies twice per pick
    rd_steps: int = 3  # PGD steps on RD for the validation examples (step 1.25 * eps / rd_steps, as RCS.py)
    normalise: Literal["minmax", "softmax"] = "minmax"  # RD's row normalisation (min-max on CIFAR)

    def __post_init__(self) -> None:
        check_fields(self, fraction=fraction(), interval=integer(1), warmup=integer(0),
                     validation_fraction=fraction(include_one=False), lr=positive, rd_steps=integer(1),
                     normalise=choice(("minmax", "softmax"), "RD normalisation"))


@dataclass(frozen=True)
class ACLConfig:
    """One pre-training run. Defaults are the full-scale settings of docs/methods.md, except the optimiser (module docstring)."""

    method: Method = "acl"
    air: bool = False
    rcs: RCSConfig | None = None
    dataset: str = "cifar10-subset"
    n_train: int | None = None  # a random subset of the training split; None = all of it
    width: int = 64  # 64 with blocks_per_stage 2 is ResNet-18
    blocks_per_stage: int = 2
    epochs: int = 1000
    warmup_epochs: int = 10
    batch_size: int = 512
    lr: float = 0.5
    weight_decay: float = 1e-6
    eps: float = 8 / 255
    attack_steps: int = 5
    attack_step: float | None = None  # None: eps / 4 (2/255 at 8/255)
    tau: float = 0.5
    anneal_interval: int = 50  # DynACL's strength schedule steps every this many epochs
    sir_weight: float = 0.5
    air_weight: float = 0.5
    air_form: AIRForm = "published"  # AIR's regularisers as AIR.py computes them, or "kl" (cropkit.acl.losses)
    momentum: float | str | None = AUTHORS  # the key encoder's m; None: none; "authors": 0.99 for DynACL only
    seed: int = 0

    def __post_init__(self) -> None:
        check_fields(self, method=choice(METHODS, "ACL method"), air=boolean, dataset=text,
                     n_train=optional(integer(2)), width=integer(1), blocks_per_stage=integer(1),
                     epochs=integer(1, why=UNTRAINED), warmup_epochs=integer(0), batch_size=integer(2), lr=positive,
                     weight_decay=non_negative, eps=radius, attack_steps=integer(1), attack_step=optional(positive),
                     tau=positive, anneal_interval=integer(1), sir_weight=non_negative, air_weight=non_negative,
                     air_form=choice(AIR_FORMS, "AIR form"), seed=integer(0))
        if self.momentum == AUTHORS:  # resolved here, so the cache key holds the value that trains
            object.__setattr__(self, "momentum", authors_momentum(self.method, self.air))
        optional(number(at_least=0, below=1, why="the key encoder's moving-average momentum"))(
            "ACLConfig.momentum", self.momentum)
        require(self.rcs is None or isinstance(self.rcs, RCSConfig), "ACLConfig.rcs", self.rcs,
                "not an RCSConfig", "pass RCSConfig(...) or None")
        if self.rcs is not None:
            require(self.rcs.warmup < self.epochs, "RCSConfig.warmup", self.rcs.warmup,
                    f"the RCS warm-up leaves no epoch of the {self.epochs} for a coreset",
                    "pass a warmup smaller than ACLConfig.epochs")

    @property
    def step_size(self) -> float:
        return self.eps / 4 if self.attack_step is None else self.attack_step

    @property
    def name(self) -> str:
        """'ACL', 'DynACL-AIR', 'ACL-RCS (k=0.1)' (the leaderboard's naming); a setting other than the authors'
        is named, e.g. 'DynACL-AIR (true KL)', 'DynACL (no momentum encoder)'."""
        name = {"acl": "ACL", "dynacl": "DynACL"}[self.method] + ("-AIR" if self.air else "")
        name += f"-RCS (k={self.rcs.fraction:g})" if self.rcs is not None else ""
        changes = ["true KL"] if self.air and self.air_form == "kl" else []
        if self.momentum != authors_momentum(self.method, self.air):
            changes.append("no momentum encoder" if self.momentum is None else f"momentum encoder m={self.momentum:g}")
        return name + (f" ({', '.join(changes)})" if changes else "")

    def fields(self) -> dict[str, Any]:
        """Every field as plain JSON-able values (the RCS settings as a dict or None)."""
        return asdict(self)


@dataclass
class TrainedACL:
    model: ACLModel
    config: ACLConfig
    history: list[dict[str, Any]]
    path: Path

    def encoder(self) -> RobustEncoder:
        """A frozen copy of the backbone (`pgd` branch): the foundation model for SLF, ALF and AFF."""
        return RobustEncoder(copy.deepcopy(self.model.backbone), self.config.name)

    @property
    def pretraining_seconds(self) -> float:
        """Wall-clock of all epochs, coreset selection included."""
        return sum(h["seconds"] for h in self.history)

    @property
    def selection_seconds(self) -> float:
        return sum(h["selection_seconds"] for h in self.history)

    @property
    def examples_trained(self) -> int:
        return int(sum(h["examples"] for h in self.history))


def acl_dir(config: ACLConfig, train: ImageData) -> Path:
    """Where the model of `config` is cached: keyed by the config, the recipe and the training images' digest."""
    key = cache_key(config.fields(), recipe=RECIPE_VERSION, data=train.digest())
    return cache_dir() / "acl" / f"{config.method}-{config.dataset}-{key}"


def build_model(config: ACLConfig, train: ImageData) -> ACLModel:
    """A freshly initialised (seeded) model whose input normalisation uses `train`'s channel statistics."""
    images = train.images.float() / 255
    torch.manual_seed(config.seed)
    backbone = ResNet(train.image_shape[0], config.width, config.blocks_per_stage,
                      mean=images.mean(dim=(0, 2, 3)).tolist(), std=images.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())
    return ACLModel(backbone, config.momentum)


@torch.no_grad()
def calibrate_batchnorm(backbone: ResNet, images: Tensor, bn: Branch = "pgd", batch_size: int = 256) -> None:
    """Set branch `bn`'s BatchNorm running statistics to their averages over `images`; no weight changes."""
    norms = [m for m in backbone.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the batches
    backbone.train()
    for x in images.split(batch_size):
        backbone(x, bn=bn)
    backbone.eval()
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum


def untrained_encoder(**settings: Any) -> RobustEncoder:
    """The frozen encoder of `ACLConfig(**settings)` at its seeded initialisation, never pre-trained: the baseline
    that shows how much of a pre-trained encoder's downstream accuracy its pre-training earned. Its BatchNorm
    statistics are measured on the training images, so its features are normalised as a trained encoder's are."""
    config = ACLConfig(**settings)
    train = load_dataset(config.dataset, "train").take(config.n_train, seed=config.seed)
    backbone = build_model(config, train).backbone
    calibrate_batchnorm(backbone, train.tensors()[0])
    return RobustEncoder(backbone, "random init")


def projections(model: ACLModel, x: Tensor, config: ACLConfig, strength: float,
                generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(z_i, z_j, adv_i, adv_j): the projections of two augmentations of `x` (`normal` branch) and of their PGD views
    (`pgd` branch), the second view of each pair through the key encoder where there is one (`ACLModel`). The PGD
    runs with the model in eval mode, as the official `PGD_contrastive` does (ACL's train_simCLR.py, DynACL's
    train_DynACL.py, AIR's pretraining.py), so it moves no running statistic; the four projections are computed in
    the mode the model came in."""
    views = torch.cat([augment(x, strength, generator), augment(x, strength, generator)])
    training = model.training
    model.eval()
    try:
        adversarial = linf_ascent(lambda v: nt_xent(*model(v, bn="pgd", swap=True).chunk(2), tau=config.tau), views,
                                  config.eps,
                                  steps=config.attack_steps, step=config.step_size, generator=generator)
    finally:
        model.train(training)
    z_i, z_j = model(views, bn="normal", swap=True).chunk(2)
    adv_i, adv_j = model(adversarial, bn="pgd", swap=True).chunk(2)
    return z_i, z_j, adv_i, adv_j


def adversarial_weight(config: ACLConfig, epoch: int) -> float:
    """w in `acl_loss` at 1-based `epoch`, as each method's code sets it (module docstring): 0 for ACL; DynACL's
    `(2/3) * (epoch // interval) * interval / epochs`; DynACL-AIR's `(2/3)(1 - s)` at that epoch's strength s."""
    if config.method != "dynacl":
        return 0.0
    if config.air:
        return dynacl_weight(dynacl_strength(epoch, config.epochs, config.anneal_interval))
    stepped = (epoch // config.anneal_interval) * config.anneal_interval / config.epochs  # 1 - s, one epoch early
    return dynacl_weight(1 - stepped)


def training_loss(model: ACLModel, x: Tensor, config: ACLConfig, strength: float, weight: float,
                  generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
    """The loss of `config` on the batch `x` at augmentation strength s and adversarial weight w, and its parts for
    the history."""
    z_i, z_j, adv_i, adv_j = projections(model, x, config, strength, generator)
    natural, robust = nt_xent(z_i, z_j, config.tau), nt_xent(adv_i, adv_j, config.tau)
    parts = {"l_nat": natural.item(), "l_adv": robust.item()}
    if not config.air:
        return acl_loss(natural, robust, weight), parts
    z_o = model(x, bn="normal")  # the un-augmented image
    standard = sir(z_i, z_j, z_o, config.tau, form=config.air_form)
    adversarial_reg = air(adv_i, adv_j, z_i, z_j, z_o, config.tau, form=config.air_form)
    loss = air_objective(natural, robust, weight, standard, adversarial_reg, config.sir_weight, config.air_weight)
    return loss, parts | {"sir": standard.item(), "air": adversarial_reg.item()}


def select_coreset(model: ACLModel, images: Tensor, candidates: Tensor, validation: Tensor, budget: int,
                   config: ACLConfig, strength: float, generator: torch.Generator) -> Tensor:
    """RCS on `candidates` (indices into `images`): the indices of a coreset of exactly `budget` images."""
    rcs = config.rcs
    if rcs is None:
        raise ValueError(f"{config.name} has no RCS settings to select a coreset with")
    batches = [candidates[b] for b in shuffled_batches(len(candidates), config.batch_size, generator) if len(b) >= 2]

    def batch_loss(batch: Tensor) -> Tensor:  # ACL's loss whatever the method, as RCS.py's selection
        z_i, z_j, adv_i, adv_j = projections(model, images[batch.to(images.device)], config, strength, generator)
        return acl_loss(nt_xent(z_i, z_j, config.tau), nt_xent(adv_i, adv_j, config.tau))

    model.eval()  # no running statistic moves during selection
    try:
        return greedy_batch_selection(
            model.head, batches, batch_loss,
            validation_loss=lambda: rd_validation_loss(lambda v: model(v, bn="normal"), lambda v: model(v, bn="pgd"),
                                                       validation, config.eps, steps=rcs.rd_steps,
                                                       normalise=rcs.normalise, generator=generator),
            budget=budget, lr=rcs.lr)
    finally:
        model.train()


def pretrain_acl(method: Method = "acl", *, air: bool = False, rcs: RCSConfig | None = None,
                 device: str | None = None, force: bool = False, progress: bool = True,
                 **settings: Any) -> TrainedACL:
    """Pre-train (or load from the cache) the model of `ACLConfig(method, air, rcs, **settings)`."""
    config = ACLConfig(method=method, air=air, rcs=rcs, **settings)
    train = load_dataset(config.dataset, "train").take(config.n_train, seed=config.seed)
    out = acl_dir(config, train)
    model = build_model(config, train)
    found = existing_directory(out)
    if found is not None and not force:
        saved = load_weights(model, found)
        return TrainedACL(model.eval(), config, saved["history"], found)

    device = precision.resolve_device(device)
    model.to(device).train()
    images = train.tensors(device)[0]  # self-supervised: labels are never read
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(config.seed))
    n_validation = math.ceil(config.rcs.validation_fraction * len(images)) if config.rcs else 0
    validation, candidates = images[order[:n_validation].to(device)], order[n_validation:]
    budget = round(config.rcs.fraction * len(candidates)) if config.rcs else len(candidates)
    if budget < 2:
        raise ValueError(f"{config.name}: a coreset of {budget} of {len(candidates)} images is too small to train on")
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    scheduler = cosine_schedule(optimizer, config.epochs, config.warmup_epochs)  # stepped per epoch
    partial = out.with_name(out.name + ".partial")
    coreset_file = partial.with_name(partial.name + ".coreset.json")  # survives a resume between selections
    training_set = candidates

    def run_epoch(epoch: int) -> dict[str, float]:
        nonlocal training_set
        generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        strength = dynacl_strength(epoch + 1, config.epochs, config.anneal_interval) if config.method == "dynacl" else 1.0
        weight = adversarial_weight(config, epoch + 1)
        selection_seconds = 0.0
        with measure(model, device=device) as cost:  # the selection's FLOPs are part of RCS's cost
            if config.rcs is not None and epoch >= config.rcs.warmup:
                since = (epoch - config.rcs.warmup) % config.rcs.interval
                if since == 0:
                    started = time.perf_counter()
                    training_set = select_coreset(model, images, candidates, validation, budget, config, strength,
                                                  generator)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    selection_seconds = time.perf_counter() - started
                    write_json(coreset_file, {"epoch": epoch, "indices": training_set.tolist()})
                elif training_set is candidates:  # resumed between two selections
                    training_set = torch.tensor(read_json(coreset_file)["indices"])
            means = RunningMeans()
            for batch in shuffled_batches(len(training_set), config.batch_size, generator):
                if len(batch) < 2:  # NT-Xent needs a negative
                    continue
                loss, parts = training_loss(model, images[training_set[batch].to(device)], config, strength, weight,
                                            generator)
                model.update_key()  # before the step, as train_DynACL.py: the key follows the query it was run with
                descend(loss, optimizer, name=config.name, epoch=epoch)
                means.add({"loss": loss.item(), **parts}, len(batch))
        scheduler.step()
        cost.examples = means.count
        return {**means.means(), "strength": strength, "weight": weight, **cost.fields(),
                "selection_seconds": selection_seconds}

    history = resumable_training(partial, model=model, optimizer=optimizer, scheduler=scheduler,
                                 config=config.fields(), epochs=config.epochs, run_epoch=run_epoch,
                                 desc=f"{config.name} on {config.dataset}", progress=progress, restart=force)
    model.cpu().eval()
    save_weights(model, out, {"acl": config.fields(), "history": history})
    shutil.rmtree(partial, ignore_errors=True)
    coreset_file.unlink(missing_ok=True)
    return TrainedACL(model, config, history, out)
