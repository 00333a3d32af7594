"""Attacks from torchattacks and the reference AutoAttack, described by a small spec so that every number names how
it was made (the records' `implementation`: library and version).

Kinds: `fgsm`, `pgd` (eps, step, steps, random start, restarts), `apgd-ce` (APGD on the cross-entropy alone,
`steps` iterations: PGD with AutoAttack's adaptive step size, at PGD's cost), `apgd` (APGD-CE then APGD-T,
AutoAttack's two gradient-based components, `steps` each: the strong attack that fits a CPU budget), `autoattack`
(torchattacks' own composition, whose APGD / APGD-T / FAB-T run 10 iterations each and target n_classes - 1
classes), `autoattack-port` (torchattacks' attacks composed at the strength of the original AutoAttack standard
version: APGD-CE, APGD-T and FAB-T with 100 steps and at most 9 target classes, Square with 5,000 queries) and
`autoattack-original`: Croce & Hein's own implementation (`pyautoattack`, the reference), standard version, whose
automatic checks (randomness, probabilities out, zero gradients, Square beating the white-box attacks, ...) land in
each record (`cropkit.eval.checks.reference_checks`). Use the reference for headline numbers; notebook 08 checks the
port and the quick profile's strong attack against it, paired. The strong kinds always get the number of classes and
a seed.

Tasks with fewer than four classes (the original AutoAttack's `checks.check_n_classes`: the DLR loss needs three
classes, its targeted form four): APGD-T is replaced by untargeted APGD-DLR with three classes and dropped with
two, where APGD-CE's loss is a monotone function of the margin; FAB-T targets the n_classes - 1 other classes;
Square's margin loss needs no change. `AttackSpec.components(n_classes)` is the list that runs and is recorded; the
reference runs the same list, at its own fixed budget.

`norm="L2"` makes `pgd`, `apgd-ce` and `apgd` L2 attacks (torchattacks' PGDL2, APGD and APGD-T with norm L2; eps an
L2 radius in pixel units of [0, 1] images); their labels end in "(L2)", every record carries the norm as its
`threat_model`. Any torchattacks attack (`torchattacks.attack.Attack`) configured by hand (an EOT attack, an L2 PGD with other settings, ...)
is evaluated as it is through `ExternalAttack`: its class and public settings are its provenance and its cache key,
and it must be bound to the pipeline that is evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import pyautoattack
import torchattacks
from torch import Tensor, nn
from torchattacks.attack import Attack as TorchAttack

from cropkit.core.validate import (
    boolean,
    check_fields,
    choice,
    integer,
    non_negative,
    optional,
    positive,
    radius,
    require,
)

AttackKind = Literal["fgsm", "pgd", "apgd-ce", "apgd", "autoattack", "autoattack-port", "autoattack-original"]
KINDS: tuple[str, ...] = ("fgsm", "pgd", "apgd-ce", "apgd", "autoattack", "autoattack-port", "autoattack-original")
Norm = Literal["Linf", "L2"]
NORMS: tuple[str, ...] = ("Linf", "L2")
L2_KINDS: tuple[str, ...] = ("pgd", "apgd-ce", "apgd")  # the kinds with an L2 form
IMPLEMENTATION = f"torchattacks {torchattacks.__version__}"
REFERENCE = f"pyautoattack {pyautoattack.__version__}"  # Croce & Hein's AutoAttack, behind `autoattack-original`
MAX_TARGETS = 9  # the original AutoAttack's APGD-T and FAB-T target the 9 highest-scored wrong classes
STEPS = {"autoattack": 10, "autoattack-port": 100, "autoattack-original": 100}  # per component; APGD kinds: spec's
SQUARE_QUERIES = 5000
REFERENCE_NAMES = {"APGD-CE": "apgd-ce", "APGD-DLR": "apgd-dlr", "APGD-T": "apgd-t", "FAB-T": "fab-t",
                   "Square": "square"}  # the components under the reference's names


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

    def build(self, model: nn.Module, eps: float, n_classes: int, seed: int, norm: Norm = "Linf"
              ) -> TorchAttack:
        if self.name in ("APGD-CE", "APGD-DLR"):
            return torchattacks.APGD(model, norm=norm, eps=eps, steps=self.steps, n_restarts=1,
                                     loss="ce" if self.name == "APGD-CE" else "dlr", seed=seed)
        if self.name == "Square":
            return torchattacks.Square(model, norm="Linf", eps=eps, n_queries=self.steps, n_restarts=1, seed=seed)
        if self.name == "APGD-T":
            attack = torchattacks.APGDT(model, norm=norm, eps=eps, steps=self.steps, n_restarts=1,
                                        n_classes=n_classes, seed=seed)
        else:
            attack = torchattacks.FAB(model, norm="Linf", eps=eps, steps=self.steps, n_restarts=1,
                                      multi_targeted=True, n_classes=n_classes, seed=seed)
        attack.n_target_classes = self.targets  # torchattacks would take n_classes - 1
        return attack


@dataclass(frozen=True)
class AttackSpec:
    """One attack in the `norm` ball of radius `eps` (L-inf by default). `step` defaults to 2.5 * eps / steps (Madry
    et al.); `restarts` keeps the worst case."""

    kind: AttackKind
    eps: float
    steps: int = 10
    step: float | None = None
    random_start: bool = True
    restarts: int = 1
    norm: Norm = "Linf"

    def __post_init__(self) -> None:
        check_fields(self, kind=choice(KINDS, "attack"), norm=choice(NORMS, "norm"),
                     eps=radius if self.norm == "Linf" else non_negative, steps=integer(1), step=optional(positive),
                     random_start=boolean, restarts=integer(1))
        require(self.norm == "Linf" or self.kind in L2_KINDS, "AttackSpec.kind", self.kind,
                f"has no {self.norm} form in the kit", f"use one of {', '.join(L2_KINDS)} with norm={self.norm!r}, "
                "or pass a torchattacks attack you configured (ExternalAttack)")

    @property
    def step_size(self) -> float:
        return self.step if self.step is not None else 2.5 * self.eps / self.steps

    @property
    def label(self) -> str:
        """Short name for tables: FGSM, PGD-10, PGD-20x5 (5 restarts), AutoAttack (torchattacks), AutoAttack
        (torchattacks port) and AutoAttack (the reference).

        The strong kinds are named by their four-class composition; `components` says what ran on fewer classes."""
        norm = "" if self.norm == "Linf" else f" ({self.norm})"
        if self.kind == "pgd":
            return f"PGD-{self.steps}" + (f"x{self.restarts}" if self.restarts > 1 else "") + norm
        if self.kind in ("apgd-ce", "apgd"):
            return f"APGD-{'CE' if self.kind == 'apgd-ce' else 'CE+T'}-{self.steps}" + norm
        return {"fgsm": "FGSM", "autoattack": "AutoAttack (torchattacks)",
                "autoattack-port": "AutoAttack (torchattacks port)", "autoattack-original": "AutoAttack"}[self.kind]

    @property
    def implementation(self) -> str:
        """The library and version that runs the attack: the reference AutoAttack or torchattacks."""
        return REFERENCE if self.kind == "autoattack-original" else IMPLEMENTATION

    def label_for(self, n_classes: int) -> str:
        """The label of what runs on an `n_classes`-way task: `label`, except that the `apgd` kind names the
        second component it ran ("APGD-CE+DLR-10" with three classes, "APGD-CE-10" with two)."""
        if self.kind != "apgd" or n_classes >= 4:
            return self.label
        second = {3: "+DLR"}.get(n_classes, "")
        norm = "" if self.norm == "Linf" else f" ({self.norm})"
        return f"APGD-CE{second}-{self.steps}{norm}"

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
        settings: dict[str, Any] = {"kind": self.kind, "eps": self.eps, "norm": self.norm}
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
        elif self.kind in ("autoattack", "autoattack-original"):
            settings["version"] = "standard"
        return settings

    def build(self, model: nn.Module, n_classes: int, seed: int) -> TorchAttack | ReferenceAutoAttack:
        """The attack on `model` (which takes [0, 1] images and returns logits), called as `attack(x, y)`: a
        torchattacks object, or the reference AutoAttack for `autoattack-original`."""
        eps = self.eps
        if self.kind == "autoattack-original":
            return ReferenceAutoAttack(model, eps, self.components(n_classes), seed)
        if self.kind == "fgsm":
            return torchattacks.FGSM(model, eps=eps)
        if self.kind == "pgd":
            kind = torchattacks.PGD if self.norm == "Linf" else torchattacks.PGDL2
            pgd = [kind(model, eps=eps, alpha=self.step_size, steps=self.steps, random_start=self.random_start)
                   for _ in range(self.restarts)]
            return pgd[0] if self.restarts == 1 else torchattacks.MultiAttack(pgd)
        attacks = [c.build(model, eps, n_classes, seed, self.norm) for c in self.components(n_classes)]
        return attacks[0] if len(attacks) == 1 else torchattacks.MultiAttack(attacks)


class ReferenceAutoAttack:
    """Croce & Hein's AutoAttack (`pyautoattack`), standard version, running `components` (fewer on fewer than four
    classes, as the kit's port does), called as a torchattacks attack is. Its checks warn through its logger
    (`cropkit.eval.checks.reference_checks` collects them)."""

    def __init__(self, model: nn.Module, eps: float, components: tuple[Component, ...], seed: int) -> None:
        self.autoattack = pyautoattack.AutoAttack(model, norm="Linf", eps=eps, version="standard", seed=seed,
                                                  device=next(model.parameters()).device)
        self.autoattack.verbose = False
        budget = {"APGD-CE": self.autoattack.apgd.n_iter, "APGD-DLR": self.autoattack.apgd.n_iter,
                  "APGD-T": self.autoattack.apgd_targeted.n_iter, "FAB-T": self.autoattack.fab.n_iter,
                  "Square": self.autoattack.square.n_queries}
        for c in components:
            require(c.steps == budget[c.name], "components", str(c), f"not the reference's budget ({budget[c.name]})",
                    "the reference runs at its own fixed budget: use `autoattack-port` for other budgets")
        self.autoattack.attacks_to_run = [REFERENCE_NAMES[c.name] for c in components]
        targets = [c.targets for c in components if c.targets is not None]
        if targets:
            self.autoattack.apgd_targeted.n_target_classes = self.autoattack.fab.n_target_classes = targets[0]

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        """Adversarial examples for the batch; the clean input where every component failed."""
        return self.autoattack.run_standard_evaluation(x, y, batch_size=len(x))[0]


_NOT_SETTINGS = ("attack", "model_name", "attack_mode", "supported_mode")  # torchattacks' bookkeeping


@dataclass(frozen=True, eq=False)
class ExternalAttack:
    """A torchattacks attack configured by hand, evaluated as the kit's own specs are: its label is its class,
    its settings (class and public scalar attributes) are recorded and key the cache of outcomes. It must carry a
    radius (`eps`) for its examples to be checked against, and is run as it is bound (to the pipeline evaluated)."""

    attack: TorchAttack
    restarts: int = 1
    always_perturbs: bool = False  # torchattacks' attacks may return the clean input where they fail

    def __post_init__(self) -> None:
        require(isinstance(self.attack, TorchAttack), "attack", self.attack, "not a torchattacks attack",
                "pass e.g. torchattacks.PGDL2(pipeline, eps=0.5), or an AttackSpec")
        require(isinstance(getattr(self.attack, "eps", None), (int, float)), "attack", type(self.attack).__name__,
                "has no radius (eps): its examples cannot be checked to lie in a ball, nor compared at one",
                "use an attack with an eps (CW, which has none, minimises the distance instead)")

    @property
    def eps(self) -> float:
        return float(self.attack.eps)

    @property
    def norm(self) -> Norm:
        name = type(self.attack).__name__
        return "L2" if getattr(self.attack, "norm", None) == "L2" or name.endswith("L2") else "Linf"

    @property
    def label(self) -> str:
        name = type(self.attack).__name__
        return name + (" (L2)" if self.norm == "L2" and not name.endswith("L2") else "")

    def label_for(self, n_classes: int) -> str:
        return self.label

    @property
    def implementation(self) -> str:
        return IMPLEMENTATION

    def settings(self, n_classes: int) -> dict[str, Any]:
        public = {k: v for k, v in sorted(vars(self.attack).items()) if not k.startswith("_")
                  and k not in _NOT_SETTINGS and isinstance(v, (bool, int, float, str))}
        return {"kind": "torchattacks", "class": type(self.attack).__name__, "implementation": IMPLEMENTATION,
                **public, "eps": self.eps, "norm": self.norm}

    def build(self, model: nn.Module, n_classes: int, seed: int) -> TorchAttack:
        """The attack itself: it is bound to the pipeline already (checked before evaluation starts)."""
        return self.attack


Attack = AttackSpec | ExternalAttack


def as_attack(attack: AttackSpec | ExternalAttack | TorchAttack) -> Attack:
    """An `AttackSpec` or `ExternalAttack` as it is; a bare torchattacks attack wrapped in an `ExternalAttack`."""
    return ExternalAttack(attack) if isinstance(attack, TorchAttack) else attack


def pgd(eps: float, steps: int = 10, **kwargs: Any) -> AttackSpec:
    """Shorthand for a PGD spec."""
    return AttackSpec("pgd", eps, steps=steps, **kwargs)
