"""Downstream protocols on a frozen stack (pre-processor + foundation model): SLF and ALF linear heads.

- SLF (standard linear fine-tuning): the stack's features of the clean training set are computed once and a
  linear head is fitted on them (`cropkit.heads`).
- ALF (adversarial linear fine-tuning): starting from the SLF head, the head is trained on adversarial
  examples made by attacking the *whole* pipeline each step (PGD through pre-processor, foundation model and
  head); the stack stays frozen. Under bf16 autocast on CUDA, as `evaluate` attacks (fp32 on the CPU).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from cropkit import precision
from cropkit.attacks import AttackSpec
from cropkit.cost import measure
from cropkit.data import ImageData
from cropkit.heads import extract_features, train_linear_head
from cropkit.loop import RunningMeans, cosine_schedule, descend, shuffled_batches
from cropkit.models import Pipeline


def fit_slf(preprocessor: nn.Module | None, foundation: nn.Module, train: ImageData, *,
            device: torch.device | str | None = None, batch_size: int = 256) -> Pipeline:
    """A pipeline whose linear head is fitted on the cached features of the frozen stack (clean data)."""
    pipeline = Pipeline(preprocessor, foundation, nn.Identity())
    if device is not None:
        pipeline.to(device)
    x, y = train.tensors()
    features = extract_features(pipeline, x, batch_size=batch_size, desc="SLF features")
    pipeline.head = train_linear_head(features, y, train.num_classes).to(next(pipeline.parameters()).device)
    return pipeline


def fit_alf(slf: Pipeline, train: ImageData, attack: AttackSpec, *, epochs: int = 2, lr: float = 0.01,
            batch_size: int = 128, seed: int = 0, progress: bool = True) -> tuple[Pipeline, list[dict[str, float]]]:
    """ALF: a copy of `slf` whose head is trained on adversarial examples of the whole pipeline.

    SGD (momentum 0.9, weight decay 2e-4, cosine schedule) on the cross-entropy of `attack`'s examples, made
    afresh for every batch. Returns the new pipeline (sharing the frozen stack) and per-epoch loss / accuracy.
    """
    pipeline = Pipeline(slf.preprocessor, slf.foundation, copy.deepcopy(slf.head))
    device = next(pipeline.parameters()).device
    head = pipeline.head.requires_grad_(True)
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=2e-4)
    steps = epochs * math.ceil(len(train) / batch_size)
    scheduler = cosine_schedule(optimizer, steps)
    images, labels = train.tensors()
    torch.manual_seed(seed)  # torchattacks' random starts
    history = []
    attacked = precision.Fp32Logits(pipeline)
    for epoch in tqdm(range(epochs), desc="ALF head", disable=not progress):
        adversary = attack.build(attacked, n_classes=train.num_classes, seed=seed + epoch)
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        means = RunningMeans()
        with measure(head, examples=len(images), device=device) as cost:
            for batch in shuffled_batches(len(images), batch_size, generator):
                x, y = images[batch].to(device), labels[batch].to(device)
                logits = attacked(adversary(x, y))
                loss = F.cross_entropy(logits, y)
                descend(loss, optimizer, scheduler, name="ALF head", epoch=epoch)
                means.add({"adv_loss": loss.item(), "adv_accuracy": (logits.argmax(1) == y).float().mean().item()},
                          len(batch))
        history.append({"epoch": epoch + 1, **means.means(), **cost.fields()})
    head.requires_grad_(False).eval()
    return pipeline, history
