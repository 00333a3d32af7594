"""The CRoPD bound, checked on data so that the check can fail (docs/methods.md section 1).

Theorem 1 bounds the adversarial loss by the clean loss plus kappa times the encoder's adversarial contrastive
loss; kappa has no public closed form, so the kit estimates it, and two traps shape how:
1. The smallest kappa that makes the bound hold on a family holds on that family by construction. So kappa is
   fitted on some models and tested on others: `cross_validate` holds each model out in turn, fits kappa on the
   rest and reports the held-out model's slack with a bootstrap interval — a negative slack is a violation.
2. InfoNCE has a floor far above zero that depends on the batch size and the class separation (about 2.8 for a
   perfectly invariant encoder at batch 128 with ten classes), so a line through the origin mostly measures the
   floor. The kit fits the floor-free **increase** of L_con under attack over its clean value (0 for an encoder
   the attack cannot move), every L_con measured at one batch size (`cropkit.cropd.losses.L_CON_BATCH`); the raw L_con
   stays available (`quantity="l_con"`) for comparison.

`bound_terms` measures, per held-out example: the cross-entropy under a strong PGD on the cross-entropy (the worst
of several restarts, never below the clean loss: the clean image is in the ball), the clean cross-entropy, and
L_con under FGSM-RS (the training attack) and PGD, with the clean L_con. `fit_bound` gives kappa for a family
(the smallest with mean gap <= kappa x mean quantity for every model), a paired bootstrap interval over examples,
the least-squares slope through the origin and the rank correlation of gap and quantity.

Measured terms are cached like attack outcomes (`terms_dir()`), keyed by the pipeline's weights, the examples'
content, every setting that decides them and `THEORY_RECIPE_VERSION`: notebooks 01 and 11 re-measure the same
cached models on the same images run after run. `cache=False` always measures.
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

from cropkit.core.checkpoint import atomic_write_bytes, measurement_path, module_digest, reading
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
THEORY_RECIPE_VERSION = 1


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
    ce_steps: int = 20, restarts: int = 3, con_steps: int = 10, batch_size: int = 128, seed: int = 0,
    cache: bool = True,
) -> BoundTerms:
    """Measure the bound's terms for `pipeline` on `data` (held-out images, at least `L_CON_BATCH`) at radius `eps`.

    L_con is measured by `contrastive_terms` in fixed batches of `L_CON_BATCH` (the same batches for every model
    with the same `seed`); `label_negatives` matches the pre-processor's training (other-class negatives) or its
    label-free option. `batch_size` only batches the cross-entropy attack. Cached unless `cache=False` (module
    docstring).
    """
    if not hasattr(pipeline.preprocessor, "latent"):
        raise ValueError(f"{name}: the bound needs a pre-processor with an encoder (`latent`); Identity has none")
    device = next(pipeline.parameters()).device
    pipeline.eval()
    settings = {"eps": eps, "tau": tau, "label_negatives": label_negatives, "ce_steps": ce_steps,
                "restarts": restarts, "con_steps": con_steps, "batch_size": batch_size, "seed": seed,
                "precision": describe(device)}
    path = terms_path(module_digest(pipeline), data, settings) if cache else None
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
    for kind, steps in (("fgsm", 1), ("pgd", con_steps)):
        l_con[kind], l_con_clean = contrastive_terms(encoder, images.to(device), negatives, eps, tau=tau, steps=steps,
                                                     seed=seed)
    terms = BoundTerms(name, clean_ce, adversarial_ce, {kind: t.cpu() for kind, t in l_con.items()}, l_con_clean.cpu())
    if path is not None:
        atomic_write_bytes(path, save_tensors({
            "clean_ce": terms.clean_ce, "adversarial_ce": terms.adversarial_ce, "l_con_fgsm": terms.l_con["fgsm"],
            "l_con_pgd": terms.l_con["pgd"], "l_con_clean": terms.l_con_clean}))
    return terms


def terms_dir() -> Path:
    """The folder of cached bound terms (module docstring)."""
    return cache_dir() / "bound-terms"


def terms_path(model_digest: str, data: ImageData, settings: dict[str, Any]) -> Path:
    """Where the bound terms of the model with weights `model_digest` on `data` under `settings` are cached."""
    return measurement_path(terms_dir(), data, {"model": model_digest, **settings}, recipe=THEORY_RECIPE_VERSION,
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


def _kappa(gaps: np.ndarray, quantities: np.ndarray) -> float:
    """The smallest kappa >= 0 with gap_m <= kappa * quantity_m for every model m (inf when a model with a
    positive gap has a quantity <= 0: no kappa bounds it)."""
    if ((quantities <= 0) & (gaps > 0)).any():
        return float("inf")
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
        """The table's column of the right side's quantity, e.g. 'increase (PGD)'."""
        return f"{'increase' if self.quantity == 'increase' else 'L_con'} ({self.l_con_attack.upper()})"

    def statement(self) -> str:
        low, high = self.interval
        what = "the increase of L_con over its clean value" if self.quantity == "increase" else "L_con"
        return (f"fitted on {len(self.table)} models, with {what} under {self.l_con_attack.upper()}: kappa = "
                f"{self.kappa:.3f} ({self.level:.0%} bootstrap interval {low:.3f}-{high:.3f}); least-squares slope "
                f"through the origin {self.slope:.3f}; Spearman rank correlation of gap and {what} "
                f"{self.spearman:+.2f} (p = {self.spearman_p:.2g}).")


def fit_bound(family: Sequence[BoundTerms], *, l_con_attack: LConAttack = "pgd", quantity: Quantity = "increase",
              n_bootstrap: int = 2000, level: float = 0.95, seed: int = 0) -> BoundFit:
    """Fit kappa over `family` (terms measured on the same examples), with a paired bootstrap over examples.

    The bound holds on the fitted family by construction (the model that sets kappa has zero slack): test it on
    models the fit did not see (`cross_validate`, `holdout_slack`).
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
    return BoundFit(kappa, interval, slope, float(spearman.statistic), float(spearman.pvalue), table,
                    l_con_attack, quantity, level)


def holdout_slack(fitted: Sequence[BoundTerms], held_out: BoundTerms, *, l_con_attack: LConAttack = "pgd",
                  quantity: Quantity = "increase", n_bootstrap: int = 2000, level: float = 0.95,
                  seed: int = 0) -> dict[str, float | str]:
    """kappa fitted on `fitted`, tested on `held_out`: the held-out model's mean gap and quantity, its slack (bound
    minus adversarial CE) with a bootstrap interval over examples (kappa refitted in every draw, `slack_low` to
    `slack_high`), and the verdict: "violated" when the whole interval is below zero, "holds" when above, else
    "not resolved"."""
    fitted = items("fitted", fitted, BoundTerms, "model", "pass the bound_terms of the models to fit kappa on (one "
                   "or more, measured on held_out's examples)")
    require(isinstance(held_out, BoundTerms), "held_out", held_out, "not a BoundTerms",
            "pass the bound_terms of the model to test the bound on")
    gaps, quantities = _stacked([*fitted, held_out], l_con_attack, quantity, "fitted and held_out")
    mean_gap, mean_quantity = gaps.mean(1), quantities.mean(1)

    def slack(g: np.ndarray, q: np.ndarray) -> float:
        kappa = _kappa(g[:-1], q[:-1])
        return float("-inf") if not np.isfinite(kappa) else kappa * q[-1] - g[-1]

    draws = np.random.default_rng(seed).integers(0, gaps.shape[1], size=(n_bootstrap, gaps.shape[1]))
    boot = np.array([slack(gaps[:, d].mean(1), quantities[:, d].mean(1)) for d in draws])
    low, high = (float(q) for q in np.quantile(boot, [(1 - level) / 2, (1 + level) / 2]))
    verdict = "violated" if high < 0 else "holds" if low > 0 else "not resolved"
    return {"held_out": held_out.name, "kappa": _kappa(mean_gap[:-1], mean_quantity[:-1]),
            "mean_gap": float(mean_gap[-1]), "mean_quantity": float(mean_quantity[-1]),
            "slack": slack(mean_gap, mean_quantity), "slack_low": low, "slack_high": high, "verdict": verdict}


def cross_validate(family: Sequence[BoundTerms], **kwargs: object) -> pd.DataFrame:
    """Leave each model out in turn: kappa fitted on the others, the bound tested on it (`holdout_slack`). Rows
    with the verdict "violated" are where the bound, as fitted, fails out of sample."""
    family = items("family", family, BoundTerms, "model", "pass the bound_terms of at least three models (each held "
                   "out in turn, kappa fitted on the others)", at_least=3)
    return pd.DataFrame([holdout_slack([t for t in family if t is not m], m, **kwargs) for m in family])


__all__ = ["L_CON_BATCH", "BoundFit", "BoundTerms", "bound_terms", "cross_validate", "fit_bound", "holdout_slack"]
