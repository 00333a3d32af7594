"""A robustness audit that catches gradient masking (obfuscated gradients, Athalye et al. 2018).

A pre-processor in front of a classifier is the textbook setting for robustness that is only apparent: the
attack fails because its gradients are useless, not because the model is robust. `run` attacks the whole
pipeline in several ways and returns named checks, each pass/fail with its evidence:
- structural (`cropkit.eval.checks.structural_checks`, cheap, also run by `cropkit.eval.evaluate` on every evaluation):
  no module in train mode, a deterministic forward pass, logits rather than probabilities out, finite and
  non-zero input gradients of the cross-entropy;
- accuracy falls monotonically with eps and is near zero at a large eps;
- more PGD steps and random restarts never raise robust accuracy, and the strong attack is not above PGD;
- adversarial examples transferred from an undefended reference pipeline are weaker than the white-box attack;
- with the reference AutoAttack as the strong attack (`autoattack-original`), its own automatic checks beside these
  (`cropkit.eval.checks.reference_checks`), which torchattacks' port lacks.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from functools import partial
from typing import Any

from torch import nn

from cropkit.core.validate import items, require
from cropkit.data import ImageData
from cropkit.eval.attacks import AttackSpec, pgd
from cropkit.eval.checks import SAMPLE, AuditReport, Check, input_gradient, structural_checks
from cropkit.eval.evaluate import attack_batches, evaluate, predict

__all__ = ["AuditReport", "Check", "run", "structural_checks"]


def _evaluations(pipeline: nn.Module, data: ImageData, specs: Sequence[AttackSpec], seed: int,
                 structural: AuditReport, kept: list[dict[str, Any]]) -> list[float]:
    """Robust accuracy under each spec (the structural checks already ran: `evaluate` need not repeat them); the
    per-attack records are added to `kept`."""
    records = [r for r in evaluate(pipeline, data, specs, model_name=structural.model, seed=seed, audit=structural)
               if r["attack"] != "worst case"]
    kept += records
    return [r["robust_accuracy"] for r in records]


def _with_interval(records: list[dict[str, Any]], accuracy: float) -> str:
    """'54.0% [40.4, 67.0]': an accuracy the audit measured, with the 95% interval of its record."""
    record = next(r for r in reversed(records) if r["robust_accuracy"] == accuracy)
    low, high = record["robust_interval"]
    return f"{accuracy:.1%} [{100 * low:.1f}, {100 * high:.1f}]"


def run(
    pipeline: nn.Module, data: ImageData, eps: float, *, model: str = "model", reference: nn.Module | None = None,
    eps_factors: Sequence[float] = (0.25, 0.5, 1, 2, 4, 8), steps: Sequence[int] = (1, 5, 10, 20, 50),
    restarts: int = 3, strong: AttackSpec | None = None, tolerance: float | None = None, near_zero: float = 0.05,
    seed: int = 0,
) -> AuditReport:
    """Audit `pipeline` on `data` at radius `eps`; `reference` is the undefended pipeline for the transfer check
    (skipped when absent or when it is `pipeline` itself). `steps` must include 10 and a larger count.

    `tolerance` is the slack allowed for the attacks' random starts when one accuracy must not exceed another
    (default: two examples' worth, at least 2 points); `near_zero` the accuracy the largest eps
    (eps * max(eps_factors), capped at 1) must reach.
    """
    eps_factors = items("eps_factors", eps_factors, numbers.Real, "number", "pass multiples of eps to attack at, "
                        "e.g. (0.25, 0.5, 1, 2, 4, 8)")
    steps_fix = "pass PGD step counts including 10 and a larger one, e.g. (1, 5, 10, 20, 50)"
    steps = items("steps", steps, numbers.Integral, "whole number", steps_fix)
    require(10 in steps and max(steps) > 10, "steps", steps, "must include 10 and a larger count (the checks compare "
            "with PGD-10)", steps_fix)
    x, y = data.tensors()
    tolerance = max(0.02, 2 / len(y)) if tolerance is None else tolerance
    checks = structural_checks(pipeline, x[:SAMPLE], y[:SAMPLE], data.num_classes)
    structural = AuditReport(model, eps, list(checks), full=False)
    if input_gradient(pipeline, x[:8], y[:8]) is None:
        skipped = Check("white-box attacks run", False, "skipped: no gradient reaches the input, so no gradient "
                        "attack can run; robustness under such a model is not evidence of anything")
        return AuditReport(model, eps, [*checks, skipped])
    clean = float((predict(pipeline.eval(), x) == y).float().mean())  # attacked in eval mode, as evaluate does

    kept: list[dict[str, Any]] = []
    shown = partial(_with_interval, kept)
    radii = sorted({min(1.0, eps * f) for f in eps_factors})
    by_eps = dict(zip(radii, _evaluations(pipeline, data, [pgd(r, 10) for r in radii], seed, structural, kept)))
    curve = [clean, *by_eps.values()]
    rises = [(a, b) for a, b in zip(curve, curve[1:]) if b > a + tolerance]
    checks.append(Check("accuracy falls as eps grows", not rises,
                        "PGD-10 accuracy at eps " + ", ".join(f"{r:.3g}: {shown(a)}" for r, a in by_eps.items())
                        + f" (clean {clean:.1%})"))
    checks.append(Check("near zero at a large eps", by_eps[radii[-1]] <= near_zero,
                        f"{shown(by_eps[radii[-1]])} at eps {radii[-1]:.3g} (needs <= {near_zero:.0%})"))

    by_steps = dict(zip(steps, _evaluations(pipeline, data, [pgd(eps, s) for s in steps], seed, structural, kept)))
    ten = by_steps[10]
    longer = [(s, a) for s, a in sorted(by_steps.items()) if s >= 10]
    gains = [(s, a) for (_, before), (s, a) in zip(longer, longer[1:]) if a > before + tolerance]
    checks.append(Check("more steps never help the model", not gains,
                        ", ".join(f"PGD-{s} {shown(a)}" for s, a in longer)))
    # An independently seeded run: restarts that share the single run's seed would repeat its first start.
    (restarted,) = _evaluations(pipeline, data, [pgd(eps, 10, restarts=restarts)], seed + 1, structural, kept)
    checks.append(Check("restarts never help the model", restarted <= ten + tolerance,
                        f"PGD-10 {shown(ten)}, PGD-10 x{restarts} restarts (other seed) {shown(restarted)}"))
    strong = strong or AttackSpec("apgd", eps, steps=10)
    (strong_accuracy,) = _evaluations(pipeline, data, [strong], seed, structural, kept)
    best_pgd = min(restarted, *by_steps.values())
    checks.append(Check("strong attack not above PGD", strong_accuracy <= best_pgd + tolerance,
                        f"{strong.label} {shown(strong_accuracy)}, best PGD {shown(best_pgd)}"))
    checks += [Check(**flag) for flag in kept[-1].get("reference_checks", [])]
    if reference is not None and reference is not pipeline:
        checks.append(_transfer_check(pipeline, reference, data, eps, ten, seed, tolerance))
    curves = {"accuracy vs eps": {0.0: clean, **by_eps}, "accuracy vs PGD steps": dict(by_steps)}
    return AuditReport(model, eps, checks, curves, records=kept)


def _transfer_check(pipeline: nn.Module, reference: nn.Module, data: ImageData, eps: float, white_box: float,
                    seed: int, tolerance: float) -> Check:
    """PGD-10 examples made on `reference`, scored on `pipeline`: a white-box attack should do at least as well."""
    x, y = data.tensors()
    x_adv = attack_batches(reference.eval(), pgd(eps, 10), x, y, n_classes=data.num_classes, seed=seed)
    transferred = float(((predict(pipeline, x) == y) & (predict(pipeline, x_adv) == y)).float().mean())
    return Check("transfer attack weaker than white-box", transferred + tolerance >= white_box,
                 f"transferred from the reference {transferred:.1%}, white-box PGD-10 {white_box:.1%}")
