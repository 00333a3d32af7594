"""What the plan knows without a network: the datasets' sizes and downloads, the hub models' architectures, the
H100's peaks, and each network's forward FLOPs, parameters and activations per example (counted on the meta
device: shapes only, no memory, no compute)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache
from typing import Any, Literal

import torch
from torch import nn
from transformers import ViTMAEConfig, ViTMAEForPreTraining, ViTMAEModel

from cropkit.acl.resnet import ResNet
from cropkit.core.cost import FlopCounter, vit_forward_flops
from cropkit.core.paths import resolve
from cropkit.cropd.autoencoders import build_autoencoder
from cropkit.data import _ALIASES
from cropkit.foundation.model import FoundationModel
from cropkit.foundation.pretrain import CARD, build_mae, embedded_config, shipped_dir

Precision = Literal["bf16", "tf32", "fp32", "host"]
# H100 SXM dense peaks (FLOP/s): bf16 tensor cores, TF32 tensor cores, fp32 without tensor cores.
PEAK_FLOPS: dict[str, float] = {"bf16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12}
MFU = 0.35
# The linear heads are fitted by L-BFGS on the CPU (`heads.train_linear_head`): the host's achieved fp32 FLOP/s on
# those products (an assumption: a GPU server's cores).
HOST_FLOPS = 5e11
RUN_OVERHEAD_S = 15.0  # per notebook run: kernel start, imports, data loading (measured on the 2-core CPU: 10-20 s)


@dataclass(frozen=True)
class DatasetFacts:
    """A dataset's splits and image shape as `load_dataset` reads it, and what a first use downloads."""

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
            facts = DatasetFacts(len(x), len(archive["x_test"]), x.shape[1], x.shape[3], len(archive["classes"]), 0,
                                 name)
    elif name in DATASETS:
        facts = DATASETS[name]
    else:
        raise ValueError(f"The plan knows no sizes for dataset {name!r}; add them to cropkit.runs.budget.DATASETS")
    if keep is None:
        return facts
    share = keep / facts.classes
    return replace(facts, train=round(facts.train * share), test=round(facts.test * share), classes=keep)


@dataclass(frozen=True)
class FoundationFacts:
    """A foundation model's architecture and download, or the pre-training of an embedded one."""

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
    """The architecture of the `foundation` parameter: `embedded[:dataset][@seed]`, a known hub id or a local folder."""
    if spec.startswith("embedded"):
        config = embedded_config(spec)
        vit = config.vit_config(dataset_facts(config.dataset).channels)
        shipped = (shipped_dir(config) / CARD).is_file()  # the package's checkpoint: loaded, not pre-trained
        return FoundationFacts(spec, vit.to_dict(), 0, None if shipped else config)
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


# Networks: forward FLOPs, parameters and activations per example, from the meta device.
@dataclass(frozen=True)
class Network:
    """One network's cost per example, for the jobs that run it."""

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


def _count(module: nn.Module, example: torch.Tensor,
           call: Callable[[torch.Tensor], Any] | None = None) -> tuple[float, float]:
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
                        latent_channels: int = 64, depth: int | None = None) -> Network:
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = build_autoencoder(architecture, channels, image_size, width, latent_channels, depth=depth)
        example = torch.empty(1, channels, image_size, image_size)
        flops, activations = _count(model, example)
        encoder, _ = _count(model, example, model.latent)
    return Network(f"{architecture} AE", flops, sum(p.numel() for p in model.parameters()), activations,
                   encoder / flops)


@cache
def resnet_network(channels: int, image_size: int, width: int, blocks_per_stage: int) -> Network:
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = ResNet(channels, width, blocks_per_stage, mean=[0.5] * channels, std=[0.5] * channels)
        flops, activations = _count(model, torch.empty(1, channels, image_size, image_size), lambda x: model(x, "pgd"))
    return Network(f"ResNet (width {width})", flops, sum(p.numel() for p in model.parameters()), activations,
                   feature_dim=model.feature_dim)


@cache
def mae_pretraining_network(config: Any, channels: int) -> Network:
    """One MAE pre-training forward (75% of the patches masked, the decoder on all) of an embedded model."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = build_mae(config, channels)
        size = config.image_size
        flops, activations = _count(model, torch.empty(1, channels, size, size), lambda x: model(pixel_values=x).loss)
    return Network(f"MAE pre-training ({config.dataset})", flops, sum(p.numel() for p in model.parameters()),
                   activations)
