"""Forward passes per example of the kit's steps: in closed form (a backward is 2 forward passes, an input-only
gradient 1), and measured, the kit's own step functions run under `cost.FlopCounter` (kept in the cache under a
hash of the code they measure, since counting takes seconds to minutes on a CPU)."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import torch
import torchattacks
from torch import nn
from transformers import ViTMAEConfig, ViTMAEModel

from cropkit.acl.pretrain import ACLConfig, training_loss
from cropkit.acl.resnet import ACLModel, ResNet
from cropkit.core.checkpoint import read_json, write_json
from cropkit.core.cost import FlopCounter
from cropkit.core.paths import cache_dir
from cropkit.cropd.autoencoders import build_autoencoder
from cropkit.cropd.config import PreprocessorConfig
from cropkit.cropd.train import preprocessor_loss
from cropkit.eval.attacks import AttackSpec
from cropkit.finetune.robust import FinetuneConfig, finetune_loss, unfreeze
from cropkit.foundation import FoundationModel, Pipeline
from cropkit.foundation.heads import LinearHead

SURVIVING = {"identity": 0.03, "defended": 0.3}  # fraction left after APGD-CE (Identity: the paper's 2-3%)


def attack_passes(spec: AttackSpec, n_classes: int, surviving: float) -> float:
    """Forward passes per attacked example (a forward plus an input gradient = 2), closed form: the components
    `spec` runs on an `n_classes`-way task (`AttackSpec.components`), those after APGD-CE on the `surviving`
    fraction only (torchattacks' MultiAttack attacks what the earlier components left correct)."""
    k = spec.steps
    if spec.kind == "fgsm":
        return 2.0
    if spec.kind == "pgd":
        return spec.restarts * 2 * k + (spec.restarts - 1)
    passes = {"APGD-CE": lambda c: 2 * (c.steps + 1), "APGD-DLR": lambda c: 2 * (c.steps + 1),
              "APGD-T": lambda c: c.targets * 2 * (c.steps + 1), "FAB-T": lambda c: c.targets * (3 * c.steps + 2),
              "Square": lambda c: c.steps}
    first, *rest = spec.components(n_classes)
    return passes[first.name](first) + surviving * sum(passes[c.name](c) for c in rest)


def _tiny_pipeline(channels: int = 3, n_classes: int = 10) -> nn.Module:
    """A small random ViT-MAE pipeline whose pass counts stand for any ViT's."""
    config = ViTMAEConfig(image_size=16, patch_size=4, num_channels=channels, hidden_size=32, num_hidden_layers=1,
                          num_attention_heads=2, intermediate_size=64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        foundation = FoundationModel(ViTMAEModel(config), [0.5] * channels, [0.5] * channels)
        return Pipeline(None, foundation, LinearHead(32, n_classes))


_MEASURED_SOURCES = ("acl/pretrain.py", "acl/augment.py", "acl/losses.py", "acl/resnet.py", "eval/attacks.py",
                     "eval/ascent.py", "finetune/robust.py", "cropd/losses.py", "cropd/train.py",
                     "cropd/autoencoders.py", "foundation/model.py", "foundation/pipeline.py")


@cache
def _measurements_file() -> Path:
    """Where measured pass counts are kept: the cache, under a hash of the code they measure and its libraries,
    so that a change to a step function is measured afresh (counting takes seconds to minutes on a CPU)."""
    digest = hashlib.sha256(f"{torch.__version__} {torchattacks.__version__}".encode())
    package = Path(__file__).parents[2]  # cropkit/
    for name in _MEASURED_SOURCES:
        digest.update((package / name).read_bytes())
    return cache_dir() / "budget" / f"measured-passes-{digest.hexdigest()[:12]}.json"


def _persistent(function: Callable[..., Any]) -> Callable[..., Any]:
    """Memoise a measurement in `_measurements_file()` (JSON, keyed by the function's name and arguments)."""
    @cache
    def wrapper(*args: Any) -> Any:
        path, key = _measurements_file(), f"{function.__name__}{list(args)}"
        known = read_json(path) if path.is_file() else {}
        if key not in known:
            value = function(*args)
            known = (read_json(path) if path.is_file() else {}) | {key: value}  # another process may have added
            write_json(path, known)
        return known[key]

    return wrapper


def count_flops(call: Callable[[], Any]) -> float:
    """FLOPs of `call()` as `torch.utils.flop_counter` counts them (the global random state left as it was)."""
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
    forward = count_flops(lambda: pipeline(x))
    with torch.no_grad():
        y = pipeline(x).argmax(dim=1)  # APGD attacks only the examples classified correctly

    def at(steps: int) -> float:
        attack = AttackSpec(kind, 8 / 255, steps=steps).build(pipeline, n_classes=10, seed=0)
        return count_flops(lambda: attack(x, y)) / forward

    return _linear_in_steps(at)


def measured_attack_passes(kind: str, steps: int) -> float:
    """Forward passes per example of one PGD or APGD-CE attack (`AttackSpec.build`), measured on a tiny ViT."""
    base, per_step = _attack_fit(kind)
    return base + per_step * steps


def finetune_passes(method: str, steps: int) -> float:
    """Forward passes of the foundation model per fine-tuning example, closed form (`finetune.finetune_loss`)."""
    # AFT, TeCoA: the training forward and backward, plus the no-grad clean forward that monitors label leaking;
    # PMG-AFT: guide + clean; TRADES: 3 clean
    extra = {"aft": 4, "tecoa": 4, "pmg-aft": 7, "trades": 10}[method]
    return 2 * steps + extra


@_persistent
def _finetune_fit(method: str) -> tuple[float, float]:
    start, x, y = _tiny_pipeline(), torch.rand(2, 3, 16, 16), torch.arange(2)
    forward = count_flops(lambda: start(x))

    def at(steps: int) -> float:
        model, config = copy.deepcopy(start), FinetuneConfig(method=method, eps=8 / 255, attack_steps=steps)
        unfreeze(model, config)
        return count_flops(lambda: finetune_loss(model, start, config, x, y)[0].backward()) / forward

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
                                 latent_channels: int, depth: int | None = None) -> float:
    """`preprocessor_loss` and its backward on 2 images of the real auto-encoder, counted, over one forward."""
    with torch.random.fork_rng(devices=[]):
        model = build_autoencoder(architecture, channels, image_size, width, latent_channels, depth=depth)
    config = PreprocessorConfig(kind=kind, lam=1.0 if kind == "cropd" else 0.0, architecture=architecture,
                                width=width, latent_channels=latent_channels, depth=depth, eps=8 / 255)
    x, y = torch.rand(2, channels, image_size, image_size), torch.arange(2)
    with torch.no_grad():
        forward = count_flops(lambda: model(x))
    return count_flops(lambda: preprocessor_loss(model, config, x, y)[0].backward()) / forward


def acl_passes(attack_steps: int, air: bool) -> float:
    """ResNet forward passes per ACL example (`acl.training_loss`): two views attacked (forward + input gradient
    per step), both views through both BatchNorm branches with the backward; AIR adds the un-augmented image."""
    return 2 * (2 * attack_steps) + 12 + (3 if air else 0)


@_persistent
def _acl_fit(air: bool) -> tuple[float, float]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = ACLModel(ResNet(3, 4, 1, mean=[0.5] * 3, std=[0.5] * 3))
    x = torch.rand(4, 3, 16, 16)
    forward = count_flops(lambda: model(x, "pgd"))

    def at(steps: int) -> float:
        config = ACLConfig(air=air, attack_steps=steps, epochs=2, warmup_epochs=1)
        generator = torch.Generator().manual_seed(0)
        return count_flops(lambda: training_loss(model, x, config, 1.0, 0.0, generator)[0].backward()) / forward

    return _linear_in_steps(at)


def measured_acl_passes(attack_steps: int, air: bool) -> float:
    """`acl.training_loss` and its backward on a tiny ResNet, counted, over one forward of the batch."""
    base, per_step = _acl_fit(air)
    return base + per_step * attack_steps
