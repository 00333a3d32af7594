"""Downstream protocols on a frozen stack (pre-processor + foundation model): SLF and ALF linear heads.

- SLF (standard linear fine-tuning): the stack's features of the clean training set are computed once and a
  linear head is fitted on them (`cropkit.foundation.heads`); the head is cached by the stack's weights and the data.
- ALF (adversarial linear fine-tuning): starting from the SLF head, the head is trained on adversarial
  examples made by attacking the *whole* pipeline each step (PGD through pre-processor, foundation model and
  head); the stack stays frozen. As in the ACL papers' ALF (RobustSSL_Benchmark's `train_loop`, mode 'ALF': the
  final iterate of PGD-10 for every example), the head always trains on the attack's perturbed point, so only
  attacks that return one for every example (FGSM, single-run PGD) are accepted. Under bf16 autocast
  on CUDA, as `evaluate` attacks (fp32 on the CPU). The head and its history are cached like SLF heads, keyed
  by the starting pipeline's weights, the data, the attack and the schedule.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict

import torch
import torch.nn.functional as F
from torch import nn

from cropkit.core import precision
from cropkit.core.checkpoint import cache_key, existing_directory, load_weights, module_key, read_json, save_weights
from cropkit.core.cost import measure
from cropkit.core.loop import RunningMeans, cosine_schedule, descend, shuffled_batches
from cropkit.core.paths import cache_dir
from cropkit.core.progress import bar as progress_bar
from cropkit.core.validate import integer, positive, require
from cropkit.data import ImageData
from cropkit.eval.attacks import AttackSpec
from cropkit.eval.inputs import head_matches
from cropkit.foundation import Pipeline
from cropkit.foundation.heads import WEIGHT_DECAYS, LinearHead, extract_features, train_linear_head

# Bump when a code change alters the head fitted for the same frozen stack and data (it keys the cache).
HEAD_RECIPE_VERSION = 1


def fit_slf(preprocessor: nn.Module | None, foundation: nn.Module, train: ImageData, *,
            device: torch.device | str | None = None, batch_size: int = 256) -> Pipeline:
    """A pipeline whose linear head is fitted on the frozen stack's features of the clean training set.

    The head is cached, keyed by the frozen stack's `module_key` (weights, classes, settings), the training data's
    content, the precision the features are extracted in and the fitting recipe: the notebooks fit SLF heads on the
    same stacks many times.
    """
    pipeline = Pipeline(preprocessor, foundation, nn.Identity())
    if device is not None:
        pipeline.to(device)
    device = next(pipeline.parameters()).device
    key = cache_key({"stack": module_key(pipeline), "precision": precision.describe(device),
                     "weight_decays": list(WEIGHT_DECAYS)}, recipe=HEAD_RECIPE_VERSION, data=train.digest())
    path = cache_dir() / "heads" / f"slf-{train.name}-{key}"
    found = existing_directory(path)
    if found is not None:
        head = LinearHead(int(read_json(found / "config.json")["in_features"]), train.num_classes)
        saved = load_weights(head, found)
        head.weight_decay, head.validation = saved["weight_decay"], {float(k): v for k, v in saved["validation"].items()}
    else:
        x, y = train.tensors()
        features = extract_features(pipeline, x, batch_size=batch_size, desc="SLF features")
        head = train_linear_head(features, y, train.num_classes)
        save_weights(head, path, {"in_features": features.shape[1], "num_classes": train.num_classes,
                                  "weight_decay": head.weight_decay, "validation": head.validation})
    pipeline.head = head.requires_grad_(False).eval().to(device)
    return pipeline


def fit_alf(slf: Pipeline, train: ImageData, attack: AttackSpec, *, epochs: int = 2, lr: float = 0.01,
            batch_size: int = 128, seed: int = 0, progress: bool = True) -> tuple[Pipeline, list[dict[str, float]]]:
    """ALF: a copy of `slf` whose head is trained on adversarial examples of the whole pipeline.

    SGD (momentum 0.9, weight decay 2e-4, cosine schedule) on the cross-entropy of `attack`'s examples, made
    afresh for every batch. Returns the new pipeline (sharing the frozen stack) and per-epoch loss / accuracy.
    PGD restarts and the strong kinds are refused: they return the clean input wherever they fail to change
    the prediction, so the head would train on clean images there.
    """
    require(isinstance(attack, AttackSpec), "attack", attack, "not an AttackSpec", "pass e.g. pgd(eps, steps=10)")
    integer(1, why="0 epochs would return the SLF head as an ALF one")("epochs", epochs)
    positive("lr", lr)
    integer(1)("batch_size", batch_size)
    integer(0)("seed", seed)
    require(isinstance(train, ImageData) and len(train) > 0, "train", train, "not a non-empty ImageData",
            "load it with cropkit.data.load_dataset(name, 'train')")
    head_matches(slf, train, "slf", "start ALF from an SLF head fitted on this dataset (fit_slf)")
    if not attack.always_perturbs:
        raise ValueError(f"ALF trains on the attack's perturbed point for every example, but {attack.label} returns "
                         "the clean input where it fails; pass a single-run PGD such as pgd(eps, 10) as `attack`")
    pipeline = Pipeline(slf.preprocessor, slf.foundation, copy.deepcopy(slf.head))
    device = next(pipeline.parameters()).device
    schedule = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed}
    key = cache_key({"start": module_key(slf), "attack": asdict(attack), "precision": precision.describe(device),
                     **schedule}, recipe=HEAD_RECIPE_VERSION, data=train.digest())
    path = cache_dir() / "heads" / f"alf-{train.name}-{key}"
    found = existing_directory(path)
    if found is not None:
        history = load_weights(pipeline.head, found)["history"]
        return pipeline, history
    head = pipeline.head.requires_grad_(True)
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=2e-4)
    steps = epochs * math.ceil(len(train) / batch_size)
    scheduler = cosine_schedule(optimizer, steps)
    images, labels = train.tensors()
    torch.manual_seed(seed)  # torchattacks' random starts
    history = []
    attacked = precision.Fp32Logits(pipeline)
    for epoch in progress_bar(range(epochs), desc="ALF head", disable=not progress):
        adversary = attack.build(attacked, n_classes=train.num_classes, seed=seed + epoch)
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        means = RunningMeans()
        with measure(head, examples=len(images), device=device, count_flops="first-batch") as cost:
            for batch in shuffled_batches(len(images), batch_size, generator):
                x, y = images[batch].to(device), labels[batch].to(device)
                with cost.batch(len(batch)):
                    logits = attacked(adversary(x, y))
                    loss = F.cross_entropy(logits, y)
                    descend(loss, optimizer, scheduler, name="ALF head", epoch=epoch)
                means.add({"adv_loss": loss.item(), "adv_accuracy": (logits.argmax(1) == y).float().mean().item()},
                          len(batch))
        history.append({"epoch": epoch + 1, **means.means(), **cost.fields()})
    head.requires_grad_(False).eval()
    save_weights(head, path, {"attack": asdict(attack), **schedule, "history": history})
    return pipeline, history
