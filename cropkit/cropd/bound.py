"""The CRoPD bound, checked on data so that the check can fail (docs/methods.md section 1).

Theorem 1 bounds the adversarial loss by the clean loss plus kappa times the encoder's adversarial contrastive
loss; kappa has no public closed form, so the kit estimates it, and two traps shape how:
1. The smallest kappa that makes the bound hold on a family holds on that family by construction. So kappa is
   fitted on one family fixed in advance and tested on a disjoint one (`out_of_family_check`): each test model's
   slack with a bootstrap interval (a negative slack is a violation), and the test family's violation rate with
   an exact interval beside 1/(m+1), the probability that a model exchangeable with the m fitted ones exceeds the
   largest of their m ratios. (Holding each model of one family out in turn cannot fail that way: the held-out
   model meets the largest of the others' ratios, so only the model with the largest ratio of all can be flagged.)
2. InfoNCE has a floor far above zero that depends on the batch size and the class separation (about 2.8 for a
   perfectly invariant encoder at batch 128 with ten classes), every L_con is therefore measured at one batch size
   (`cropkit.cropd.losses.L_CON_BATCH`). The tested statement is the theorem's, with L_con itself
   (`quantity="l_con"`, the default); the kit's variant, the floor-free **increase** of L_con under attack over its
   clean value (`quantity="increase"`, 0 for an encoder the attack cannot move), is reported beside it.

A model whose gap is positive while its quantity is not is bounded by no finite kappa: it is left out of the fit
and reported as `UNBOUNDED`, never hidden in an infinite kappa.

`bound_terms` measures, per held-out example: the cross-entropy under a strong PGD on the cross-entropy (the worst
of several restarts, never below the clean loss: the clean image is in the ball), the clean cross-entropy, and
L_con under FGSM-RS (the training attack) and under PGD with at least the CE attack's steps and the same restarts
(each anchor's worst: the right side's supremum is sought as hard as the left's), with the clean L_con.
`fit_bound` gives kappa for a family (the smallest with mean gap <= kappa x mean quantity for every bounded
model), a paired bootstrap interval over examples, the least-squares slope through the origin and the rank
correlation of gap and quantity.

Measured terms are cached like attack outcomes (`terms_dir()`), keyed by the pipeline's `module_key` (weights,
classes, settings), the examples' content, every setting that decides them and `THEORY_RECIPE_VERSION`: notebooks
01 and 11 re-measure the same cached models on the same images run after run. `cache=False` always measures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from scipy import stats
from torch import Tensor, nn

from cropkit.core.checkpoint import atomic_write_bytes, measurement_path, module_key, reading
from cropkit.core.paths import cache_dir
from cropkit.core.precision import describe
from cropkit.core.validate import Summary, items, require
from cropkit.cropd.losses import L_CON_BATCH, contrastive_terms
from cropkit.data import ImageData
from cropkit.eval.attacks import pgd
from cropkit.foundation import Pipeline

LConAttack = Literal["fgsm", "pgd"]
Quantity = Literal["increase", "l_con"]

# Bump when a change to how the terms are measured alters them for the same model, examples and settings (it keys
# the cache of measured terms).
THEORY_RECIPE_VERSION = 2
UNBOUNDED = "unbounded (no finite kappa bounds it)"
# How each right-side quantity is named wherever a result is stated (statements, notebook 01's summary).
QUANTITY_NAMES: dict[str, str] = {"l_con": "the theorem's L_con",
                                  "increase": "the kit's variant: increase over the clean L_con"}


@dataclass(frozen=True)
class BoundTerms:
    """Per-example terms of the bound for one model, on the same examples (in data order) for every model."""

    name: str
    clean_ce: Tensor
    adversarial_ce: Tensor
    l_con: dict[str, Tensor]  # "fgsm" and "pgd": each anchor's L_con under that attack
    l_con_clean: Tensor  # each anchor's L_con with its clean latent as the view (the floor at this batch size)

    @property
    def gap(self) -> Tensor:
        """The robustness gap per example: adversarial minus clean cross-entropy (>= 0)."""
        return self.adversarial_ce - self.clean_ce

    def quantity(self, attack: LConAttack, quantity: Quantity) -> Tensor:
        """The right side's per-example term: L_con under `attack`, or its increase over the clean L_con."""
        return self.l_con[attack] - self.l_con_clean if quantity == "increase" else self.l_con[attack]

    def summary(self) -> dict[str, float | str]:
        return {"model": self.name, "clean CE": float(self.clean_ce.mean()),
                "adversarial CE": float(self.adversarial_ce.mean()), "gap": float(self.gap.mean()),
                "L_con clean": float(self.l_con_clean.mean()),
                "L_con (FGSM)": float(self.l_con["fgsm"].mean()), "L_con (PGD)": float(self.l_con["pgd"].mean()),
                "increase (FGSM)": float(self.quantity("fgsm", "increase").mean()),
                "increase (PGD)": float(self.quantity("pgd", "increase").mean())}


def _per_example_ce(pipeline: Pipeline, x: Tensor, y: Tensor) -> Tensor:
    with torch.inference_mode():
        return F.cross_entropy(pipeline(x).float(), y, reduction="none")


def bound_terms(
    pipeline: Pipeline, data: ImageData, eps: float, *, name: str, tau: float = 0.5, label_negatives: bool = True,
    ce_steps: int = 20, restarts: int = 3, con_steps: int = 20, batch_size: int = 128, seed: int = 0,
    cache: bool = True,
) -> BoundTerms:
    """Measure the bound's terms for `pipeline` on `data` (held-out images, at least `L_CON_BATCH`) at radius `eps`.

    L_con is measured by `contrastive_terms` in fixed batches of `L_CON_BATCH` (the same batches for every model
    with the same `seed`); `label_negatives` matches the pre-processor's training (other-class negatives) or its
    label-free option. `batch_size` only batches the cross-entropy attack. L_con's PGD gets the CE attack's
    `restarts` (each anchor's worst) and at least its steps: `con_steps < ce_steps` is refused. Cached unless
    `cache=False` (module docstring).
    """
    if not hasattr(pipeline.preprocessor, "latent"):
        raise ValueError(f"{name}: the bound needs a pre-processor with an encoder (`latent`); Identity has none")
    require(con_steps >= ce_steps, "con_steps", con_steps, f"fewer PGD steps on L_con than on the cross-entropy "
            f"(ce_steps = {ce_steps}): the right side would be attacked more weakly than the left, its supremum "
            "underestimated, which inflates kappa and can make violations", f"pass con_steps >= ce_steps (e.g. "
            f"con_steps={ce_steps}), or fewer ce_steps")
    device = next(pipeline.parameters()).device
    pipeline.eval()
    settings = {"eps": eps, "tau": tau, "label_negatives": label_negatives, "ce_steps": ce_steps,
                "restarts": restarts, "con_steps": con_steps, "batch_size": batch_size, "seed": seed,
                "precision": describe(device)}
    path = terms_path(module_key(pipeline), data, settings) if cache else None
    if path is not None and path.is_file():
        with reading(path, f"delete it (the terms are measured again): rm {path}"):
            saved = load_tensors(path.read_bytes())
            if any(len(t) != len(data) for t in saved.values()):
                raise ValueError(f"terms for {min(len(t) for t in saved.values())} examples, not {len(data)}")
        return BoundTerms(name, saved["clean_ce"], saved["adversarial_ce"],
                          {"fgsm": saved["l_con_fgsm"], "pgd": saved["l_con_pgd"]}, saved["l_con_clean"])
    images, labels = data.tensors()
    attack = pgd(eps, ce_steps).build(pipeline, n_classes=data.num_classes, seed=seed)
    clean_ce, adversarial_ce = torch.empty(len(labels)), torch.empty(len(labels))
    torch.manual_seed(seed)  # torchattacks' random starts
    for index in torch.arange(len(labels)).split(batch_size):
        x, y = images[index].to(device), labels[index].to(device)
        clean = _per_example_ce(pipeline, x, y)
        worst = clean.clone()
        for _ in range(restarts):  # each restart draws a new random start
            worst = torch.maximum(worst, _per_example_ce(pipeline, attack(x, y), y))
        clean_ce[index], adversarial_ce[index] = clean.cpu(), worst.cpu()
    encoder = pipeline.preprocessor.latent
    negatives = labels.to(device) if label_negatives else None
    l_con, l_con_clean = {}, None
    for kind, steps, tries in (("fgsm", 1, 1), ("pgd", con_steps, restarts)):  # FGSM-RS: the training attack as is
        l_con[kind], l_con_clean = contrastive_terms(encoder, images.to(device), negatives, eps, tau=tau, steps=steps,
                                                     seed=seed, restarts=tries)
    terms = BoundTerms(name, clean_ce, adversarial_ce, {kind: t.cpu() for kind, t in l_con.items()}, l_con_clean.cpu())
    if path is not None:
        atomic_write_bytes(path, save_tensors({
            "clean_ce": terms.clean_ce, "adversarial_ce": terms.adversarial_ce, "l_con_fgsm": terms.l_con["fgsm"],
            "l_con_pgd": terms.l_con["pgd"], "l_con_clean": terms.l_con_clean}))
    return terms


def terms_dir() -> Path:
    """The folder of cached bound terms (module docstring)."""
    return cache_dir() / "bound-terms"


def terms_path(model_key: str, data: ImageData, settings: dict[str, Any]) -> Path:
    """Where the bound terms of the model `model_key` (`module_key`) on `data` under `settings` are cached."""
    return measurement_path(terms_dir(), data, {"model": model_key, **settings}, recipe=THEORY_RECIPE_VERSION,
                            suffix=".safetensors")


def latent_similarity(preprocessor: nn.Module, images: Tensor, batch_size: int = L_CON_BATCH) -> float:
    """Mean cosine similarity between the encoder latents (`preprocessor.latent`) of different clean images, within
    batches of `batch_size`.

    Near 1, the encoder maps every image to nearly the same direction: L_con then sits at its collapse value
    log(1 + negatives) whatever the input, no attack can raise it, and the bound's right side vanishes while the
    pipeline's adversarial loss need not (the decoder reads more than the pooled latent)."""
    device = next(preprocessor.parameters()).device
    sums, pairs = 0.0, 0
    with torch.inference_mode():
        for x in images.split(batch_size):
            z = F.normalize(preprocessor.latent(x.to(device)).flatten(1).float(), dim=1)
            n = len(z)
            if n < 2:
                continue
            sums += float((z @ z.T).sum() - n)  # off-diagonal entries only: the diagonal is n ones
            pairs += n * (n - 1)
    if pairs == 0:
        raise ValueError(f"latent_similarity needs batches of at least 2 images, got {len(images)} images")
    return sums / pairs


def _unbounded(gaps: np.ndarray, quantities: np.ndarray) -> np.ndarray:
    """Which models have a positive gap and a quantity <= 0: no finite kappa bounds them."""
    return (quantities <= 0) & (gaps > 0)


def _kappa(gaps: np.ndarray, quantities: np.ndarray) -> float:
    """The smallest kappa >= 0 with gap_m <= kappa * quantity_m for every model m with a positive quantity (the
    `_unbounded` ones are reported, not fitted: they would make kappa infinite)."""
    positive = quantities > 0
    return float(max(0.0, np.max(gaps[positive] / quantities[positive]))) if positive.any() else 0.0


def _stacked(family: Sequence[BoundTerms], attack: LConAttack, quantity: Quantity,
             name: str = "family") -> tuple[np.ndarray, np.ndarray]:
    """(models, examples) arrays of the gap and of the right side's quantity (`name`: the argument `family` came
    from, for the message)."""
    lengths = [len(t.clean_ce) for t in family]
    shown = Summary(f"terms on {lengths} examples")
    require(len(set(lengths)) == 1, name, shown, "every model's terms must be measured on the same examples",
            "measure bound_terms of every model on the same data")
    require(lengths[0] > 0, name, shown, "measured on no examples", "measure bound_terms on held-out images")
    gaps = torch.stack([t.gap for t in family]).double().numpy()
    return gaps, torch.stack([t.quantity(attack, quantity) for t in family]).double().numpy()


@dataclass(frozen=True)
class BoundFit:
    """kappa for a family of models, how well the gap follows the quantity, and each model's slack."""

    kappa: float
    interval: tuple[float, float]
    slope: float
    spearman: float
    spearman_p: float
    table: pd.DataFrame
    l_con_attack: LConAttack
    quantity: Quantity
    level: float

    @property
    def column(self) -> str:
        """The table's column of the right side's quantity, e.g. 'L_con (PGD)'."""
        return f"{'increase' if self.quantity == 'increase' else 'L_con'} ({self.l_con_attack.upper()})"

    @property
    def unbounded(self) -> list[str]:
        """The models no finite kappa bounds (left out of kappa)."""
        return self.table.loc[self.table["unbounded"], "model"].tolist()

    def statement(self) -> str:
        low, high = self.interval
        what = QUANTITY_NAMES[self.quantity]
        fitted = len(self.table) - len(self.unbounded)
        return (f"fitted on {fitted} models, with {what} under {self.l_con_attack.upper()}: kappa = "
                f"{self.kappa:.3f} ({self.level:.0%} bootstrap interval {low:.3f}-{high:.3f}); least-squares slope "
                f"through the origin {self.slope:.3f}; Spearman rank correlation of gap and {what} "
                f"{self.spearman:+.2f} (p = {self.spearman_p:.2g})."
                + (f" {UNBOUNDED.capitalize()}: {', '.join(self.unbounded)}." if self.unbounded else ""))


def fit_bound(family: Sequence[BoundTerms], *, l_con_attack: LConAttack = "pgd", quantity: Quantity = "l_con",
              n_bootstrap: int = 2000, level: float = 0.95, seed: int = 0) -> BoundFit:
    """Fit kappa over `family` (terms measured on the same examples), with a paired bootstrap over examples.

    The bound holds on the fitted family by construction (the model that sets kappa has zero slack): test it on
    models the fit did not see (`out_of_family_check`). Models no finite kappa bounds are marked in the table's
    `unbounded` column and left out of kappa.
    """
    family = items("family", family, BoundTerms, "model", "pass the bound_terms of at least two models measured on "
                   f"the same examples (kappa relates the robustness gap to {quantity} across models)", at_least=2)
    gaps, quantities = _stacked(family, l_con_attack, quantity)
    mean_gap, mean_quantity = gaps.mean(1), quantities.mean(1)
    kappa = _kappa(mean_gap, mean_quantity)
    draws = np.random.default_rng(seed).integers(0, gaps.shape[1], size=(n_bootstrap, gaps.shape[1]))
    boot = [_kappa(gaps[:, d].mean(1), quantities[:, d].mean(1)) for d in draws]
    interval = tuple(float(q) for q in np.quantile(boot, [(1 - level) / 2, (1 + level) / 2]))
    slope = float(mean_gap @ mean_quantity / (mean_quantity @ mean_quantity))
    spearman = stats.spearmanr(mean_gap, mean_quantity)
    table = pd.DataFrame([t.summary() for t in family])
    table["bound (clean + kappa x quantity)"] = table["clean CE"] + kappa * mean_quantity
    table["slack"] = table["bound (clean + kappa x quantity)"] - table["adversarial CE"]
    table["unbounded"] = _unbounded(mean_gap, mean_quantity)
    return BoundFit(kappa, interval, slope, float(spearman.statistic), float(spearman.pvalue), table,
                    l_con_attack, quantity, level)


def holdout_slack(fitted: Sequence[BoundTerms], held_out: BoundTerms, *, l_con_attack: LConAttack = "pgd",
                  quantity: Quantity = "l_con", n_bootstrap: int = 2000, level: float = 0.95,
                  seed: int = 0) -> dict[str, float | str | bool]:
    """kappa fitted on `fitted`, tested on `held_out`: the held-out model's mean gap and quantity, its slack (bound
    minus adversarial CE) with a bootstrap interval over examples (kappa refitted in every draw, `slack_low` to
    `slack_high`), the verdict: "violated" when the whole interval is below zero, "holds" when above, else
    "not resolved", and whether no finite kappa bounds it (`unbounded`)."""
    fitted = items("fitted", fitted, BoundTerms, "model", "pass the bound_terms of the models to fit kappa on (one "
                   "or more, measured on held_out's examples)")
    require(isinstance(held_out, BoundTerms), "held_out", held_out, "not a BoundTerms",
            "pass the bound_terms of the model to test the bound on")
    gaps, quantities = _stacked([*fitted, held_out], l_con_attack, quantity, "fitted and held_out")
    mean_gap, mean_quantity = gaps.mean(1), quantities.mean(1)

    def slack(g: np.ndarray, q: np.ndarray) -> float:
        return _kappa(g[:-1], q[:-1]) * q[-1] - g[-1]

    draws = np.random.default_rng(seed).integers(0, gaps.shape[1], size=(n_bootstrap, gaps.shape[1]))
    boot = np.array([slack(gaps[:, d].mean(1), quantities[:, d].mean(1)) for d in draws])
    low, high = (float(q) for q in np.quantile(boot, [(1 - level) / 2, (1 + level) / 2]))
    verdict = "violated" if high < 0 else "holds" if low > 0 else "not resolved"
    return {"held_out": held_out.name, "kappa": _kappa(mean_gap[:-1], mean_quantity[:-1]),
            "mean_gap": float(mean_gap[-1]), "mean_quantity": float(mean_quantity[-1]),
            "slack": float(slack(mean_gap, mean_quantity)), "slack_low": low, "slack_high": high, "verdict": verdict,
            "unbounded": bool(_unbounded(mean_gap[-1:], mean_quantity[-1:])[0])}


def exact_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of a rate of k in n."""
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)


def rate_reading(interval: Sequence[float], exchangeable: float) -> str:
    """What a violation rate's interval says beside the rate `exchangeable` models would give (1/(m+1))."""
    low, high = interval
    if low > exchangeable:
        return ("the test family exceeds kappa more often than models exchangeable with the fitted ones would: the "
                "fitted kappa does not carry over")
    if high < exchangeable:
        return "the test family exceeds kappa less often than models exchangeable with the fitted ones would"
    return "the interval holds that rate: consistent with models exchangeable with the fitted ones"


@dataclass(frozen=True)
class OutOfFamilyCheck:
    """kappa fitted on one family, tested on a disjoint family fixed in advance (module docstring, trap 1)."""

    kappa: float
    m: int  # fitted models with a positive quantity: kappa is the largest of their m ratios
    unbounded_fitted: tuple[str, ...]  # fitted models no finite kappa bounds (left out of kappa)
    table: pd.DataFrame  # per test model: holdout_slack's fields
    violation_interval: tuple[float, float]
    resolved_interval: tuple[float, float]
    l_con_attack: LConAttack
    quantity: Quantity
    level: float

    @property
    def violated(self) -> list[str]:
        """The test models whose mean gap exceeds kappa x their mean quantity (their slack is negative)."""
        return self.table.loc[self.table["slack"] < 0, "held_out"].tolist()

    @property
    def resolved(self) -> list[str]:
        """The test models whose violation is resolved: the whole slack interval is below zero."""
        return self.table.loc[self.table["verdict"] == "violated", "held_out"].tolist()

    @property
    def exchangeable_rate(self) -> float:
        """1/(m+1): how often a model exchangeable with the m fitted ones has the largest of the m+1 ratios."""
        return 1 / (self.m + 1)

    @property
    def unbounded(self) -> list[str]:
        """Every model, fitted or tested, that no finite kappa bounds."""
        return [*self.unbounded_fitted, *self.table.loc[self.table["unbounded"], "held_out"]]

    def statement(self) -> str:
        n, rate = len(self.table), self.exchangeable_rate
        (v_low, v_high), (r_low, r_high) = self.violation_interval, self.resolved_interval
        return (f"kappa fitted on {self.m} models, with {QUANTITY_NAMES[self.quantity]} under "
                f"{self.l_con_attack.upper()}: {self.kappa:.3f}; tested on {n} other models fixed in advance: "
                f"exceeded by {len(self.violated)} of {n} ({self.level:.0%} Clopper-Pearson interval {v_low:.0%}-"
                f"{v_high:.0%}), resolved for {len(self.resolved)} of {n} ({r_low:.0%}-{r_high:.0%}); a model "
                f"exchangeable with the {self.m} fitted ones would exceed kappa with probability 1/{self.m + 1} = "
                f"{rate:.0%}; {rate_reading(self.violation_interval, rate)}. "
                f"{UNBOUNDED.capitalize()}: {', '.join(self.unbounded) or 'none'}.")


def out_of_family_check(fit: Sequence[BoundTerms], test: Sequence[BoundTerms], *, l_con_attack: LConAttack = "pgd",
                        quantity: Quantity = "l_con", n_bootstrap: int = 2000, level: float = 0.95,
                        seed: int = 0) -> OutOfFamilyCheck:
    """kappa fitted on the `fit` family, the bound tested on each model of the disjoint `test` family
    (`holdout_slack`), and the test family's violation rate, plain and resolved, with exact intervals to set
    beside 1/(m+1). Both families are fixed before anything is measured; their terms on the same examples."""
    fit = items("fit", fit, BoundTerms, "model", "pass the bound_terms of the models to fit kappa on")
    test = items("test", test, BoundTerms, "model", "pass the bound_terms of the models to test kappa on")
    shared = sorted({t.name for t in fit} & {t.name for t in test})
    require(not shared, "test", Summary(f"models {shared}"), "also in the fit family",
            "test kappa on a family disjoint from the fit family (other lambdas, training lengths, architectures "
            "or radii), fixed in advance")
    gaps, quantities = _stacked(fit, l_con_attack, quantity, "fit")
    mean_gap, mean_quantity = gaps.mean(1), quantities.mean(1)
    table = pd.DataFrame([holdout_slack(fit, t, l_con_attack=l_con_attack, quantity=quantity,
                                        n_bootstrap=n_bootstrap, level=level, seed=seed) for t in test])
    n = len(table)
    violations, resolved = int((table["slack"] < 0).sum()), int((table["verdict"] == "violated").sum())
    unbounded = tuple(t.name for t, u in zip(fit, _unbounded(mean_gap, mean_quantity)) if u)
    return OutOfFamilyCheck(_kappa(mean_gap, mean_quantity), int((mean_quantity > 0).sum()), unbounded, table,
                            exact_interval(violations, n, level), exact_interval(resolved, n, level), l_con_attack,
                            quantity, level)


__all__ = ["L_CON_BATCH", "QUANTITY_NAMES", "UNBOUNDED", "BoundFit", "BoundTerms", "OutOfFamilyCheck", "bound_terms",
           "exact_interval", "fit_bound", "holdout_slack", "out_of_family_check", "rate_reading"]
