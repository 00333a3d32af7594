"""The ACL family's backbone: a CIFAR-style ResNet with dual BatchNorm, and its 3-layer projection head.

Every BatchNorm is a `DualBatchNorm`: two BatchNorms over the same features, `normal` for clean views and `pgd`
for adversarial ones (docs/methods.md section 2), each with its own affine parameters and running statistics. The
branch is chosen per call, `model(x, bn="pgd")`; downstream use takes the `pgd` branch (`RobustEncoder`).
Normalisation is inside the model, so inputs and attacks live in [0, 1]. `width=64, blocks_per_stage=2` is
ResNet-18 (3x3 stem, no max-pool); smaller values give the tiny backbones that train on a CPU.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cropkit.foundation.model import check_images

Branch = Literal["normal", "pgd"]
BRANCHES: tuple[str, ...] = ("normal", "pgd")


class DualBatchNorm(nn.Module):
    """A `normal` and a `pgd` BatchNorm over the same features; `branch` (set by `bn_branch`) picks one."""

    def __init__(self, norm: type[nn.BatchNorm1d] | type[nn.BatchNorm2d], features: int) -> None:
        super().__init__()
        self.normal = norm(features)
        self.pgd = norm(features)
        self.branch: Branch = "normal"

    def forward(self, x: Tensor) -> Tensor:
        return self.pgd(x) if self.branch == "pgd" else self.normal(x)


@contextlib.contextmanager
def bn_branch(model: nn.Module, branch: Branch) -> Iterator[None]:
    """Route every `DualBatchNorm` inside `model` through `branch` for the duration of the block."""
    if branch not in BRANCHES:
        raise ValueError(f"Unknown BatchNorm branch {branch!r}; choose one of {BRANCHES}")
    duals = [m for m in model.modules() if isinstance(m, DualBatchNorm)]
    previous = [m.branch for m in duals]
    for m in duals:
        m.branch = branch
    try:
        yield
    finally:
        for m, b in zip(duals, previous):
            m.branch = b


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = DualBatchNorm(nn.BatchNorm2d, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = DualBatchNorm(nn.BatchNorm2d, out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          DualBatchNorm(nn.BatchNorm2d, out_channels))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet from [0, 1] images to pooled features of size 8 * width."""

    def __init__(self, in_channels: int = 3, width: int = 64, blocks_per_stage: int = 2,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        super().__init__()
        if width < 1 or blocks_per_stage < 1:
            raise ValueError(f"width and blocks_per_stage must be >= 1, got {width} and {blocks_per_stage}")
        self.in_channels = in_channels
        self.feature_dim = 8 * width
        mean = [0.5] * in_channels if mean is None else list(mean)
        std = [0.5] * in_channels if std is None else list(std)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
                                  DualBatchNorm(nn.BatchNorm2d, width), nn.ReLU())
        blocks, channels = [], width
        for stage, stride in enumerate((1, 2, 2, 2)):
            out_channels = width * 2**stage
            for i in range(blocks_per_stage):
                blocks.append(BasicBlock(channels, out_channels, stride if i == 0 else 1))
                channels = out_channels
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: Tensor, bn: Branch) -> Tensor:
        check_images(x, self.in_channels)
        with bn_branch(self, bn):
            out = self.blocks(self.stem((x - self.mean) / self.std))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)


class ProjectionHead(nn.Module):
    """Linear-BN-ReLU, Linear-BN-ReLU, Linear-BN with a bias on the first layer only: `proj_head` of the ACL family's
    `models/resnet_multi_bn.py`, the 3-layer head the contrastive losses see (dual BN too)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(dim, dim), DualBatchNorm(nn.BatchNorm1d, dim), nn.ReLU(),
                                    nn.Linear(dim, dim, bias=False), DualBatchNorm(nn.BatchNorm1d, dim), nn.ReLU(),
                                    nn.Linear(dim, dim, bias=False), DualBatchNorm(nn.BatchNorm1d, dim))

    def forward(self, h: Tensor, bn: Branch) -> Tensor:
        with bn_branch(self, bn):
            return self.layers(h)


class Encoder(nn.Module):
    """Backbone plus projection head: [0, 1] images to the projections that the contrastive losses compare."""

    def __init__(self, backbone: ResNet) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = ProjectionHead(backbone.feature_dim)

    def forward(self, x: Tensor, bn: Branch) -> Tensor:
        return self.head(self.backbone(x, bn), bn)


class ACLModel(nn.Module):
    """The trained encoder (`query`) and, with `momentum`, DynACL's key encoder: a copy that gets no gradient and
    follows the query's weights as an exponential moving average (`resnet18_momentum` of train_DynACL.py).

    `model(views, bn, swap=True)` sends the first half of a batch of two views through the query and the second
    half through the key, as their `swap=True` does for every view pair (the attack's too); without a key encoder,
    or with `swap=False`, the whole batch goes through the query. `backbone` is the encoder used downstream: the
    key's when there is one (their released `model_encoder_k.pt`), else the query's.
    """

    def __init__(self, backbone: ResNet, momentum: float | None = None) -> None:
        super().__init__()
        self.query = Encoder(backbone)
        self.momentum = momentum
        self.key = None if momentum is None else copy.deepcopy(self.query).requires_grad_(False)

    @property
    def backbone(self) -> ResNet:
        return (self.query if self.key is None else self.key).backbone

    @property
    def head(self) -> ProjectionHead:
        """The trained projection head (the query's): what RCS takes its gradients on."""
        return self.query.head

    def forward(self, x: Tensor, bn: Branch, swap: bool = False) -> Tensor:
        if self.key is None or not swap:
            return self.query(x, bn)
        first, second = x.chunk(2)
        return torch.cat([self.query(first, bn), self.key(second, bn)])

    @torch.no_grad()
    def update_key(self) -> None:
        """key = m * key + (1 - m) * query, parameters only (`_momentum_update_encoder_k`; each encoder keeps its
        own BatchNorm statistics). A no-op without a key encoder."""
        if self.key is None:
            return
        for key, query in zip(self.key.parameters(), self.query.parameters()):
            key.mul_(self.momentum).add_(query, alpha=1 - self.momentum)


class RobustEncoder(nn.Module):
    """A pre-trained backbone as the kit's foundation model: [0, 1] images to features via the `pgd` branch.

    Frozen with `requires_grad_(False)` and `eval()` (never `no_grad`), so `Pipeline`, `fit_slf`, `fit_alf`
    and `evaluate` use it like the ViT-MAE, and attacks differentiate through it.
    """

    def __init__(self, backbone: ResNet, name: str) -> None:
        super().__init__()
        self.backbone = backbone.requires_grad_(False)
        self.name = name
        self.feature_dim = backbone.feature_dim
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone(x, bn="pgd")
