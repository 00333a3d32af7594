"""End-to-end white-box evaluation: clean and robust accuracy of a whole pipeline, one record per attack.

Robust accuracy counts an example as robust when it is classified correctly both clean and under attack, so
only clean-correct examples are attacked (as AutoAttack does). Every adversarial batch is checked to lie in
the eps-ball and in [0, 1] before it is scored. Every record carries the verdict of the gradient-masking audit:
the full one (`cropkit.audit.run`) when its report is passed in, else the structural checks run here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from cropkit.attacks import IMPLEMENTATION, AttackSpec
from cropkit.checks import SAMPLE, AuditReport, structural_checks
from cropkit.data import ImageData
from cropkit.results import append_records, provenance


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.inference_mode()
def predict(model: nn.Module, images: Tensor, batch_size: int = 256) -> Tensor:
    """Predicted classes of `images` (on the model's device), returned on the CPU."""
    device = next(model.parameters()).device
    return torch.cat([model(x.to(device)).argmax(dim=1).cpu() for x in images.split(batch_size)])


def attack_batches(
    model: nn.Module, spec: AttackSpec, images: Tensor, labels: Tensor, *, n_classes: int, seed: int,
    batch_size: int = 256, desc: str | None = None,
) -> Tensor:
    """Adversarial examples for `images` (CPU tensors in [0, 1]) made batch by batch on the model's device."""
    device = next(model.parameters()).device
    torch.manual_seed(seed)  # torchattacks draws random starts from the global generator
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)
    attack = spec.build(model, n_classes=n_classes, seed=seed)
    adversarial = []
    for x, y in tqdm(list(zip(images.split(batch_size), labels.split(batch_size))), desc=desc or spec.label, leave=False):
        x, y = x.to(device), y.to(device)
        x_adv = attack(x, y)
        if (x_adv - x).abs().max() > spec.eps + 1e-5 or x_adv.min() < 0 or x_adv.max() > 1:
            raise RuntimeError(f"{spec.label} returned examples outside the eps={spec.eps} ball or [0, 1]")
        adversarial.append(x_adv.detach().cpu())
    return torch.cat(adversarial) if adversarial else images[:0]


def evaluate(
    pipeline: nn.Module,
    data: ImageData,
    attacks: Sequence[AttackSpec],
    *,
    model_name: str,
    seed: int = 0,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    results: str | os.PathLike[str] | None = None,
    setup: dict[str, Any] | None = None,
    audit: AuditReport | None = None,
) -> list[dict[str, Any]]:
    """Clean and robust accuracy of `pipeline` on `data` under each attack; append the records to `results`.

    `setup` describes the model (pre-processor, foundation model, head) and is stored with every record;
    `audit` is the model's full audit report, if one was run (otherwise the structural checks are run here).
    """
    device = torch.device(device) if device is not None else default_device()
    pipeline = pipeline.to(device).eval()
    images, labels = data.tensors()
    if audit is None:
        audit = AuditReport(model_name, attacks[0].eps if attacks else 0.0,
                            structural_checks(pipeline, images[:SAMPLE], labels[:SAMPLE], data.num_classes), full=False)
    started = time.perf_counter()
    correct = predict(pipeline, images, batch_size) == labels
    clean_seconds = time.perf_counter() - started
    clean_accuracy = correct.float().mean().item()
    base = {
        "model": model_name,
        "setup": setup or {},
        "dataset": data.name,
        "split": data.split,
        "n_examples": len(labels),
        "threat_model": "Linf",
        "seed": seed,
        "clean_accuracy": clean_accuracy,
        "audit": audit.verdict(),
        **provenance(device),
    }
    records = []
    for spec in attacks:
        started = time.perf_counter()
        x_adv = attack_batches(pipeline, spec, images[correct], labels[correct], n_classes=data.num_classes,
                               seed=seed, batch_size=batch_size, desc=f"{model_name}: {spec.label} eps={spec.eps:.4g}")
        robust = int((predict(pipeline, x_adv, batch_size) == labels[correct]).sum()) if len(x_adv) else 0
        records.append(base | {
            "attack": spec.label,
            "eps": spec.eps,
            "attack_settings": spec.settings(),
            "implementation": IMPLEMENTATION,
            "robust_accuracy": robust / len(labels),
            "runtime_s": clean_seconds + time.perf_counter() - started,
        })
    if results is not None:
        append_records(results, records)
    return records
