"""The audit's vocabulary and its cheap half: named pass/fail checks and the structural checks.

`structural_checks` needs no attack (eval mode, determinism, logits out, usable input gradients), so
`cropkit.eval.evaluate` runs it on every evaluation and each record says whether the attacked model passed; the
attack-based checks live in `cropkit.eval.audit`. `evaluate` puts the pipeline in eval mode before checking, so
there the train-mode check holds by construction; `audit.run` checks the pipeline as it was handed over.

The reference AutoAttack (`autoattack-original`) runs automatic checks of its own, which torchattacks' port lacks;
`reference_checks` collects the warnings they log into `Check`s, which `evaluate` stores in the reference's records
(`reference_checks`) and `audit.run` adds to its report when its strong attack is the reference.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

SAMPLE = 32  # images the structural checks run on
REFERENCE_LOGGER = "auto-attack"  # where the reference AutoAttack's checks (pyautoattack/checks.py) warn
# Each check of the reference, named as the kit names it, and a phrase of the warning it logs when it flags.
REFERENCE_FLAGS = {"reference: not a randomized defence": "randomized defense",
                   "reference: returns logits, not probabilities": "probability distribution",
                   "reference: no zero input gradients": "zero gradient",
                   "reference: not a dynamic defence": "dynamic defense",
                   "reference: usable target classes": "classes",
                   "reference: Square not above the white-box attacks": "Square Attack has decreased"}


@dataclass(frozen=True)
class Check:
    """One audit check: its name, whether it passed, and the numbers that decided it."""

    name: str
    passed: bool
    evidence: str


@dataclass
class AuditReport:
    """The checks of one model, and the curves they were read from (accuracy vs eps, vs PGD steps)."""

    model: str
    eps: float
    checks: list[Check]
    curves: dict[str, dict[float, float]] = field(default_factory=dict)
    full: bool = True
    records: list[dict[str, Any]] = field(default_factory=list)  # the evaluations the curves were read from

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def verdict(self) -> dict[str, Any]:
        """What every evaluation record stores about the audit: its level, whether it passed, what failed."""
        return {"level": "full" if self.full else "structural", "passed": self.passed,
                "failed": [c.name for c in self.checks if not c.passed]}

    def table(self) -> pd.DataFrame:
        return pd.DataFrame([{"model": self.model, "check": c.name, "passed": c.passed, "evidence": c.evidence}
                             for c in self.checks])


def structural_checks(pipeline: nn.Module, x: Tensor, y: Tensor, num_classes: int) -> list[Check]:
    """The checks that need no attack: eval mode, determinism, logits out, usable input gradients."""
    training = [name or type(pipeline).__name__ for name, m in pipeline.named_modules() if m.training]
    checks = [Check("no module in train mode", not training,
                    f"in train mode: {', '.join(training[:5])}" if training else "every module in eval mode")]
    device = next(pipeline.parameters()).device
    x, y = x.to(device), y.to(device)
    with torch.inference_mode():
        first, second = pipeline(x).float(), pipeline(x).float()
    checks.append(Check("deterministic forward pass", torch.allclose(first, second, rtol=1e-4, atol=1e-5),
                        f"max difference between two passes {float((first - second).abs().max()):.2g}"))
    shape_ok = first.ndim == 2 and first.shape == (len(x), num_classes)
    sums_to_one = torch.allclose(first.sum(1), torch.ones_like(first[:, 0]), atol=1e-4) if shape_ok else False
    probabilities = bool(shape_ok and first.min() >= 0 and sums_to_one)
    note = "; rows are probabilities (a softmax inside the model weakens CE attacks)" if probabilities else ""
    checks.append(Check("returns logits", shape_ok and not probabilities,
                        f"output {tuple(first.shape)}, expected ({len(x)}, {num_classes}){note}"))
    checks.append(_gradient_check(pipeline, x, y))
    return checks


def input_gradient(pipeline: nn.Module, x: Tensor, y: Tensor) -> Tensor | None:
    """d CE / d x through the whole pipeline, or None when autograd cannot reach the input (a detach inside)."""
    device = next(pipeline.parameters()).device
    probe = x.to(device).clone().requires_grad_(True)
    loss = F.cross_entropy(pipeline(probe).float(), y.to(device), reduction="sum")
    if not loss.requires_grad:
        return None
    (grad,) = torch.autograd.grad(loss, probe, allow_unused=True)
    return grad


def _gradient_check(pipeline: nn.Module, x: Tensor, y: Tensor) -> Check:
    name = "input gradients finite and non-zero"
    grad = input_gradient(pipeline, x, y)
    if grad is None:
        return Check(name, False, "no gradient reaches the input (a detach or no_grad inside the pipeline)")
    finite = bool(torch.isfinite(grad).all())
    nonzero = float((grad.flatten(1).abs().sum(1) > 0).float().mean())
    return Check(name, finite and nonzero >= 0.9,
                 f"finite: {finite}; examples with a non-zero gradient: {nonzero:.0%} (needs >= 90%)")


class _Collected(logging.Handler):
    """A logging handler that keeps the messages it is handed."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def reference_checks() -> Iterator[list[Check]]:
    """The reference AutoAttack's automatic checks run inside the block, as `Check`s (one per check in
    `REFERENCE_FLAGS`, failed where it warned, its warnings the evidence): filled in when the block ends. A check
    that found nothing to flag (or did not run: Square's when no example reached it) passes."""
    logger, handler = logging.getLogger(REFERENCE_LOGGER), _Collected()
    checks: list[Check] = []
    logger.addHandler(handler)
    try:
        yield checks
    finally:
        logger.removeHandler(handler)
        messages = list(dict.fromkeys(handler.messages))  # each batch repeats the checks
        for name, phrase in REFERENCE_FLAGS.items():
            flagged = [m for m in messages if phrase in m]
            checks.append(Check(name, not flagged, "; ".join(flagged) or "not flagged"))
