"""L-inf attacks from torchattacks, described by a small spec so that every number names how it was made.

Kinds: `fgsm`, `pgd` (eps, step, steps, random start, restarts), `apgd-ce` (APGD on the cross-entropy alone,
`steps` iterations: PGD with AutoAttack's adaptive step size, at PGD's cost), `apgd` (APGD-CE then APGD-T,
AutoAttack's two gradient-based components, `steps` each: the strong attack that fits a CPU budget), `autoattack`
(torchattacks' own composition, whose APGD / APGD-T / FAB-T run 10 iterations each) and `autoattack-original`
(the strength of the original AutoAttack standard version: APGD-CE, APGD-T and FAB-T with 100 steps, Square
with 5,000 queries, APGD-T and FAB-T on the 9 most likely other classes). Use the latter for headline numbers.
APGD-T and AutoAttack always get the number of classes and a seed. torchattacks targets every other class in
APGD-T and FAB-T (99 on CIFAR-100, 199 on Tiny-ImageNet); `autoattack-original` caps them at the original's 9.
APGD-T's targeted DLR loss reads the 3rd and 4th largest logits, so the kinds that contain it refuse tasks of
fewer than 4 classes (CIFAR-2) before anything runs, as the original AutoAttack does; use `apgd-ce` there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torchattacks
from torch import nn

AttackKind = Literal["fgsm", "pgd", "apgd-ce", "apgd", "autoattack", "autoattack-original"]
KINDS: tuple[str, ...] = ("fgsm", "pgd", "apgd-ce", "apgd", "autoattack", "autoattack-original")
IMPLEMENTATION = f"torchattacks {torchattacks.__version__}"
ORIGINAL_TARGET_CLASSES = 9  # target classes of APGD-T and FAB-T in the original AutoAttack's standard version
NEEDS_FOUR_CLASSES = ("apgd", "autoattack", "autoattack-original")  # the kinds with APGD-T (targeted DLR loss)


def validate_eps(eps: float) -> float:
    """An L-inf radius for images in [0, 1]: 0 <= eps <= 1 (a value such as 8 means 8/255 was intended)."""
    if not 0.0 <= float(eps) <= 1.0:
        hint = f" Did you mean {eps}/255 = {float(eps) / 255:.4f}?" if 1.0 < float(eps) <= 255 else ""
        raise ValueError(f"eps must lie in [0, 1] for images in [0, 1] (L-inf threat model), got {eps}.{hint}")
    return float(eps)


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
        if self.kind not in KINDS:
            raise ValueError(f"Unknown attack {self.kind!r}; choose one of {KINDS}")
        validate_eps(self.eps)
        if self.steps < 1 or self.restarts < 1:
            raise ValueError(f"steps and restarts must be >= 1, got steps={self.steps}, restarts={self.restarts}")
        if self.step is not None and self.step <= 0:
            raise ValueError(f"step must be positive, got {self.step}")

    @property
    def step_size(self) -> float:
        return self.step if self.step is not None else 2.5 * self.eps / self.steps

    @property
    def label(self) -> str:
        """Short name for tables: FGSM, PGD-10, PGD-20x5 (5 restarts), AutoAttack (torchattacks), AutoAttack."""
        if self.kind == "pgd":
            return f"PGD-{self.steps}" + (f"x{self.restarts}" if self.restarts > 1 else "")
        if self.kind in ("apgd-ce", "apgd"):
            return f"APGD-{'CE' if self.kind == 'apgd-ce' else 'CE+T'}-{self.steps}"
        return {"fgsm": "FGSM", "autoattack": "AutoAttack (torchattacks)", "autoattack-original": "AutoAttack"}[self.kind]

    def settings(self) -> dict[str, Any]:
        """Everything needed to rerun the attack, as recorded with each result."""
        settings = {"kind": self.kind, "eps": self.eps, "norm": "Linf"}
        if self.kind == "pgd":
            settings |= {"steps": self.steps, "step": self.step_size, "random_start": self.random_start,
                         "restarts": self.restarts}
        elif self.kind in ("apgd-ce", "apgd"):
            components = "APGD-CE" if self.kind == "apgd-ce" else "APGD-CE, APGD-T"
            settings |= {"steps": self.steps, "components": f"{components} (torchattacks)"}
        elif self.kind == "autoattack":
            settings |= {"version": "standard", "components": "APGD-CE, APGD-T, FAB-T (10 steps each), Square 5000"}
        elif self.kind == "autoattack-original":
            settings |= {"components": f"APGD-CE, APGD-T, FAB-T (100 steps each, APGD-T and FAB-T on at most "
                                       f"{ORIGINAL_TARGET_CLASSES} target classes), Square 5000"}
        return settings

    def check_classes(self, n_classes: int) -> None:
        """Refuse a task this attack cannot run on: APGD-T needs at least 4 classes (module docstring)."""
        if self.kind in NEEDS_FOUR_CLASSES and n_classes < 4:
            raise ValueError(
                f"attack {self.kind!r} contains APGD-T, whose targeted DLR loss needs at least 4 classes (the original "
                f"AutoAttack refuses fewer too); this task has {n_classes}. Use 'apgd-ce' (steps=100 for the "
                "original's strength) or PGD for 2- and 3-class tasks such as CIFAR-2.")

    def build(self, model: nn.Module, n_classes: int, seed: int) -> torchattacks.Attack:
        """The torchattacks object attacking `model` (which takes [0, 1] images and returns logits)."""
        self.check_classes(n_classes)
        eps = self.eps
        if self.kind == "fgsm":
            return torchattacks.FGSM(model, eps=eps)
        if self.kind == "pgd":
            pgd = [torchattacks.PGD(model, eps=eps, alpha=self.step_size, steps=self.steps,
                                    random_start=self.random_start) for _ in range(self.restarts)]
            return pgd[0] if self.restarts == 1 else torchattacks.MultiAttack(pgd)
        if self.kind in ("apgd-ce", "apgd"):
            ce = torchattacks.APGD(model, norm="Linf", eps=eps, steps=self.steps, n_restarts=1, loss="ce", seed=seed)
            if self.kind == "apgd-ce":
                return ce
            return torchattacks.MultiAttack([
                ce, torchattacks.APGDT(model, norm="Linf", eps=eps, steps=self.steps, n_restarts=1,
                                       n_classes=n_classes, seed=seed),
            ])
        if self.kind == "autoattack":
            return torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=n_classes, seed=seed)
        targeted = [
            torchattacks.APGDT(model, norm="Linf", eps=eps, steps=100, n_restarts=1, n_classes=n_classes, seed=seed),
            torchattacks.FAB(model, norm="Linf", eps=eps, steps=100, n_restarts=1, multi_targeted=True,
                             n_classes=n_classes, seed=seed),
        ]
        for attack in targeted:  # torchattacks sets n_classes - 1
            attack.n_target_classes = min(ORIGINAL_TARGET_CLASSES, n_classes - 1)
        return torchattacks.MultiAttack([
            torchattacks.APGD(model, norm="Linf", eps=eps, steps=100, n_restarts=1, loss="ce", seed=seed),
            *targeted,
            torchattacks.Square(model, norm="Linf", eps=eps, n_queries=5000, n_restarts=1, seed=seed),
        ])


def pgd(eps: float, steps: int = 10, **kwargs: Any) -> AttackSpec:
    """Shorthand for a PGD spec."""
    return AttackSpec("pgd", eps, steps=steps, **kwargs)
