"""End-to-end white-box evaluation: clean and robust accuracy of a whole pipeline, one record per attack.

Robust accuracy counts an example as robust when it is classified correctly both clean and under attack, so
only clean-correct examples are attacked (as AutoAttack does). Every adversarial batch is checked to lie in
the eps-ball and in [0, 1] before it is scored. Every record carries the verdict of the gradient-masking audit:
the full one (`cropkit.eval.audit.run`) when its report is passed in, else the structural checks run here; its 95%
intervals; and its per-example outcomes, from which paired comparisons and the worst case over attacks follow.

An attack's per-example outcomes are cached (`cache_dir()/evaluations`), keyed by the model's `module_key`
(its weights, its modules' classes and settings), the examples' content, the attack's settings, seed, batch size,
precision and `EVAL_RECIPE_VERSION`: the notebooks evaluate the same cached models on the same images run after
run, and a replayed record says `"cached": true` (its `runtime_s` is the run that computed it). `cache=False`, or
more than one process, always attacks.

Each record names the library that ran its attack (`implementation`); a record of the reference AutoAttack
(`autoattack-original`) also holds the reference's own checks (`reference_checks`: name, passed, evidence), cached
with its outcomes. Under torchrun they are those of rank 0's batches.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torchattacks.attack import Attack as TorchAttack

from cropkit.core import distributed, precision
from cropkit.core.checkpoint import measurement_path, module_key, read_json, reading, write_json
from cropkit.core.paths import cache_dir
from cropkit.core.precision import PRECISIONS, Precision, describe, fp32, resolve_device
from cropkit.core.progress import bar as progress_bar
from cropkit.core.validate import boolean, check_adversarial, choice
from cropkit.data import ImageData
from cropkit.eval.attacks import REFERENCE, Attack, AttackSpec, ExternalAttack, as_attack
from cropkit.eval.checks import SAMPLE, AuditReport, reference_checks, structural_checks
from cropkit.eval.inputs import check_evaluation
from cropkit.eval.records import (
    accuracy_fields,
    append_records,
    decode_outcomes,
    encode_outcomes,
    provenance,
    worst_case,
)

# Bump when a change to the attacks or to scoring alters the outcomes for the same model, examples and attack
# (it keys the cache of outcomes).
EVAL_RECIPE_VERSION = 1


def _pinned(t: Tensor, device: torch.device) -> Tensor:
    """`t` in page-locked memory when it is bound for a GPU: faster copies, which need not block the host."""
    return t.pin_memory() if device.type == "cuda" else t


@torch.inference_mode()
def predict(model: nn.Module, images: Tensor, batch_size: int = 256) -> Tensor:
    """Predicted classes of `images` (on the model's device, under `autocast`), returned on the CPU."""
    device = next(model.parameters()).device
    with precision.autocast(device):
        return torch.cat([model(x.to(device, non_blocking=True)).argmax(dim=1)
                          for x in images.split(batch_size)]).cpu()


def attack_batches(
    model: nn.Module, spec: Attack, images: Tensor, labels: Tensor, *, n_classes: int, seed: int,
    batch_size: int = 256, batches: range | None = None, desc: str | None = None,
) -> Tensor:
    """Adversarial examples for `images` (CPU tensors in [0, 1]) made batch by batch on the model's device.

    The random start of batch b is seeded from (`seed`, b), so an example meets the same attack whichever process
    attacks it: `batches` (default: all) is a data-parallel rank's share, and the result holds their examples
    in order. On CUDA the model runs under bf16 autocast and hands the attack fp32 logits.
    """
    device = next(model.parameters()).device
    attack = spec.build(precision.Fp32Logits(model), n_classes=n_classes, seed=seed)
    image_batches, label_batches = images.split(batch_size), labels.split(batch_size)
    adversarial = []
    for b in progress_bar(range(len(image_batches)) if batches is None else batches, desc=desc or spec.label,
                          leave=False):
        x, y = image_batches[b].to(device, non_blocking=True), label_batches[b].to(device, non_blocking=True)
        torch.manual_seed(seed * 100_003 + b)  # torchattacks draws random starts from the global generators
        x_adv = attack(x, y)
        check_adversarial(x_adv, x, spec.eps, spec.label, spec.norm)
        adversarial.append(x_adv.detach().cpu())
    return torch.cat(adversarial) if adversarial else images[:0]


def fitting_batch(step: Callable[[int], object], start: int, limit: int) -> int:
    """The largest batch size n = `start` x 2^k (n <= `limit`, k may be negative) for which `step(n)` runs without
    CUDA running out of memory: doubling while it fits, halving while even `start` does not."""
    if not 1 <= start <= limit:
        raise ValueError(f"need 1 <= start <= limit, got start={start}, limit={limit}")
    n, fitted = start, None
    while True:
        try:
            step(n)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            if fitted is not None:  # grown past the memory: the last size that fitted
                return fitted
            if n == 1:
                raise
            n //= 2
            continue
        if n < start or 2 * n > limit:  # found while halving, or at the limit
            return n
        fitted, n = n, 2 * n


def largest_batch(model: nn.Module, example: Tensor, *, start: int = 64, limit: int = 2048) -> int:
    """The largest batch of `start` x 2^k images (at most `limit`) for which one attack step on `model` (the forward
    and the input's gradient under `precision.autocast`, as the attacks run it) fits in the GPU's memory.

    A CPU returns `start`: memory rarely limits it there, and larger batches do not run faster. Under torchrun
    every rank gets the smallest rank's size, since the ranks split the attack by batches.
    """
    device = next(model.parameters()).device
    if device.type != "cuda":
        return start

    def attack_step(n: int) -> None:
        x = example[:1].to(device).expand(n, *example.shape[1:]).clone().requires_grad_(True)
        with precision.autocast(device):
            loss = model(x).float().logsumexp(dim=1).sum()
        torch.autograd.grad(loss, x)

    return distributed.min_across(fitting_batch(attack_step, start, limit))


def evaluate(
    pipeline: nn.Module,
    data: ImageData,
    attacks: Sequence[AttackSpec | ExternalAttack | TorchAttack],
    *,
    model_name: str,
    seed: int = 0,
    batch_size: int | Literal["auto"] = 256,
    device: torch.device | str | None = None,
    results: str | os.PathLike[str] | None = None,
    setup: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    audit: AuditReport | None = None,
    compile: str | None = None,
    precision: Precision = "auto",
    cache: bool = True,
) -> list[dict[str, Any]]:
    """Clean and robust accuracy of `pipeline` on `data` under each attack (an `AttackSpec`, or a `TorchAttack`
    configured by hand and bound to `pipeline`); append the records to `results`.

    Each record holds the accuracies with their 95% Wilson intervals and the per-example outcomes (clean, and
    clean-and-robust) with the digest of the example set, for paired comparisons (`results.compare_records`).
    With two or more attacks a last record, attack "worst case", counts an example as robust only if every
    attack left it correct.

    `setup` describes the model (pre-processor, foundation model, head) and is stored with every record, as is
    `training`, its convergence check (`cropkit.eval.convergence.training_fit`), where it was trained;
    `audit` is the model's full audit report, if one was run (otherwise the structural checks are run here).
    `compile` names a `torch.compile` backend ("inductor", PyTorch's default, for speed) through which the clean
    passes and the attacks run; None runs them eagerly. `precision="fp32"` runs everything in fp32 on CUDA too
    (default "auto": bf16 autocast on CUDA, fp32 on a CPU). `batch_size="auto"` takes the `largest_batch` that
    fits the GPU (256 on a CPU); the attacks' random starts are seeded per batch, so the batch size is recorded.
    Under torchrun every rank calls it alike: the clean pass is split by examples and the attacks by batches
    (`attack_batches`), the counts are summed across ranks, and rank 0 appends the records; the accuracies equal
    the one-process ones. `cache=False` attacks even where the outcomes are cached (module docstring).
    """
    choice(PRECISIONS, "precision")("precision", precision)
    boolean("cache", cache)
    with fp32(precision == "fp32"):  # the input checks run a forward pass too
        check_evaluation(pipeline, data, attacks, model_name=model_name, batch_size=batch_size, seed=seed,
                         results=results)
        return _evaluate(pipeline, data, [as_attack(a) for a in attacks], model_name=model_name, seed=seed,
                         batch_size=batch_size, device=device, results=results, setup=setup, training=training,
                         audit=audit, compile=compile, cache=cache)


def outcomes_dir() -> Path:
    """The folder of cached attack outcomes (module docstring)."""
    return cache_dir() / "evaluations"


def outcomes_path(model_key: str, data: ImageData, spec: Attack, **context: Any) -> Path:
    """Where the per-example outcomes of `spec` on `data` for the model `model_key` (`module_key`) are cached;
    `context` holds what else decides them (seed, batch size, precision, compile backend)."""
    fields = {"model": model_key, "attack": spec.settings(data.num_classes), "restarts": spec.restarts,
              "implementation": spec.implementation, **context}
    return measurement_path(outcomes_dir(), data, fields, recipe=EVAL_RECIPE_VERSION, suffix=".json")


def _evaluate(
    pipeline: nn.Module, data: ImageData, attacks: Sequence[Attack], *, model_name: str, seed: int,
    batch_size: int | Literal["auto"], device: torch.device | str | None, results: str | os.PathLike[str] | None,
    setup: dict[str, Any] | None, training: dict[str, Any] | None, audit: AuditReport | None, compile: str | None,
    cache: bool,
) -> list[dict[str, Any]]:
    device = resolve_device(device)
    pipeline = pipeline.to(device).eval()
    model = torch.compile(pipeline, backend=compile) if compile is not None else pipeline
    images, labels = data.tensors()
    n = len(labels)
    if batch_size == "auto":
        batch_size = largest_batch(pipeline, images[:1], start=256)
    if audit is None:
        audit = AuditReport(model_name, attacks[0].eps if attacks else 0.0,
                            structural_checks(pipeline, images[:SAMPLE], labels[:SAMPLE], data.num_classes), full=False)
    started = time.perf_counter()
    part = distributed.shard(n)
    correct = distributed.gather_rows(predict(model, _pinned(images[part], device), batch_size) == labels[part], n)
    clean_seconds = time.perf_counter() - started
    base = {
        "model": model_name,
        "setup": setup or {},
        **({"training": training} if training is not None else {}),
        "dataset": data.name,
        "split": data.split,
        "n_examples": n,
        "examples": data.digest(),
        "seed": seed,
        **accuracy_fields(correct, "clean"),
        "audit": audit.verdict(),
        "precision": describe(device),
        "compile": compile,
        "batch_size": batch_size,
        "processes": distributed.world_size(),
        **provenance(device),
    }
    records = []
    attacked, attacked_labels = _pinned(images[correct], device), labels[correct]
    n_batches = math.ceil(len(attacked_labels) / batch_size)
    batches = range(n_batches)[distributed.shard(n_batches)]
    rows = slice(batches.start * batch_size, batches.stop * batch_size)
    digest = module_key(pipeline) if cache and distributed.world_size() == 1 else None
    for spec in attacks:
        path = None if digest is None else outcomes_path(digest, data, spec, seed=seed, batch_size=batch_size,
                                                         precision=describe(device), compile=compile)
        if path is not None and path.is_file():
            with reading(path, f"delete it (the attack reruns): rm {path}"):
                saved = read_json(path)
                robust = torch.from_numpy(decode_outcomes(saved["robust"], n))
                if (robust & ~correct).any():  # also fails on a file of the wrong length
                    raise ValueError("examples robust there are misclassified clean here")
            replayed = {"cached": True} | {k: v for k, v in saved.items() if k != "robust"}  # runtime, checks
        else:
            started = time.perf_counter()
            with reference_checks() as flags:
                x_adv = attack_batches(model, spec, attacked, attacked_labels, n_classes=data.num_classes, seed=seed,
                                       batch_size=batch_size, batches=batches,
                                       desc=f"{model_name}: {spec.label_for(data.num_classes)} eps={spec.eps:.4g}")
            held = torch.zeros(len(attacked_labels), dtype=torch.int64)
            if len(x_adv):
                held[rows] = (predict(model, x_adv, batch_size) == attacked_labels[rows]).long()
            robust = torch.zeros(n, dtype=torch.bool)
            robust[correct] = distributed.sum_across(held).bool()
            kept = {"runtime_s": clean_seconds + time.perf_counter() - started}
            if spec.implementation == REFERENCE:
                kept["reference_checks"] = [vars(check) for check in flags]
            replayed = {"cached": False, **kept}
            if path is not None:
                write_json(path, {"robust": encode_outcomes(robust), **kept})
        records.append(base | {
            "attack": spec.label_for(data.num_classes),
            "threat_model": spec.norm,
            "eps": spec.eps,
            "attack_settings": spec.settings(data.num_classes),
            "implementation": spec.implementation,
            **accuracy_fields(robust, "robust"),
            "outcomes": {"clean": encode_outcomes(correct), "robust": encode_outcomes(robust)},
            **replayed,
        })
    if len({(spec.eps, spec.norm) for spec in attacks}) == 1 and len(attacks) > 1:
        records.append(worst_case(records))
    if results is not None and distributed.is_main():
        append_records(results, records)
    return records
