"""One call for a RobustBench-style evaluation of a model: `benchmark(model, dataset, eps=..., model_name=...)`.

It takes `n` seeded test examples, runs `evaluate` with PGD and a strong attack (APGD-CE then APGD-T by default,
which fits a CPU; `attack="autoattack-original"` for headline numbers), and writes beside each other, under
`<results_dir>/<dataset>/Linf/` as RobustBench lays out `model_info/`:
- `<model_name>.jsonl`: the evaluation records (accuracies, intervals, per-example outcomes, provenance), appended;
- `<model_name>.json`: the model's card, replaced atomically. Its top-level fields are RobustBench's submission
  fields (`link`, `name`, `authors`, `additional_data`, `number_forward_passes`, `dataset`, `venue`, `architecture`,
  `eps`, `clean_acc`, `reported`, `autoattack_acc`, `footnote`, `unreliable`), accuracies in percent as strings;
  the kit's own fields (intervals, example digest, seeds, attack settings and versions, audit verdict, the records
  file) sit under `cropkit`. `autoattack_acc` is filled only by AutoAttack's strength (`autoattack-original`): a
  weaker attack's number is not AutoAttack's, and the footnote says which attack gave `cropkit.robust_acc`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from cropkit import __version__
from cropkit.core import distributed
from cropkit.core.checkpoint import module_digest, write_json
from cropkit.core.paths import output
from cropkit.core.validate import choice, integer, optional, radius, require, text
from cropkit.data import ImageData, load_dataset
from cropkit.eval.attacks import KINDS, AttackKind, AttackSpec, pgd
from cropkit.eval.checks import AuditReport
from cropkit.eval.evaluate import EVAL_RECIPE_VERSION, evaluate
from cropkit.eval.stats import format_accuracy

THREAT_MODELS = ("Linf",)  # L2 needs L2 attacks, which the kit does not have yet
SUBMISSION_FIELDS = ("link", "name", "authors", "additional_data", "number_forward_passes", "venue", "architecture",
                     "reported", "footnote")  # the RobustBench fields only the model's authors know
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")  # names the card's file, as RobustBench's model names do
PIPELINE_PARTS = ("preprocessor", "foundation", "head")  # a cropkit Pipeline's parts, named on its card


@dataclass(frozen=True)
class BenchmarkResult:
    """What `benchmark` measured (accuracies in [0, 1] with 95% Wilson intervals), the audit verdict and its files."""

    model: str
    attack: str  # the strong attack's label
    eps: float
    n_examples: int
    clean_accuracy: float
    clean_interval: tuple[float, float]
    robust_accuracy: float  # under the strong attack
    robust_interval: tuple[float, float]
    worst_case_accuracy: float  # robust to PGD and to the strong attack, per example
    worst_case_interval: tuple[float, float]
    audit: dict[str, Any]
    card: Path
    records: Path

    def __str__(self) -> str:
        audit = "passed" if self.audit["passed"] else f"failed ({', '.join(self.audit['failed'])})"
        return (f"{self.model} at eps {self.eps:.4g}, n = {self.n_examples}: clean "
                f"{format_accuracy(self.clean_accuracy, self.clean_interval)}, {self.attack} "
                f"{format_accuracy(self.robust_accuracy, self.robust_interval)}, worst case "
                f"{format_accuracy(self.worst_case_accuracy, self.worst_case_interval)}; "
                f"{self.audit['level']} audit {audit}; card {self.card}")


def benchmark(
    model: nn.Module,
    dataset: ImageData | str | os.PathLike[str],
    threat_model: str = "Linf",
    *,
    eps: float,
    model_name: str,
    n: int | None = None,
    attack: AttackKind = "apgd",
    steps: int = 100,
    pgd_steps: int = 10,
    seed: int = 0,
    results_dir: str | os.PathLike[str] = "results/benchmark",
    license: str = "unknown",
    submission: Mapping[str, Any] | None = None,
    audit: AuditReport | None = None,
    batch_size: int | Literal["auto"] = 256,
    device: torch.device | str | None = None,
) -> BenchmarkResult:
    """Clean accuracy and robust accuracy of `model` ([0, 1] images in, logits out) under PGD and a strong attack
    at L-inf radius `eps` on `n` test examples (seeded by `seed`, as are the attacks); write its card (module
    docstring) and return the numbers.

    `dataset` is an `ImageData` or a dataset name, whose test split is used; `n=None` takes every example, as
    RobustBench's leaderboard does. `attack` is an `AttackSpec` kind, run with `steps` iterations (the AutoAttack
    kinds fix their own); PGD runs `pgd_steps`. `submission` fills the RobustBench fields the kit cannot know
    (`SUBMISSION_FIELDS`, e.g. `link`, `venue`, `additional_data`: False unless given). `audit` is the model's
    full gradient-masking audit at this eps (`cropkit.eval.audit.run`); without one the card carries the
    structural checks' verdict, and a failed audit marks the card `unreliable`. Relative `results_dir`s are taken
    from the project root (`$CROPKIT_OUT` if set). Every argument is checked before any work starts.
    """
    require(isinstance(model, nn.Module), "model", model, "not a torch module",
            "pass a cropkit.foundation.Pipeline (or any module from [0, 1] images to logits)")
    require(isinstance(dataset, (ImageData, str, os.PathLike)), "dataset", dataset,
            "not a dataset name or an ImageData",
            "pass a name such as 'mnist5k' (its test split is used) or an ImageData")
    if not isinstance(dataset, ImageData):
        text("dataset", os.fspath(dataset))
    require(threat_model in THREAT_MODELS, "threat_model", threat_model,
            "not supported: only 'Linf' is (L2 is not supported yet: the kit's attacks are L-inf)",
            "pass threat_model='Linf'")
    radius("eps", eps)
    require(eps > 0, "eps", eps, "a radius of 0 attacks nothing, so robust accuracy would be clean accuracy",
            "pass a radius in (0, 1], e.g. 8/255")
    require(isinstance(model_name, str) and MODEL_NAME.fullmatch(model_name) is not None, "model_name", model_name,
            "names the card's file, so it needs letters, digits, '.', '_', '-' or '+' only",
            "pass a name such as 'Smith2025Cropd_ViT-B' (RobustBench's <Name><Year><FirstWordOfTheTitle>)")
    optional(integer(1, why="a benchmark needs examples"))("n", n)
    choice(KINDS, "attack")("attack", attack)
    integer(1)("steps", steps)
    integer(1)("pgd_steps", pgd_steps)
    integer(0)("seed", seed)
    require(isinstance(results_dir, (str, os.PathLike)), "results_dir", results_dir, "not a path",
            "pass a folder such as 'results/benchmark'")
    text("license", license)
    fields = _submission(submission)
    require(audit is None or (isinstance(audit, AuditReport) and audit.eps == eps), "audit", audit,
            "not an AuditReport at this eps: another radius's verdict does not vouch for this one",
            f"pass cropkit.eval.audit.run(model, data, {eps:.4g}), or None for the structural checks")

    data = (dataset if isinstance(dataset, ImageData) else load_dataset(dataset, "test")).take(n, seed)
    folder = output(results_dir) / _slug(data.name) / threat_model
    card_path, records_path = folder / f"{model_name}.json", folder / f"{model_name}.jsonl"
    strong_spec = AttackSpec(attack, eps, steps=steps)
    described = architecture(model)
    records = evaluate(model, data, [pgd(eps, pgd_steps), strong_spec], model_name=model_name, seed=seed,
                       batch_size=batch_size, device=device, results=records_path, audit=audit,
                       setup={"architecture": described, "benchmark": str(card_path)})
    _, strong, worst = records
    verdict = strong["audit"]
    robust_acc = _percent(strong["robust_accuracy"])
    notes = [fields.pop("footnote", None)]
    if attack != "autoattack-original":
        notes.append(f"Robust accuracy {robust_acc}% under {strong['attack']} ({strong['implementation']}), not "
                     "AutoAttack: autoattack_acc is left empty.")
    if not verdict["passed"]:
        notes.append(f"The {verdict['level']} gradient-masking audit failed: {', '.join(verdict['failed'])}.")
    card = {
        "link": None, "name": None, "authors": None, "additional_data": False, "number_forward_passes": 1,
        "dataset": data.name, "venue": None, "architecture": described, "eps": _eps_text(eps),
        "clean_acc": _percent(strong["clean_accuracy"]), "reported": None,
        "autoattack_acc": robust_acc if attack == "autoattack-original" else None,
        "footnote": " ".join(note for note in notes if note) or None, "unreliable": not verdict["passed"],
        **fields,
        "cropkit": {
            "version": __version__,
            "model": model_name,
            "license": license,
            "threat_model": threat_model,
            "eps": eps,
            "split": data.split,
            "n_examples": strong["n_examples"],
            "examples": strong["examples"],
            "seeds": {"examples": seed, "attacks": seed},
            "weights": module_digest(model),
            "parameters": sum(p.numel() for p in model.parameters()),
            "clean": {"accuracy": strong["clean_accuracy"], "interval": strong["clean_interval"]},
            "robust_acc": robust_acc,
            "worst_case_acc": _percent(worst["robust_accuracy"]),
            "attacks": [{"attack": r["attack"], "accuracy": r["robust_accuracy"], "interval": r["robust_interval"],
                         "settings": r["attack_settings"], "runtime_s": r["runtime_s"], "cached": r["cached"]}
                        for r in records],
            "evaluation": {"method": strong["attack"], "settings": strong["attack_settings"],
                           "implementation": strong["implementation"], "recipe": EVAL_RECIPE_VERSION},
            "audit": verdict,
            "records": {"file": str(records_path), "timestamp": strong["timestamp"]},
            **{key: strong[key] for key in ("device", "versions", "commit", "timestamp", "run_id")},
        },
    }
    if distributed.is_main():
        write_json(card_path, card)
    return BenchmarkResult(
        model=model_name, attack=strong["attack"], eps=eps, n_examples=strong["n_examples"],
        clean_accuracy=strong["clean_accuracy"], clean_interval=tuple(strong["clean_interval"]),
        robust_accuracy=strong["robust_accuracy"], robust_interval=tuple(strong["robust_interval"]),
        worst_case_accuracy=worst["robust_accuracy"], worst_case_interval=tuple(worst["robust_interval"]),
        audit=verdict, card=card_path, records=records_path)


def architecture(model: nn.Module) -> str:
    """What a card calls `model`: a pipeline by its parts ("ConvAutoEncoder + FoundationModel (vit-mae) +
    LinearHead", an Identity pre-processor left out), any other module by its class and `name`, if it has one."""
    parts = [getattr(model, part, None) for part in PIPELINE_PARTS]
    if all(isinstance(part, nn.Module) for part in parts):
        return " + ".join(_named(part) for part in parts if not isinstance(part, nn.Identity))
    return _named(model)


def _named(module: nn.Module) -> str:
    name = getattr(module, "name", None)
    return f"{type(module).__name__} ({name})" if isinstance(name, str) and name else type(module).__name__


def _submission(submission: Mapping[str, Any] | None) -> dict[str, Any]:
    """The RobustBench fields the caller fills, checked: known names, RobustBench's types (strings, but a bool
    `additional_data` and a whole `number_forward_passes`)."""
    if submission is None:
        return {}
    require(isinstance(submission, Mapping), "submission", submission, "not a mapping",
            "pass a dict such as {'link': 'https://arxiv.org/abs/...', 'venue': 'ICML 2025'}")
    for key, value in submission.items():
        require(key in SUBMISSION_FIELDS, "submission", submission, f"{key!r} is not a field the caller fills",
                f"use the fields {SUBMISSION_FIELDS} (the kit fills the accuracies, eps and dataset)")
        if key == "additional_data":
            require(isinstance(value, bool), f"submission[{key!r}]", value, "not a bool", "pass True or False")
        elif key == "number_forward_passes":
            integer(1)(f"submission[{key!r}]", value)
        else:
            require(isinstance(value, str), f"submission[{key!r}]", value, "not a string",
                    "pass a string, as RobustBench's cards hold them (e.g. 'reported': '58.0')")
    return dict(submission)


def _percent(accuracy: float) -> str:
    """An accuracy as RobustBench's cards write it: percent to two decimals, as a string ("53.42")."""
    return str(round(100 * accuracy, 2))


def _eps_text(eps: float) -> str:
    """eps as RobustBench's cards write it: "8/255" for a whole number of 255ths, else the number ("0.3")."""
    levels = eps * 255
    return f"{round(levels)}/255" if abs(levels - round(levels)) < 1e-6 else f"{eps:g}"


def _slug(name: str) -> str:
    """A dataset name as a folder name ("cifar10-subset[cat,dog]" -> "cifar10-subset-cat-dog")."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "dataset"
