"""L-inf attacks from torchattacks, described by a small spec so that every number names how it was made.

Kinds: `fgsm`, `pgd` (eps, step, steps, random start, restarts), `apgd-ce` (APGD on the cross-entropy alone,
`steps` iterations: PGD with AutoAttack's adaptive step size, at PGD's cost), `apgd` (APGD-CE then APGD-T,
AutoAttack's two gradient-based components, `steps` each: the strong attack that fits a CPU budget), `autoattack`
(torchattacks' own composition, whose APGD / APGD-T / FAB-T run 10 iterations each and target n_classes - 1
classes) and `autoattack-original` (the strength of the original AutoAttack standard version: APGD-CE, APGD-T
and FAB-T with 100 steps and at most 9 target classes, Square with 5,000 queries). Use the latter for headline
numbers. The strong kinds always get the number of classes and a seed.

Tasks with fewer than four classes (the original AutoAttack's `checks.check_n_classes`: the DLR loss needs three
classes, its targeted form four): APGD-T is replaced by untargeted APGD-DLR with three classes and dropped with
two, where APGD-CE's loss is a monotone function of the margin; FAB-T targets the n_classes - 1 other classes;
Square's margin loss needs no change. `AttackSpec.components(n_classes)` is the list that runs and is recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torchattacks
from torch import nn

from cropkit.core.validate import boolean, check_fields, choice, integer, optional, positive, radius

AttackKind = Literal["fgsm", "pgd", "apgd-ce", "apgd", "autoattack", "autoattack-original"]
KINDS: tuple[str, ...] = ("fgsm", "pgd", "apgd-ce", "apgd", "autoattack", "autoattack-original")
IMPLEMENTATION = f"torchattacks {torchattacks.__version__}"
MAX_TARGETS = 9  # the original AutoAttack's APGD-T and FAB-T target the 9 highest-scored wrong classes
STEPS = {"autoattack": 10, "autoattack-original": 100}  # per component; the APGD kinds take the spec's steps
SQUARE_QUERIES = 5000


def validate_eps(eps: float, name: str = "eps") -> float:
    """An L-inf radius for images in [0, 1]: 0 <= eps <= 1 (a value such as 8 means 8/255 was intended)."""
    radius(name, eps)
    return float(eps)


@dataclass(frozen=True)
class Component:
    """One torchattacks attack of a strong composition: iterations (queries for Square) and target classes."""

    name: Literal["APGD-CE", "APGD-DLR", "APGD-T", "FAB-T", "Square"]
    steps: int
    targets: int | None = None

    def __str__(self) -> str:
        budget = f"{self.steps} queries" if self.name == "Square" else f"{self.steps} steps"
        return f"{self.name} ({budget}" + (f", {self.targets} targets)" if self.targets is not None else ")")

    def build(self, model: nn.Module, eps: float, n_classes: int, seed: int) -> torchattacks.Attack:
        if self.name in ("APGD-CE", "APGD-DLR"):
            return torchattacks.APGD(model, norm="Linf", eps=eps, steps=self.steps, n_restarts=1,
                                     loss="ce" if self.name == "APGD-CE" else "dlr", seed=seed)
        if self.name == "Square":
            return torchattacks.Square(model, norm="Linf", eps=eps, n_queries=self.steps, n_restarts=1, seed=seed)
        if self.name == "APGD-T":
            attack = torchattacks.APGDT(model, norm="Linf", eps=eps, steps=self.steps, n_restarts=1,
                                        n_classes=n_classes, seed=seed)
        else:
            attack = torchattacks.FAB(model, norm="Linf", eps=eps, steps=self.steps, n_restarts=1,
                                      multi_targeted=True, n_classes=n_classes, seed=seed)
        attack.n_target_classes = self.targets  # torchattacks would take n_classes - 1
        return attack


@dataclass(frozen=True)
class AttackSpec:
    """One L-inf attack. `step` defaults to 2.5 * eps / steps (Madry et al.); `restarts` keeps the worst case."""

    kind: AttackKind
    eps: float
    steps: int = 10
    step: float | None = None
    random_start: bool = True
    restarts: int = 1

    def __post_init__(self) -> None:
        check_fields(self, kind=choice(KINDS, "attack"), eps=radius, steps=integer(1), step=optional(positive),
                     random_start=boolean, restarts=integer(1))

    @property
    def step_size(self) -> float:
        return self.step if self.step is not None else 2.5 * self.eps / self.steps

    @property
    def label(self) -> str:
        """Short name for tables: FGSM, PGD-10, PGD-20x5 (5 restarts), AutoAttack (torchattacks), AutoAttack.

        The strong kinds are named by their four-class composition; `components` says what ran on fewer classes."""
        if self.kind == "pgd":
            return f"PGD-{self.steps}" + (f"x{self.restarts}" if self.restarts > 1 else "")
        if self.kind in ("apgd-ce", "apgd"):
            return f"APGD-{'CE' if self.kind == 'apgd-ce' else 'CE+T'}-{self.steps}"
        return {"fgsm": "FGSM", "autoattack": "AutoAttack (torchattacks)", "autoattack-original": "AutoAttack"}[self.kind]

    @property
    def always_perturbs(self) -> bool:
        """Whether the attack returns its final perturbed point for every example. FGSM and single-run PGD do;
        restarts and the strong kinds (torchattacks' MultiAttack, APGD) return the clean input wherever they
        failed to change the prediction."""
        return self.kind == "fgsm" or (self.kind == "pgd" and self.restarts == 1)

    def components(self, n_classes: int) -> tuple[Component, ...]:
        """The attacks the strong kinds run on an `n_classes`-way task, in order; empty for FGSM and PGD."""
        if n_classes < 2:
            raise ValueError(f"n_classes must be >= 2 for a classification attack, got {n_classes}")
        if self.kind in ("fgsm", "pgd"):
            return ()
        steps = STEPS.get(self.kind, self.steps)
        targets = n_classes - 1 if self.kind == "autoattack" else min(n_classes - 1, MAX_TARGETS)
        parts = [Component("APGD-CE", steps)]
        if self.kind == "apgd-ce":
            return tuple(parts)
        if n_classes >= 4:
            parts.append(Component("APGD-T", steps, targets))
        elif n_classes == 3:
            parts.append(Component("APGD-DLR", steps))
        if self.kind in STEPS:
            parts += [Component("FAB-T", steps, targets), Component("Square", SQUARE_QUERIES)]
        return tuple(parts)

    def settings(self, n_classes: int) -> dict[str, Any]:
        """Everything needed to rerun the attack on an `n_classes`-way task, as recorded with each result."""
        settings: dict[str, Any] = {"kind": self.kind, "eps": self.eps, "norm": "Linf"}
        if self.kind == "pgd":
            settings |= {"steps": self.steps, "step": self.step_size, "random_start": self.random_start,
                         "restarts": self.restarts}
        components = self.components(n_classes)
        if components:
            targets = [c.targets for c in components if c.targets is not None]
            settings |= {"n_classes": n_classes, "components": ", ".join(map(str, components)),
                         "target_classes": targets[0] if targets else 0}
        if self.kind in ("apgd-ce", "apgd"):
            settings["steps"] = self.steps
        elif self.kind == "autoattack":
            settings["version"] = "standard"
        return settings

    def build(self, model: nn.Module, n_classes: int, seed: int) -> torchattacks.Attack:
        """The torchattacks object attacking `model` (which takes [0, 1] images and returns logits)."""
        eps = self.eps
        if self.kind == "fgsm":
            return torchattacks.FGSM(model, eps=eps)
        if self.kind == "pgd":
            pgd = [torchattacks.PGD(model, eps=eps, alpha=self.step_size, steps=self.steps,
                                    random_start=self.random_start) for _ in range(self.restarts)]
            return pgd[0] if self.restarts == 1 else torchattacks.MultiAttack(pgd)
        attacks = [c.build(model, eps, n_classes, seed) for c in self.components(n_classes)]
        return attacks[0] if len(attacks) == 1 else torchattacks.MultiAttack(attacks)


def pgd(eps: float, steps: int = 10, **kwargs: Any) -> AttackSpec:
    """Shorthand for a PGD spec."""
    return AttackSpec("pgd", eps, steps=steps, **kwargs)
