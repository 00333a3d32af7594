"""The CRoPD bound, checked on data: adversarial loss <= clean loss + kappa * L_con(f_en) (METHOD.md section 1).

kappa has no public closed form, so the kit estimates it. For each pipeline (pre-processor + frozen model +
head) `bound_terms` measures, per held-out example:
- the left side: the cross-entropy under a strong PGD on the cross-entropy, the worst of several restarts
  (never below the clean loss: the clean image is in the ball);
- the clean cross-entropy;
- L_con of the pre-processor's encoder under FGSM-RS (the training attack) and under a multi-step PGD on L_con.
`fit_bound` then finds the smallest kappa for which the bound holds, in expectation (mean terms over the
examples, as the theorem states it), for every model of a family, with a paired
bootstrap interval over examples, the least-squares slope of the robustness gap on L_con through the origin,
and the rank correlation between the two. A bound is consistent with the data when the gap grows with L_con
and kappa stays bounded; how tight it is shows in each model's slack.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import stats
from torch import Tensor

from cropkit.attacks import pgd
from cropkit.data import ImageData
from cropkit.losses import contrastive_loss, linf_ascent
from cropkit.models import Pipeline

LConAttack = Literal["fgsm", "pgd"]


@dataclass(frozen=True)
class BoundTerms:
    """Per-example terms of the bound for one model, on the same examples (in data order) for every model."""

    name: str
    clean_ce: Tensor
    adversarial_ce: Tensor
    l_con: dict[str, Tensor]  # "fgsm" and "pgd": each anchor's L_con term

    @property
    def gap(self) -> Tensor:
        """The robustness gap per example: adversarial minus clean cross-entropy (>= 0)."""
        return self.adversarial_ce - self.clean_ce

    def summary(self) -> dict[str, float | str]:
        return {"model": self.name, "clean CE": float(self.clean_ce.mean()),
                "adversarial CE": float(self.adversarial_ce.mean()), "gap": float(self.gap.mean()),
                "L_con (FGSM)": float(self.l_con["fgsm"].mean()), "L_con (PGD)": float(self.l_con["pgd"].mean())}


def _per_example_ce(pipeline: Pipeline, x: Tensor, y: Tensor) -> Tensor:
    with torch.inference_mode():
        return F.cross_entropy(pipeline(x).float(), y, reduction="none")


def bound_terms(
    pipeline: Pipeline, data: ImageData, eps: float, *, name: str, tau: float = 0.5, label_negatives: bool = True,
    ce_steps: int = 20, restarts: int = 3, con_steps: int = 10, batch_size: int = 128, seed: int = 0,
) -> BoundTerms:
    """Measure the bound's terms for `pipeline` on `data` (held-out images) at radius `eps`.

    L_con is computed in fixed random batches of `batch_size` (its negatives come from the batch, as in
    training), the same batches for every model with the same `seed`. `label_negatives` matches the
    pre-processor's training (other-class negatives) or its label-free option.
    """
    if not hasattr(pipeline.preprocessor, "latent"):
        raise ValueError(f"{name}: the bound needs a pre-processor with an encoder (`latent`); Identity has none")
    device = next(pipeline.parameters()).device
    pipeline.eval()
    encoder = pipeline.preprocessor.latent
    images, labels = data.tensors()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    attack = pgd(eps, ce_steps).build(pipeline, n_classes=data.num_classes, seed=seed)
    clean_ce, adversarial_ce = torch.empty(len(labels)), torch.empty(len(labels))
    l_con = {"fgsm": torch.empty(len(labels)), "pgd": torch.empty(len(labels))}
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # torchattacks' random starts
    for index in order.split(batch_size):
        x, y = images[index].to(device), labels[index].to(device)
        clean = _per_example_ce(pipeline, x, y)
        worst = clean.clone()
        for _ in range(restarts):  # each restart draws a new random start
            x_adv = attack(x, y)
            worst = torch.maximum(worst, _per_example_ce(pipeline, x_adv, y))
        clean_ce[index], adversarial_ce[index] = clean.cpu(), worst.cpu()
        negatives = y if label_negatives else None
        with torch.no_grad():
            z = encoder(x)
        # FGSM-RS (linf_ascent's one-step default, as in training) and PGD with the usual 2.5 eps / steps step.
        for kind, steps, step in (("fgsm", 1, None), ("pgd", con_steps, 2.5 * eps / con_steps)):
            x_con = linf_ascent(lambda v: contrastive_loss(encoder(v), z, negatives, tau), x, eps, steps=steps,
                                step=step, generator=generator)
            with torch.inference_mode():
                l_con[kind][index] = contrastive_loss(encoder(x_con), z, negatives, tau, reduction="none").cpu()
    return BoundTerms(name, clean_ce, adversarial_ce, l_con)


@dataclass(frozen=True)
class BoundFit:
    """kappa for a family of models, how well the gap follows L_con, and each model's slack."""

    kappa: float
    interval: tuple[float, float]
    slope: float
    spearman: float
    spearman_p: float
    table: pd.DataFrame
    l_con_attack: LConAttack
    level: float

    def statement(self) -> str:
        low, high = self.interval
        return (f"smallest kappa with adversarial CE <= clean CE + kappa * L_con ({self.l_con_attack.upper()}) for "
                f"all {len(self.table)} models: {self.kappa:.3f} ({self.level:.0%} bootstrap interval "
                f"{low:.3f}-{high:.3f}); "
                f"least-squares slope through the origin {self.slope:.3f}; Spearman rank correlation of gap and "
                f"L_con {self.spearman:+.2f} (p = {self.spearman_p:.2g}).")


def _kappa(gaps: np.ndarray, l_cons: np.ndarray) -> float:
    """The smallest kappa >= 0 with gap_m <= kappa * L_con_m for every model m."""
    return float(max(0.0, np.max(gaps / l_cons)))


def fit_bound(family: Sequence[BoundTerms], *, l_con_attack: LConAttack = "pgd", n_bootstrap: int = 2000,
              level: float = 0.95, seed: int = 0) -> BoundFit:
    """Fit kappa over `family` (terms measured on the same examples), with a paired bootstrap over examples."""
    if len(family) < 3:
        raise ValueError("fit_bound needs at least three models to relate the robustness gap to L_con")
    n = len(family[0].clean_ce)
    if any(len(t.clean_ce) != n for t in family):
        raise ValueError("every model's terms must be measured on the same examples")
    gaps = torch.stack([t.gap for t in family]).double().numpy()  # (models, examples)
    l_cons = torch.stack([t.l_con[l_con_attack] for t in family]).double().numpy()
    mean_gap, mean_con = gaps.mean(1), l_cons.mean(1)
    if (mean_con <= 0).any():
        raise ValueError("L_con must be positive for every model (InfoNCE with the positive in its denominator is)")
    kappa = _kappa(mean_gap, mean_con)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(n_bootstrap, n))
    boot = [_kappa(gaps[:, d].mean(1), l_cons[:, d].mean(1)) for d in draws]
    interval = tuple(float(q) for q in np.quantile(boot, [(1 - level) / 2, (1 + level) / 2]))
    slope = float(mean_gap @ mean_con / (mean_con @ mean_con))
    spearman = stats.spearmanr(mean_gap, mean_con)
    table = pd.DataFrame([t.summary() for t in family])
    table["bound (clean + kappa L_con)"] = table["clean CE"] + kappa * mean_con
    table["slack"] = table["bound (clean + kappa L_con)"] - table["adversarial CE"]
    return BoundFit(kappa, interval, slope, float(spearman.statistic), float(spearman.pvalue), table,
                    l_con_attack, level)
