"""`cropkit plan --profile NAME`: what a profile will cost before anything runs (nothing is trained or downloaded).

For every run of every notebook: training and evaluation FLOPs, hours on one H100 at a stated model-FLOPs
utilisation (MFU), peak GPU memory and the download size; then the total. How (kit choices, stated to be checked):
- Each notebook's workload is one function in `WORKLOADS` of the parameters the run will receive, returning its
  jobs (`Job`: `examples` images, each `passes` forward passes of one network). When a notebook changes what it
  runs, change its function; `tests/test_budget.py` times the quick profile against its estimate.
- A forward pass's FLOPs: `cost.vit_forward_flops` (closed form) for the foundation model, the kit's own
  modules counted on the meta device (shapes only) for the auto-encoders and the ResNet.
- Passes per example: closed form (a backward is 2 forward passes, an input-only gradient 1), and measured:
  the kit's step functions run under `cost.FlopCounter` on the real auto-encoder (2 images) and on a tiny ViT
  pipeline or ResNet for attack, fine-tuning and ACL steps (a ViT's pass counts do not depend on its size).
  The table's FLOPs are the closed form; `meas/closed` is the measured total over it.
- Attacks are costed on every example (`evaluate` attacks only the clean-correct ones: an upper bound); AutoAttack's
  later components run on the examples that survive APGD-CE, assumed `SURVIVING` of them.
- Hours: FLOPs / (peak x MFU), H100 SXM dense peaks (`PEAK_FLOPS`): bf16 for the code under autocast, TF32 for
  fp32 convolutions (cuDNN's default), fp32 for fp32 matrix products (PyTorch leaves TF32 off): the bound's
  terms, ACL and MAE pre-training run without autocast. Plus `RUN_OVERHEAD_S` per notebook run.
- Work the kit caches (pre-processors, fine-tuned models, ACL encoders, the embedded foundation model) is counted
  once, in the first run that trains it; `respect_cache=True` also drops what the cache already holds.
- The linear heads are fitted by L-BFGS on the host's CPU (`HOST_FLOPS`, `HEAD_EVALUATIONS`); their hours are
  in the total, since the notebook waits for them.
- Peak memory: the largest job's weights (4 bytes per parameter), its trained parameters' gradients and AdamW
  states (12 bytes each) and, where it differentiates through a network, the batch's activations (every leaf
  module's output, counted on the meta device; 2 bytes each under bf16, 4 under fp32).
"""

from __future__ import annotations

import ast
import json
import math
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from cropkit.attacks import ORIGINAL_TARGET_CLASSES, AttackSpec, pgd
from cropkit.cost import FlopCounter, vit_forward_flops
from cropkit.models.autoencoder import VIT_SIZES
from cropkit.paths import resolve

Precision = Literal["bf16", "tf32", "fp32", "host"]
# H100 SXM dense peaks (FLOP/s): bf16 tensor cores, TF32 tensor cores, fp32 without tensor cores.
PEAK_FLOPS: dict[str, float] = {"bf16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12}
MFU = 0.35
# The linear heads are fitted by L-BFGS on the CPU (`heads.train_linear_head`): the host's achieved fp32 FLOP/s on
# those products (an assumption: a GPU server's cores), and the evaluations per fit (measured: 955 for the six fits
# of the MNIST-5k pixel probe, so about 160 each; convergence varies with the data).
HOST_FLOPS = 5e11
HEAD_EVALUATIONS = 160
RUN_OVERHEAD_S = 15.0  # per notebook run: kernel start, imports, data loading (measured on the 2-core CPU: 10-20 s)
SURVIVING = {"identity": 0.03, "defended": 0.3}  # fraction left after APGD-CE (Identity: the paper's 2-3%)
MONITOR_SIZE = 512  # cropkit.train.MONITOR_SIZE: test images tracked every pre-processor epoch


# --------------------------------------------------------------------------------------------------------------
# Facts: datasets and foundation models, offline.
@dataclass(frozen=True)
class DatasetFacts:
    train: int
    test: int
    image_size: int
    channels: int
    classes: int
    download_bytes: int
    source: str  # what is downloaded (shared between class subsets of one dataset)


DATASETS: dict[str, DatasetFacts] = {
    "mnist5k": DatasetFacts(4000, 1000, 28, 1, 10, 0, "mnist5k (embedded)"),
    "digits": DatasetFacts(1437, 360, 28, 1, 10, 0, "digits (embedded)"),
    "cifar10-subset": DatasetFacts(10000, 2000, 32, 3, 10, 0, "shared cifar10_subset.npz"),
    "cifar10": DatasetFacts(50000, 10000, 32, 3, 10, 170_498_071, "cifar-10-python.tar.gz"),
    "cifar100": DatasetFacts(50000, 10000, 32, 3, 100, 169_001_437, "cifar-100-python.tar.gz"),
    "svhn": DatasetFacts(73257, 26032, 32, 3, 10, 182_040_794 + 64_275_384, "SVHN {train,test}_32x32.mat"),
    "stl10": DatasetFacts(5000, 8000, 96, 3, 10, 2_640_397_119, "stl10_binary.tar.gz"),
    "imagenette": DatasetFacts(9469, 3925, 160, 3, 10, 99_003_388, "imagenette2-160.tgz"),
    "tiny-imagenet": DatasetFacts(100000, 10000, 64, 3, 200, 248_100_043, "tiny-imagenet-200.zip"),
}


def dataset_facts(name: str) -> DatasetFacts:
    """Sizes of a dataset name as `load_dataset` reads it (class subsets `name[a,b]` and `cifar2` included)."""
    from cropkit.data import _ALIASES

    keep = None
    if name.endswith("]") and "[" in name:
        name, listed = name[:-1].split("[", 1)
        keep = len([c for c in listed.split(",") if c.strip()])
    if name in _ALIASES:
        name, default = _ALIASES[name]
        keep = keep or len(default)
    if name.endswith(".npz"):
        import numpy as np

        with np.load(resolve(name), mmap_mode="r") as archive:
            x = archive["x_train"]
            facts = DatasetFacts(len(x), len(archive["x_test"]), x.shape[1], x.shape[3], len(archive["classes"]), 0, name)
    elif name in DATASETS:
        facts = DATASETS[name]
    else:
        raise ValueError(f"The plan knows no sizes for dataset {name!r}; add them to cropkit.budget.DATASETS")
    if keep is None:
        return facts
    share = keep / facts.classes
    return replace(facts, train=round(facts.train * share), test=round(facts.test * share), classes=keep)


@dataclass(frozen=True)
class FoundationFacts:
    name: str
    config: dict[str, Any]  # ViTMAEConfig fields
    download_bytes: int
    pretraining: Any = None  # the MAEConfig of an embedded model (trained by the kit), else None


# The hub checkpoints' architectures (their config.json), so that the plan needs no network.
HUB_VIT_MAE: dict[str, dict[str, Any]] = {
    "facebook/vit-mae-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                  intermediate_size=3072, image_size=224, patch_size=16),
    "facebook/vit-mae-large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                   intermediate_size=4096, image_size=224, patch_size=16),
    "facebook/vit-mae-huge": dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16,
                                  intermediate_size=5120, image_size=224, patch_size=14),
}


def foundation_facts(spec: str, channels: int = 3) -> FoundationFacts:
    """The architecture of the `foundation` parameter: `embedded[:dataset]`, a known hub id or a local folder."""
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    if spec == "embedded" or spec.startswith("embedded:"):
        from cropkit.pretrain import PRESETS

        config = PRESETS[spec.partition(":")[2] or "mnist5k"]
        vit = config.vit_config(dataset_facts(config.dataset).channels)
        return FoundationFacts(spec, vit.to_dict(), 0, config)
    folder = resolve(spec)
    if (folder / "config.json").is_file():
        return FoundationFacts(spec, json.loads((folder / "config.json").read_text()), 0)
    if spec in HUB_VIT_MAE:
        with torch.device("meta"):
            full = ViTMAEForPreTraining(ViTMAEConfig(**HUB_VIT_MAE[spec]))
        return FoundationFacts(spec, HUB_VIT_MAE[spec] | {"num_channels": 3},
                               4 * sum(p.numel() for p in full.parameters()))
    raise ValueError(f"The plan knows no architecture for foundation {spec!r}: use a folder with config.json, "
                     f"'embedded[:dataset]' or one of {sorted(HUB_VIT_MAE)}")


# --------------------------------------------------------------------------------------------------------------
# Networks: forward FLOPs, parameters and activations per example, from the meta device.
@dataclass(frozen=True)
class Network:
    name: str
    forward_flops: float  # one example
    parameters: int
    activations: float  # leaf-module output elements of one example's forward
    encoder_share: float = 1.0  # an auto-encoder's `latent` over its whole forward
    feature_dim: int = 0  # the features a linear head reads (foundation models)

    def __add__(self, other: Network) -> Network:
        """A stack: `self` in front of `other` (whose features the head reads)."""
        return Network(f"{self.name} + {other.name}", self.forward_flops + other.forward_flops,
                       self.parameters + other.parameters, self.activations + other.activations,
                       feature_dim=other.feature_dim)


def _count(module: nn.Module, example: torch.Tensor, call: Callable[[torch.Tensor], Any] | None = None) -> tuple[float, float]:
    """(FLOPs, leaf-module output elements) of one forward of a meta-device module on one example."""
    outputs = [0.0]

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        outputs[0] += out.numel() if isinstance(out, torch.Tensor) else 0

    leaves = [m.register_forward_hook(hook) for m in module.modules() if not list(m.children())]
    counter = FlopCounter()
    try:
        with counter:
            (call or module)(example)
    finally:
        for handle in leaves:
            handle.remove()
    return float(counter.get_total_flops()), outputs[0]


@cache
def foundation_network(spec: str, image_size: int, channels: int, pooling: str = "mean") -> Network:
    """The foundation model on `image_size` inputs: closed-form forward FLOPs, meta-counted activations."""
    from transformers import ViTMAEConfig, ViTMAEModel

    from cropkit.models.foundation import FoundationModel

    facts = foundation_facts(spec, channels)
    config = ViTMAEConfig(**facts.config)
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = FoundationModel(ViTMAEModel(config), [0.5] * config.num_channels, [0.5] * config.num_channels, pooling)
        _, activations = _count(model, torch.empty(1, channels, image_size, image_size))
    flops = vit_forward_flops(image_size=config.image_size, patch_size=config.patch_size,
                              hidden_size=config.hidden_size, num_layers=config.num_hidden_layers,
                              intermediate_size=config.intermediate_size, num_channels=config.num_channels)
    return Network(spec, flops, sum(p.numel() for p in model.parameters()), activations,
                   feature_dim=model.feature_dim)


@cache
def autoencoder_network(architecture: str, channels: int, image_size: int, width: int = 16,
                        latent_channels: int = 64) -> Network:
    from cropkit.models.autoencoder import build_autoencoder

    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = build_autoencoder(architecture, channels, image_size, width, latent_channels)
        example = torch.empty(1, channels, image_size, image_size)
        flops, activations = _count(model, example)
        encoder, _ = _count(model, example, model.latent)
    return Network(f"{architecture} AE", flops, sum(p.numel() for p in model.parameters()), activations,
                   encoder / flops)


@cache
def resnet_network(channels: int, image_size: int, width: int, blocks_per_stage: int) -> Network:
    from cropkit.models.resnet import ResNet

    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = ResNet(channels, width, blocks_per_stage, mean=[0.5] * channels, std=[0.5] * channels)
        flops, activations = _count(model, torch.empty(1, channels, image_size, image_size), lambda x: model(x, "pgd"))
    return Network(f"ResNet (width {width})", flops, sum(p.numel() for p in model.parameters()), activations,
                   feature_dim=model.feature_dim)


@cache
def mae_pretraining_network(config: Any, channels: int) -> Network:
    """One MAE pre-training forward (75% of the patches masked, the decoder on all) of an embedded model."""
    from cropkit.pretrain import build_mae

    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = build_mae(config, channels)
        size = config.image_size
        flops, activations = _count(model, torch.empty(1, channels, size, size), lambda x: model(pixel_values=x).loss)
    return Network(f"MAE pre-training ({config.dataset})", flops, sum(p.numel() for p in model.parameters()), activations)


# --------------------------------------------------------------------------------------------------------------
# Passes per example: closed form, and measured with the kit's own step functions.
def attack_passes(spec: AttackSpec, n_classes: int, surviving: float) -> float:
    """Forward passes per attacked example (a forward plus an input gradient = 2), closed form."""
    k = spec.steps
    if spec.kind == "fgsm":
        return 2.0
    if spec.kind == "pgd":
        return spec.restarts * 2 * k + (spec.restarts - 1)
    apgd_ce = 2 * (k + 1)
    if spec.kind == "apgd-ce":
        return apgd_ce
    if spec.kind == "apgd":  # torchattacks' APGD-T: every other class
        return apgd_ce + surviving * (n_classes - 1) * 2 * (k + 1)
    steps, targets = (10, n_classes - 1) if spec.kind == "autoattack" else (100, min(ORIGINAL_TARGET_CLASSES, n_classes - 1))
    apgd_t, fab_t, square = targets * 2 * (steps + 1), targets * (3 * steps + 2), 5000
    return 2 * (steps + 1) + surviving * (apgd_t + fab_t + square)


def _tiny_pipeline(channels: int = 3, n_classes: int = 10) -> nn.Module:
    """A small random ViT-MAE pipeline whose pass counts stand for any ViT's."""
    from transformers import ViTMAEConfig, ViTMAEModel

    from cropkit.heads import LinearHead
    from cropkit.models import FoundationModel, Pipeline

    config = ViTMAEConfig(image_size=16, patch_size=4, num_channels=channels, hidden_size=32, num_hidden_layers=1,
                          num_attention_heads=2, intermediate_size=64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        foundation = FoundationModel(ViTMAEModel(config), [0.5] * channels, [0.5] * channels)
        return Pipeline(None, foundation, LinearHead(32, n_classes))


_MEASURED_SOURCES = ("acl.py", "attacks.py", "augment.py", "contrastive.py", "finetune.py", "losses.py", "train.py",
                     "models/autoencoder.py", "models/foundation.py", "models/resnet.py")


@cache
def _measurements_file() -> Path:
    """Where measured pass counts are kept: the cache, under a hash of the code they measure and its libraries,
    so that a change to a step function is measured afresh (counting takes seconds to minutes on a CPU)."""
    import hashlib

    import torchattacks

    from cropkit.paths import cache_dir

    digest = hashlib.sha256(f"{torch.__version__} {torchattacks.__version__}".encode())
    package = Path(__file__).parent
    for name in _MEASURED_SOURCES:
        digest.update((package / name).read_bytes())
    return cache_dir() / "budget" / f"measured-passes-{digest.hexdigest()[:12]}.json"


def _persistent(function: Callable[..., Any]) -> Callable[..., Any]:
    """Memoise a measurement in `_measurements_file()` (JSON, keyed by the function's name and arguments)."""
    from cropkit.checkpoint import read_json, write_json

    @cache
    def wrapper(*args: Any) -> Any:
        path, key = _measurements_file(), f"{function.__name__}{list(args)}"
        known = read_json(path) if path.is_file() else {}
        if key not in known:
            known = (read_json(path) if path.is_file() else {}) | {key: function(*args)}
            write_json(path, known)
        return known[key]

    return wrapper


def _flops(call: Callable[[], Any]) -> float:
    counter = FlopCounter()
    with torch.random.fork_rng(devices=[]), counter:
        call()
    return float(counter.get_total_flops())


def _linear_in_steps(passes_at: Callable[[int], float]) -> tuple[float, float]:
    """(passes at 0 steps, passes per step) of a loop measured at 1 and 2 steps (the kit's loops are linear)."""
    one, two = passes_at(1), passes_at(2)
    return one - (two - one), two - one


@_persistent
def _attack_fit(kind: str) -> tuple[float, float]:
    pipeline, x = _tiny_pipeline(), torch.rand(2, 3, 16, 16)
    forward = _flops(lambda: pipeline(x))
    with torch.no_grad():
        y = pipeline(x).argmax(dim=1)  # APGD attacks only the examples classified correctly

    def at(steps: int) -> float:
        attack = AttackSpec(kind, 8 / 255, steps=steps).build(pipeline, n_classes=10, seed=0)
        return _flops(lambda: attack(x, y)) / forward

    return _linear_in_steps(at)


def measured_attack_passes(kind: str, steps: int) -> float:
    """Forward passes per example of one PGD or APGD-CE attack (`AttackSpec.build`), measured on a tiny ViT."""
    base, per_step = _attack_fit(kind)
    return base + per_step * steps


def finetune_passes(method: str, steps: int) -> float:
    """Forward passes of the foundation model per fine-tuning example, closed form (`finetune.finetune_loss`)."""
    extra = {"aft": 3, "tecoa": 3, "pmg-aft": 7, "trades": 10}[method]  # PMG-AFT: guide + clean; TRADES: 3 clean
    return 2 * steps + extra


@_persistent
def _finetune_fit(method: str) -> tuple[float, float]:
    import copy

    from cropkit.finetune import FinetuneConfig, finetune_loss, unfreeze

    start, x, y = _tiny_pipeline(), torch.rand(2, 3, 16, 16), torch.arange(2)
    forward = _flops(lambda: start(x))

    def at(steps: int) -> float:
        model, config = copy.deepcopy(start), FinetuneConfig(method=method, eps=8 / 255, attack_steps=steps)
        unfreeze(model, config)
        return _flops(lambda: finetune_loss(model, start, config, x, y)[0].backward()) / forward

    return _linear_in_steps(at)


def measured_finetune_passes(method: str, steps: int) -> float:
    """`finetune_loss` and its backward on a tiny ViT pipeline, counted, over one forward."""
    base, per_step = _finetune_fit(method)
    return base + per_step * steps


def preprocessor_passes(kind: str, encoder_share: float) -> float:
    """Forward passes of the auto-encoder per training example (`train.preprocessor_loss`), closed form: the
    reconstruction's forward and backward (3), and for CRoPD the latents of x and x_adv with their backward and
    FGSM's forward and input gradient through the encoder (8 encoder passes); adversarial denoising adds FGSM
    through the whole auto-encoder (2)."""
    return {"recon": 3.0, "adv-recon": 5.0, "cropd": 3.0 + 8.0 * encoder_share}[kind]


@_persistent
def measured_preprocessor_passes(kind: str, architecture: str, channels: int, image_size: int, width: int,
                                 latent_channels: int) -> float:
    """`preprocessor_loss` and its backward on 2 images of the real auto-encoder, counted, over one forward."""
    from cropkit.models.autoencoder import build_autoencoder
    from cropkit.train import PreprocessorConfig, preprocessor_loss

    with torch.random.fork_rng(devices=[]):
        model = build_autoencoder(architecture, channels, image_size, width, latent_channels)
    config = PreprocessorConfig(kind=kind, lam=1.0 if kind == "cropd" else 0.0, architecture=architecture,
                                width=width, latent_channels=latent_channels, eps=8 / 255)
    x, y = torch.rand(2, channels, image_size, image_size), torch.arange(2)
    with torch.no_grad():
        forward = _flops(lambda: model(x))
    return _flops(lambda: preprocessor_loss(model, config, x, y)[0].backward()) / forward


def acl_passes(attack_steps: int, air: bool) -> float:
    """ResNet forward passes per ACL example (`acl.training_loss`): two views attacked (forward + input gradient
    per step), both views through both BatchNorm branches with the backward; AIR adds the un-augmented image."""
    return 2 * (2 * attack_steps) + 12 + (3 if air else 0)


@_persistent
def _acl_fit(air: bool) -> tuple[float, float]:
    from cropkit.acl import ACLConfig, training_loss
    from cropkit.models.resnet import ACLModel, ResNet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = ACLModel(ResNet(3, 4, 1, mean=[0.5] * 3, std=[0.5] * 3))
    x = torch.rand(4, 3, 16, 16)
    forward = _flops(lambda: model(x, "pgd"))

    def at(steps: int) -> float:
        config = ACLConfig(air=air, attack_steps=steps, epochs=2, warmup_epochs=1)
        generator = torch.Generator().manual_seed(0)
        return _flops(lambda: training_loss(model, x, config, 1.0, generator)[0].backward()) / forward

    return _linear_in_steps(at)


def measured_acl_passes(attack_steps: int, air: bool) -> float:
    """`acl.training_loss` and its backward on a tiny ResNet, counted, over one forward of the batch."""
    base, per_step = _acl_fit(air)
    return base + per_step * attack_steps


# --------------------------------------------------------------------------------------------------------------
# Jobs and a notebook's workload.
@dataclass(frozen=True)
class Job:
    """`examples` images, each `passes` forward passes of `network` (closed form; `measured` when counted)."""

    what: str
    column: Literal["train", "eval"]
    network: Network
    examples: float
    passes: float
    precision: Precision
    batch: int
    backward: bool = True  # differentiates through `network` (its activations are kept)
    trained: int = 0  # parameters trained with AdamW
    measured: float | None = None
    key: Hashable | None = None  # a cached artifact's identity: trained once per profile

    @property
    def flops(self) -> float:
        return self.examples * self.passes * self.network.forward_flops

    @property
    def measured_flops(self) -> float:
        return self.examples * (self.measured if self.measured is not None else self.passes) * self.network.forward_flops

    def seconds(self, mfu: float, throughput: float | None = None) -> float:
        if throughput is None:
            throughput = HOST_FLOPS if self.precision == "host" else PEAK_FLOPS[self.precision] * mfu
        return self.flops / throughput

    def memory_bytes(self) -> float:
        if self.precision == "host":
            return 0.0  # not on the GPU
        bytes_per = 2 if self.precision == "bf16" else 4
        kept = self.batch * self.network.activations * bytes_per if self.backward else 0.0
        return 4 * self.network.parameters + 12 * self.trained + kept


class Workload:
    """What one run computes, built by a notebook's function from its parameters."""

    def __init__(self, params: Mapping[str, Any], measure: bool = True) -> None:
        self.p = dict(params)
        self.measure = measure
        self.jobs: list[Job] = []
        self.datasets: set[str] = set()
        self.foundations: set[str] = set()

    # -- the pieces the notebooks share ---------------------------------------------------------------------
    def data(self, name: str) -> DatasetFacts:
        self.datasets.add(name)
        return dataset_facts(name)

    def foundation(self, dataset: str) -> Network:
        spec, d = self.p["foundation"], self.data(dataset)
        facts = foundation_facts(spec, d.channels)
        self.foundations.add(spec)
        if facts.pretraining is not None:
            pre = facts.pretraining
            pre_data = dataset_facts(pre.dataset)
            self.add(f"MAE pre-training of {spec}", "train", mae_pretraining_network(pre, pre_data.channels),
                     pre.epochs * pre_data.train, 3.0, "fp32", pre.batch_size,
                     trained=foundation_network(spec, d.image_size, d.channels).parameters, key=pre)
        return foundation_network(spec, d.image_size, d.channels, self.p.get("pooling", "mean"))

    def add(self, what: str, column: Literal["train", "eval"], network: Network, examples: float, passes: float,
            precision: Precision, batch: int, **fields: Any) -> None:
        if examples > 0:
            self.jobs.append(Job(what, column, network, examples, passes, precision, batch, **fields))

    def measured(self, function: Callable[..., float], *args: Any, plus: float = 0.0) -> float | None:
        """`function(*args) + plus` when this plan measures pass counts, else None (closed form only)."""
        return function(*args) + plus if self.measure else None

    def preprocessor(self, config: Any) -> Network:
        """Train `config` (a `PreprocessorConfig`) as `train_preprocessor` does; return its network."""
        d = self.data(config.dataset)
        ae = autoencoder_network(config.architecture, d.channels, d.image_size, config.width, config.latent_channels)
        # The sized ViTs always see 8 x 8 patches: their pass counts at 32x32 are those at any resolution.
        size = 32 if config.architecture in VIT_SIZES else d.image_size
        measured = self.measured(measured_preprocessor_passes, config.kind, config.architecture, d.channels, size,
                                 config.width, config.latent_channels)
        self.add(f"train {config.name} ({config.architecture})", "train", ae, config.epochs * d.train,
                 preprocessor_passes(config.kind, ae.encoder_share), "bf16", config.batch_size,
                 trained=ae.parameters, measured=measured, key=config)
        self.add(f"monitor {config.name}", "train", ae, config.epochs * min(MONITOR_SIZE, d.test),
                 1 + 5 * ae.encoder_share, "bf16", MONITOR_SIZE, key=config)
        return ae

    def slf(self, stack: Network, dataset: str, n: int | None = None) -> None:
        """`fit_slf`: features of the clean training set through the frozen stack, then the linear head."""
        n = n or self.data(dataset).train
        self.add(f"SLF features ({stack.name})", "train", stack, n, 1.0, "bf16", 256, backward=False)
        self.head(n, stack.feature_dim, self.data(dataset).classes)

    def head(self, n: int, features: int, classes: int) -> None:
        """`train_linear_head` on the CPU: a fit per weight decay on 80% of the data, a refit on all of it, each
        `HEAD_EVALUATIONS` forward and backward passes (3 x 2 x features x classes FLOPs per example)."""
        from cropkit.heads import WEIGHT_DECAYS

        linear = Network("linear head", 2.0 * features * classes, features * classes, 0.0)
        fits = 0.8 * len(WEIGHT_DECAYS) + 1
        self.add(f"linear head ({features} features, {classes} classes)", "train", linear, n,
                 3 * HEAD_EVALUATIONS * fits, "host", n, backward=False)

    def evaluate(self, stack: Network, n: int, attacks: Iterable[AttackSpec], classes: int, role: str) -> None:
        """`evaluate(...)` (bf16 autocast): a clean pass, then each attack and a prediction of its examples."""
        attacks = list(attacks)
        for spec in attacks:
            spec.check_classes(classes)
        self.add(f"clean pass ({stack.name})", "eval", stack, n, 1.0, "bf16", 256, backward=False)
        for spec in attacks:
            measured = (self.measured(measured_attack_passes, spec.kind, spec.steps, plus=1.0)
                        if spec.kind in ("pgd", "apgd-ce") and spec.restarts == 1 else None)
            self.add(f"{spec.label} ({stack.name})", "eval", stack, n, attack_passes(spec, classes, SURVIVING[role]) + 1,
                     "bf16", 256, measured=measured)

    def alf(self, stack: Network, n: int, epochs: int, steps: int) -> None:
        """`fit_alf`: PGD through the whole pipeline for every example, then the head's step."""
        self.add(f"ALF PGD-{steps} ({stack.name})", "train", stack, epochs * n, 2 * steps + 1, "bf16", 128,
                 measured=self.measured(measured_attack_passes, "pgd", steps, plus=1.0))

    def finetune(self, stack: Network, config: Any, n: int, start: Hashable) -> None:
        self.add(f"fine-tune {config.name}", "train", stack, config.epochs * n,
                 finetune_passes(config.method, config.attack_steps), "bf16", config.batch_size,
                 trained=stack.parameters, measured=self.measured(measured_finetune_passes, config.method,
                                                                  config.attack_steps),
                 key=(config, start))

    def n(self, key: str, dataset: str) -> int:
        """A notebook's example count parameter (None: the whole test split)."""
        value, test = self.p.get(key), self.data(dataset).test
        return test if value is None else min(int(value), test)


def strong(p: Mapping[str, Any], key: str = "strong_attack") -> AttackSpec:
    return AttackSpec(p[key], p["eps"], steps=p.get("strong_steps", 10))


# --------------------------------------------------------------------------------------------------------------
# One function per notebook: what it runs, as a function of its parameters (keep in step with the notebook).
def _ae_config(p: Mapping[str, Any], **fields: Any) -> Any:
    from cropkit.train import PreprocessorConfig

    return PreprocessorConfig(**({"dataset": p.get("dataset"), "eps": p["eps"], "seed": p["seed"]} | fields))


def nb00(w: Workload) -> None:
    p, d = w.p, w.data(w.p["dataset"])
    fm = w.foundation(p["dataset"])
    w.add("probe features (train + test)", "train", fm, d.train + d.test, 1.0, "bf16", 256, backward=False)
    w.head(d.train, fm.feature_dim, d.classes)
    w.head(d.train, d.channels * d.image_size**2, d.classes)  # the same head on raw pixels
    n = w.n("n_eval", p["dataset"])
    w.evaluate(fm, d.test, [], d.classes, "identity")  # the probe's accuracy check
    w.evaluate(fm, n, [pgd(p["eps"], 10), pgd(p["eps"], 20), AttackSpec(p["autoattack"], p["eps"])], d.classes, "identity")
    w.evaluate(fm, n, [pgd(e, 10) for e in p["eps_grid"]], d.classes, "identity")


def _bound_family(w: Workload, epochs: list[int]) -> list[Any]:
    p = w.p
    from cropkit.train import PreprocessorConfig

    common = dict(dataset=p["dataset"], eps=p["eps"], architecture=p["architecture"], seed=p["seed"])
    configs = [PreprocessorConfig.for_lambda(lam, epochs=p["ae_epochs"], **common) for lam in p["lambdas"]]
    return configs + [PreprocessorConfig.for_lambda(1.0, epochs=e, **common) for e in epochs]


def nb01(w: Workload) -> None:
    p, d = w.p, w.data(w.p["dataset"])
    fm, n = w.foundation(p["dataset"]), w.n("n_eval", p["dataset"])
    for config in _bound_family(w, p["short_epochs"]):
        ae = w.preprocessor(config)
        w.slf(ae + fm, p["dataset"])
        w.add(f"bound: CE PGD-{p['ce_steps']} x{p['restarts']} ({config.name})", "eval", ae + fm, n,
              1 + p["restarts"] * (2 * p["ce_steps"] + 1), "fp32", 128)
        w.add(f"bound: L_con FGSM and PGD-{p['con_steps']} ({config.name})", "eval", ae, n,
              ae.encoder_share * (1 + 3 + 2 * p["con_steps"] + 2), "fp32", 128)


def nb02(w: Workload) -> None:
    p, d = w.p, w.data(w.p["dataset"])
    fm = w.foundation(p["dataset"])
    common = dict(architecture=p["architecture"], epochs=p["ae_epochs"])
    configs = [_ae_config(p, kind="recon", lam=0.0, **common), _ae_config(p, kind="adv-recon", lam=0.0, **common),
               _ae_config(p, kind="cropd", lam=p["lam"], **common)]
    stacks = [(fm, "identity")]
    for config in configs:
        ae = w.preprocessor(config)
        w.add(f"PSNR ({config.name})", "eval", ae, d.test, 1.0, "bf16", 512, backward=False)
        stacks.append((ae + fm, "defended"))
    n, n_strong = w.n("n_eval", p["dataset"]), w.n("n_strong", p["dataset"])
    for stack, role in stacks:
        w.slf(stack, p["dataset"])
        w.alf(stack, min(p["n_alf_train"], d.train), p["alf_epochs"], p["alf_steps"])
        for _protocol in ("SLF", "ALF"):
            w.evaluate(stack, n, [pgd(p["eps"], 10), pgd(p["eps"], 20)], d.classes, role)
            w.evaluate(stack, n_strong, [strong(p)], d.classes, role)


def nb03(w: Workload) -> None:
    p, d = w.p, w.data(w.p["dataset"])
    fm, n = w.foundation(p["dataset"]), w.n("n_eval", p["dataset"])
    from cropkit.train import PreprocessorConfig

    for lam in p["lambdas"]:
        config = PreprocessorConfig.for_lambda(lam, dataset=p["dataset"], eps=p["eps"], tau=p["tau"],
                                               architecture=p["architecture"], epochs=p["ae_epochs"], seed=p["seed"])
        ae = w.preprocessor(config)
        w.slf(ae + fm, p["dataset"])
        w.evaluate(ae + fm, n, [pgd(p["eps"], 10)], d.classes, "defended")
        w.add(f"PSNR and L_con ({config.name})", "eval", ae, n, 1 + 5 * ae.encoder_share, "bf16", 256)


def nb04(w: Workload) -> None:
    p = w.p
    names = p["datasets"]
    fm = w.foundation(names[0])
    aes = {name: w.preprocessor(_ae_config(p, kind="cropd", lam=p["lam"], dataset=name,
                                           architecture=p["architecture"], epochs=p["ae_epochs"])) for name in names}
    for target in names:
        d, n = w.data(target), w.n("n_eval", target)
        for source in [None, *names]:
            stack = fm if source is None else aes[source] + fm
            w.slf(stack, target)
            w.evaluate(stack, n, [pgd(p["eps"], 10)], d.classes, "identity" if source is None else "defended")


def nb05(w: Workload) -> None:
    from cropkit.acl import ACLConfig, RCSConfig
    from cropkit.finetune import FinetuneConfig

    p, d = w.p, w.data(w.p["dataset"])
    n_pre = min(p["n_pretrain"] or d.train, d.train)
    n_down = min(p["n_downstream"] or d.train, d.train)
    n, hard = w.n("n_eval", p["dataset"]), strong(p)
    resnet = resnet_network(d.channels, d.image_size, p["width"], p["blocks_per_stage"])
    common = dict(dataset=p["dataset"], n_train=p["n_pretrain"], width=p["width"], blocks_per_stage=p["blocks_per_stage"],
                  epochs=p["epochs"], warmup_epochs=p["lr_warmup_epochs"], batch_size=p["batch_size"], eps=p["eps"],
                  attack_steps=p["attack_steps"], anneal_interval=p["anneal_interval"], seed=p["seed"])
    variants = [ACLConfig(method="acl", **common)]
    variants += [ACLConfig(method="acl", rcs=RCSConfig(k, interval=p["rcs_interval"], warmup=p["rcs_warmup"]), **common)
                 for k in p["rcs_fractions"]]
    variants += [ACLConfig(method="acl", air=True, **common), ACLConfig(method="dynacl", **common),
                 ACLConfig(method="dynacl", air=True, **common)]
    aff = FinetuneConfig(method="trades", eps=p["eps"], attack_steps=p["aff_attack_steps"], epochs=p["aff_epochs"],
                         lr=p["aff_lr"], n_train=p["n_aff_train"], seed=p["seed"])
    w.add("random-init BatchNorm calibration", "train", resnet, n_pre, 1.0, "tf32", 256, backward=False)
    w.slf(resnet, p["dataset"], n_down)
    w.evaluate(resnet, n, [pgd(p["eps"], 20), hard], d.classes, "defended")
    for config in variants:
        passes = acl_passes(config.attack_steps, config.air)
        measured = w.measured(measured_acl_passes, config.attack_steps, config.air)
        examples = config.epochs * n_pre
        if config.rcs is not None:
            core = config.epochs - config.rcs.warmup
            selections = math.ceil(core / config.rcs.interval)
            examples = n_pre * (config.rcs.warmup + selections) + config.rcs.fraction * n_pre * core
        w.add(f"pre-train {config.name}", "train", resnet, examples, passes, "tf32", config.batch_size,
              trained=resnet.parameters, measured=measured, key=config)
        w.slf(resnet, p["dataset"], n_down)
        w.alf(resnet, min(p["n_alf_train"], n_down), p["alf_epochs"], 10)
        w.add(f"AFF {aff.name} ({config.name})", "train", resnet, aff.epochs * min(aff.n_train or n_down, n_down),
              finetune_passes("trades", aff.attack_steps), "bf16", aff.batch_size, trained=resnet.parameters,
              measured=w.measured(measured_finetune_passes, "trades", aff.attack_steps))
        for _protocol in ("SLF", "ALF", "AFF"):
            w.evaluate(resnet, n, [pgd(p["eps"], 20), hard], d.classes, "defended")
    ae = w.preprocessor(_ae_config(p, kind="cropd", lam=1.0))
    fm = w.foundation(p["dataset"])
    w.slf(ae + fm, p["dataset"], n_down)
    w.evaluate(ae + fm, n, [pgd(p["eps"], 20), hard], d.classes, "defended")


def _finetune_configs(p: Mapping[str, Any]) -> list[Any]:
    from cropkit.finetune import FinetuneConfig

    return [FinetuneConfig(method=m, eps=p["eps"], attack_steps=p["ft_steps"], epochs=p["ft_epochs"], lr=p["ft_lr"],
                           last_blocks=p["last_blocks"], n_train=p["n_ft_train"], seed=p["seed"]) for m in p["methods"]]


def _finetune_models(w: Workload) -> tuple[Network, Network, list[Any]]:
    """What notebooks 06 and 07 share: the conv CRoPD, the probe, the two SLF fits and the fine-tuned models."""
    p, d = w.p, w.data(w.p["dataset"])
    ae = w.preprocessor(_ae_config(p, kind="cropd", lam=p["lam"], epochs=p["ae_epochs"]))
    fm = w.foundation(p["dataset"])
    w.slf(fm, p["dataset"])
    w.slf(ae + fm, p["dataset"])
    configs = _finetune_configs(p)
    for config in configs:
        w.finetune(fm, config, min(config.n_train or d.train, d.train), (p["foundation"], p.get("pooling"), p["dataset"]))
    return ae, fm, configs


def nb06(w: Workload) -> None:
    p, d = w.p, w.data(w.p["dataset"])
    if p.get("clip_model"):
        raise ValueError("the plan does not model CLIP (clip_model); it covers the ViT-MAE setting")
    ae, fm, configs = _finetune_models(w)
    models = [(fm, "identity"), (ae + fm, "defended")] + [(fm, "defended")] * len(configs)
    for stack, role in models:
        w.evaluate(stack, w.n("n_eval", p["dataset"]), [pgd(p["eps"], 10)], d.classes, role)
        w.evaluate(stack, w.n("n_strong", p["dataset"]), [strong(p)], d.classes, role)
        if p.get("transfer_dataset"):
            t = w.data(p["transfer_dataset"])
            w.evaluate(stack, w.n("n_eval", p["transfer_dataset"]), [pgd(p["eps"], 10)], t.classes, role)


def nb07(w: Workload) -> None:
    p, d = w.p, w.data(w.p["dataset"])
    ae, fm, configs = _finetune_models(w)
    for stack in [ae + fm] + [fm] * len(configs):
        w.evaluate(stack, w.n("n_eval", p["dataset"]), [pgd(p["eps"], 10)], d.classes, "defended")


def nb08(w: Workload) -> None:
    p, d = w.p, w.data(w.p["dataset"])
    fm, n = w.foundation(p["dataset"]), w.n("n_audit", p["dataset"])
    common = dict(architecture=p["architecture"], epochs=p["ae_epochs"])
    stacks = [(fm, "identity")] + [(w.preprocessor(_ae_config(p, kind=k, lam=lam, **common)) + fm, "defended")
                                   for k, lam in (("recon", 0.0), ("cropd", p["lam"]))]
    eps = p["eps"]
    for stack, role in stacks:
        w.slf(stack, p["dataset"])
        audit = [pgd(min(1.0, eps * f), 10) for f in p["eps_factors"]] + [pgd(eps, s) for s in p["audit_steps"]]
        audit += [pgd(eps, 10, restarts=p["restarts"]), strong(p), pgd(eps, 10)]  # the last: the transfer check
        w.evaluate(stack, n, audit, d.classes, role)
        w.evaluate(stack, n, [pgd(eps, 20)], d.classes, role)


WORKLOADS: dict[str, Callable[[Workload], None]] = {
    "00": nb00, "01": nb01, "02": nb02, "03": nb03, "04": nb04, "05": nb05, "06": nb06, "07": nb07, "08": nb08}


# --------------------------------------------------------------------------------------------------------------
# The plan of a profile.
@dataclass
class RunEstimate:
    name: str
    jobs: list[Job]
    cached: list[Job]
    datasets: set[str]
    foundations: set[str]
    overhead_s: float = RUN_OVERHEAD_S

    @property
    def keys(self) -> set[Hashable]:
        """The cached artifacts this run trains or reuses."""
        return {j.key for j in self.jobs + self.cached if j.key is not None}

    def flops(self, column: str | None = None) -> float:
        return sum(j.flops for j in self.jobs if column in (None, j.column))

    def measured_ratio(self) -> float:
        total = self.flops()
        return sum(j.measured_flops for j in self.jobs) / total if total else 1.0

    def seconds(self, mfu: float = MFU, throughput: float | None = None) -> float:
        return self.overhead_s + sum(j.seconds(mfu, throughput) for j in self.jobs)

    def peak_memory_bytes(self) -> float:
        return max((j.memory_bytes() for j in self.jobs), default=0.0)

    def download_bytes(self, seen: set[str] | None = None) -> float:
        """Bytes to download for this run; `seen` (updated) holds sources already counted."""
        seen = set() if seen is None else seen
        total = 0.0
        for source, size in downloads(self.datasets, self.foundations).items():
            if source not in seen:
                seen.add(source)
                total += size
        return total


def downloads(datasets: Iterable[str], foundations: Iterable[str]) -> dict[str, int]:
    """What must be fetched, by source: the torchvision archives and the hub weights."""
    sources = {f.source: f.download_bytes for f in map(dataset_facts, datasets)}
    for spec in foundations:
        facts = foundation_facts(spec)
        sources[spec] = facts.download_bytes
    return {k: v for k, v in sources.items() if v}


@dataclass
class Plan:
    profile: str
    runs: list[RunEstimate]
    mfu: float = MFU
    throughput: float | None = None  # FLOP/s for every job (a calibrated machine), instead of the H100 peaks
    device: str = "H100 SXM"

    def seconds(self) -> float:
        return sum(r.seconds(self.mfu, self.throughput) for r in self.runs)

    def schedule(self, workers: int) -> list[list[RunEstimate]]:
        """The runs in `workers` queues, one per GPU: runs that train or reuse one cached artifact share a queue, in
        profile order (the first trains it, the later ones find it in the cache; two processes never train it at
        once), and the groups go longest first to the least loaded queue."""
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        group = list(range(len(self.runs)))

        def root(i: int) -> int:
            while group[i] != i:
                i = group[i]
            return i

        owner: dict[Hashable, int] = {}
        for i, run in enumerate(self.runs):
            for key in run.keys:
                group[root(i)] = root(owner.setdefault(key, i))
        groups: dict[int, list[int]] = {}
        for i in range(len(self.runs)):
            groups.setdefault(root(i), []).append(i)
        hours = {g: sum(self.runs[i].seconds(self.mfu, self.throughput) for i in members)
                 for g, members in groups.items()}
        queues: list[list[int]] = [[] for _ in range(workers)]
        loads = [0.0] * workers
        for g in sorted(groups, key=lambda g: -hours[g]):
            w = loads.index(min(loads))
            queues[w] += groups[g]
            loads[w] += hours[g]
        return [[self.runs[i] for i in sorted(q)] for q in queues]

    def makespan(self, workers: int) -> float:
        """Seconds until the last of `workers` GPUs finishes its queue (`schedule`)."""
        return max(sum(r.seconds(self.mfu, self.throughput) for r in q) for q in self.schedule(workers))

    def table(self) -> str:
        """The per-run table and its total, as plain text."""
        unit = "h (H100)" if self.throughput is None else "h (calibrated)"
        head = ("notebook run", "train PFLOP", "eval PFLOP", "meas/closed", unit, "peak GB", "download GB", "cached")
        rows, seen = [head], set()
        for r in self.runs:
            rows.append((r.name, f"{r.flops('train') / 1e15:.3g}", f"{r.flops('eval') / 1e15:.3g}",
                         f"{r.measured_ratio():.2f}", f"{r.seconds(self.mfu, self.throughput) / 3600:.2f}",
                         f"{r.peak_memory_bytes() / 1e9:.1f}", f"{r.download_bytes(seen) / 1e9:.2f}",
                         str(len({j.key for j in r.cached}))))
        total_flops = sum(r.flops() for r in self.runs)
        measured = sum(r.measured_ratio() * r.flops() for r in self.runs)
        rows.append(("total", f"{sum(r.flops('train') for r in self.runs) / 1e15:.3g}",
                     f"{sum(r.flops('eval') for r in self.runs) / 1e15:.3g}",
                     f"{measured / total_flops if total_flops else 1:.2f}", f"{self.seconds() / 3600:.2f}",
                     f"{max((r.peak_memory_bytes() for r in self.runs), default=0) / 1e9:.1f}",
                     f"{sum(downloads(set().union(*(r.datasets for r in self.runs)), set().union(*(r.foundations for r in self.runs))).values()) / 1e9:.2f}",
                     ""))
        widths = [max(len(row[c]) for row in rows) for c in range(len(head))]
        lines = ["  ".join(cell.rjust(w) if c else cell.ljust(w) for c, (cell, w) in enumerate(zip(row, widths)))
                 for row in rows]
        lines.insert(1, "-" * len(lines[0]))
        lines.insert(len(lines) - 1, "-" * len(lines[0]))
        basis = (f"{self.throughput / 1e9:.1f} GFLOP/s measured on this machine" if self.throughput is not None else
                 f"one {self.device} at {self.mfu:.0%} MFU of its dense peaks (bf16 989, TF32 495, fp32 67 TFLOP/s), "
                 f"linear heads on the host CPU at {HOST_FLOPS / 1e9:.0f} GFLOP/s")
        return "\n".join(lines + [
            f"Profile {self.profile}: {self.seconds() / 3600:.1f} hours on {basis}, plus {RUN_OVERHEAD_S:.0f} s per run. "
            "FLOPs in closed form (meas/closed: with pass counts measured on the kit's steps); attacks on every "
            f"example, AutoAttack's later components on {SURVIVING['defended']:.0%} (Identity "
            f"{SURVIVING['identity']:.0%}) survivors; work the kit caches counted once (cached: trainings a run "
            "reuses). See cropkit/budget.py for the assumptions.",
            "Under torchrun (runs that share cached training stay on one GPU): "
            + ", ".join(f"{n} GPUs {self.makespan(n) / 3600:.1f} h" for n in (2, 4, 8)) + "."])


def _in_cache(key: Hashable) -> bool:
    """Whether the kit's cache already holds the artifact a job's key names (pre-processors, ACL, MAE)."""
    from cropkit.acl import ACLConfig, acl_dir
    from cropkit.checkpoint import existing_directory
    from cropkit.pretrain import MAEConfig, foundation_dir
    from cropkit.train import PreprocessorConfig, preprocessor_dir

    if isinstance(key, PreprocessorConfig):
        return existing_directory(preprocessor_dir(key)) is not None
    if isinstance(key, ACLConfig):
        return existing_directory(acl_dir(key)) is not None
    if isinstance(key, MAEConfig):
        return (foundation_dir(key) / "config.json").is_file()
    return False


def estimate(profile: str, only: Iterable[str] | None = None, overrides: Mapping[str, Any] | None = None, *,
             mfu: float = MFU, throughput: float | None = None, respect_cache: bool = False,
             measure: bool = True) -> Plan:
    """The plan of `cropkit reproduce` with the same arguments; `respect_cache` drops what the cache holds;
    `measure=False` skips the measured pass counts (seconds of counting on a CPU) and keeps the closed form."""
    from cropkit.reproduce import notebook_parameters, plan

    if not 0 < mfu <= 1:
        raise ValueError(f"mfu must lie in (0, 1], got {mfu}")
    runs, trained = [], set()
    for run in plan(profile, only, overrides):
        defaults = {k: ast.literal_eval(v) for k, v in notebook_parameters(run.notebook).items()}
        workload = Workload(defaults | run.parameters, measure)
        try:
            WORKLOADS[run.notebook.stem[:2]](workload)
        except ValueError as error:
            raise ValueError(f"{run.name}: {error}") from error
        jobs, cached = [], []
        for job in workload.jobs:
            done = job.key is not None and (job.key in trained or (respect_cache and _in_cache(job.key)))
            (cached if done else jobs).append(job)
        trained |= {job.key for job in workload.jobs if job.key is not None}
        runs.append(RunEstimate(run.name, jobs, cached, workload.datasets, workload.foundations))
    return Plan(profile, runs, mfu, throughput)


def prefetch(profile: str, only: Iterable[str] | None = None, overrides: Mapping[str, Any] | None = None) -> list[str]:
    """Download (or find) and read every dataset split and hub foundation model the runs need, once, before a
    torchrun launch (whose ranks would race on one download) or to learn in minutes that a file is missing or
    broken. Returns a line per item."""
    from cropkit.data import load_dataset
    from cropkit.models import FoundationModel

    plan = estimate(profile, only, overrides, measure=False)
    lines = []
    for name in sorted(set().union(*(r.datasets for r in plan.runs))):
        lines += [load_dataset(name, split).describe() for split in ("train", "test")]
    for spec in sorted(set().union(*(r.foundations for r in plan.runs))):
        if spec != "embedded" and not spec.startswith("embedded:"):  # embedded models are trained, not fetched
            model = FoundationModel.from_pretrained(spec)
            lines.append(f"{spec}: {sum(p.numel() for p in model.parameters()):,} parameters")
    return lines


def calibrate(device: str | None = None, repeats: int = 2) -> float:
    """This machine's FLOP/s on the quick profile's kind of work: a CRoPD step of the conv auto-encoder and PGD
    through the embedded-size ViT-MAE pipeline, FLOPs counted once, then timed (best of `repeats`)."""
    from cropkit import precision
    from cropkit.heads import LinearHead
    from cropkit.models import FoundationModel, Pipeline
    from cropkit.models.autoencoder import build_autoencoder
    from cropkit.pretrain import MAEConfig, build_mae
    from cropkit.train import PreprocessorConfig, preprocessor_loss

    device = precision.resolve_device(device)
    with torch.random.fork_rng(devices=[]):
        ae = build_autoencoder("conv", 1, 28).to(device)
        frozen = build_autoencoder("conv", 1, 28).requires_grad_(False)
        foundation = FoundationModel(build_mae(MAEConfig(), 1).vit, [0.5], [0.5])
        pipeline = Pipeline(frozen, foundation, LinearHead(foundation.feature_dim, 10)).to(device)
        x, y = torch.rand(128, 1, 28, 28, device=device), torch.arange(128, device=device) % 10
        config = PreprocessorConfig(eps=0.1)
        attack = pgd(0.1, 5).build(pipeline, n_classes=10, seed=0)

        def work() -> None:
            with precision.autocast(device):
                preprocessor_loss(ae, config, x, y)[0].backward()
                attack(x[:64], y[:64])
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        flops = _flops(work)
        timings = []
        for _ in range(repeats):
            started = time.perf_counter()
            work()
            timings.append(time.perf_counter() - started)
    return flops / min(timings)
