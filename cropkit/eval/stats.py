"""Uncertainty of accuracies and paired comparisons between models evaluated on the same examples.

- `wilson_interval`: the 95% Wilson score interval of an accuracy (scipy's `binomtest(...).proportion_ci`).
- `compare`: two models' per-example outcomes on the same examples: the difference of their accuracies with
  Newcombe's square-and-add interval for paired proportions (method 10, Newcombe 1998, with his corrected
  correlation) and the exact McNemar test (a two-sided binomial test on the discordant examples). "A beats B" is
  said only when that test rejects; the interval and the test are two procedures, and the verdict follows the test.
- `mcnemar_sample_size`: how many examples a paired comparison needs to detect a given difference (Connor 1987).
- `seed_spread`: mean and spread of a number across training seeds.
- `holm`: Holm's adjusted p-values, for the claims a summary makes together.
- `compare_runs`: two methods, each trained in the same K training runs and evaluated on the same examples: the
  verdict about the methods rather than about one run. The mean difference over runs and examples with a
  t-interval whose variance has a term for the training runs (the per-run differences' spread) and one for the
  test examples (the per-example differences' spread), so that it covers both sources; "A beats B" when it
  excludes 0, else "not resolved across K runs" with the number of runs that would resolve it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from cropkit.core.validate import items, require

LEVEL = 0.95
ALPHA = 0.05


def wilson_interval(correct: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """The Wilson score interval of the proportion `correct / n` at confidence `level`."""
    if n < 1 or not 0 <= correct <= n:
        raise ValueError(f"need 0 <= correct <= n and n >= 1, got correct={correct}, n={n}")
    interval = stats.binomtest(int(correct), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return float(interval.low), float(interval.high)


def format_accuracy(accuracy: float, interval: Sequence[float]) -> str:
    """'53.7 [48.0, 59.3]': an accuracy in percent with its interval."""
    low, high = interval
    return f"{100 * accuracy:.1f} [{100 * low:.1f}, {100 * high:.1f}]"


@dataclass(frozen=True)
class Comparison:
    """Model A against model B on the same `n` examples: accuracies, their difference and the paired test."""

    a: str
    b: str
    n: int
    accuracy_a: float
    accuracy_b: float
    only_a: int  # examples A gets right and B wrong
    only_b: int  # examples B gets right and A wrong
    interval: tuple[float, float]  # of accuracy_a - accuracy_b
    p_value: float  # exact McNemar
    level: float = LEVEL

    @property
    def difference(self) -> float:
        return self.accuracy_a - self.accuracy_b

    @property
    def resolved(self) -> bool:
        """Whether the exact McNemar test rejects equal accuracy at 1 - `level`."""
        return self.p_value < 1 - self.level

    def statement(self, what: str = "accuracy") -> str:
        """One sentence a summary can quote: who is better, by how much, and how sure; or that it is unresolved."""
        flip = self.resolved and self.difference < 0  # state the winner first, its lead positive
        sign = -1 if flip else 1
        low, high = sorted(sign * v for v in self.interval)
        detail = (f"{100 * sign * self.difference:+.1f} points [{100 * low:+.1f}, {100 * high:+.1f}], exact McNemar "
                  f"p = {self.p_value:.2g}, n = {self.n}")
        if not self.resolved:
            return f"{self.a} vs {self.b} ({what}): not resolved at n = {self.n} ({detail})"
        better, worse = (self.b, self.a) if flip else (self.a, self.b)
        return f"{better} beats {worse} on {what} ({detail})"


def paired_difference_interval(both: int, only_a: int, only_b: int, neither: int,
                               level: float = LEVEL) -> tuple[float, float]:
    """Newcombe's square-and-add interval (1998, method 10) for p_A - p_B from the 2x2 table of paired outcomes:
    the two Wilson intervals' arms combined with Newcombe's corrected correlation psi (0 while the cross-product
    difference is within N/2 of 0, shrunk by N/2 above it), which keeps the interval from collapsing when the two
    models agree on nearly every example (Fagerland, Lydersen & Laake, "Statistical Analysis of Contingency
    Tables", 2017, chapter 8)."""
    n = both + only_a + only_b + neither
    p_a, p_b = (both + only_a) / n, (both + only_b) / n
    low_a, high_a = wilson_interval(both + only_a, n, level)
    low_b, high_b = wilson_interval(both + only_b, n, level)
    marginals = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    cross = both * neither - only_a * only_b
    psi = 0.0 if marginals == 0 or 0 <= cross <= n / 2 else (cross - n / 2 * (cross > 0)) / math.sqrt(marginals)
    difference = p_a - p_b
    lower = difference - math.sqrt(max(0.0, (p_a - low_a) ** 2 - 2 * psi * (p_a - low_a) * (high_b - p_b)
                                       + (high_b - p_b) ** 2))
    upper = difference + math.sqrt(max(0.0, (high_a - p_a) ** 2 - 2 * psi * (high_a - p_a) * (p_b - low_b)
                                       + (p_b - low_b) ** 2))
    return max(-1.0, lower), min(1.0, upper)


def mcnemar_p_value(only_a: int, only_b: int) -> float:
    """The exact (binomial) McNemar test of equal accuracy, two-sided; 1 when no example is discordant."""
    discordant = only_a + only_b
    return 1.0 if discordant == 0 else float(stats.binomtest(only_a, discordant, 0.5).pvalue)


def compare(a: str, correct_a: np.ndarray, b: str, correct_b: np.ndarray, level: float = LEVEL) -> Comparison:
    """Paired comparison of two models from their per-example outcomes (booleans, the same examples in order)."""
    correct_a, correct_b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    require(correct_a.ndim == 1 and len(correct_a) > 0, "correct_a", correct_a,
            "not one or more per-example outcomes (a 1-d array)", "pass one boolean per example, in example order")
    require(correct_b.shape == correct_a.shape, "correct_b", correct_b, f"not the shape {correct_a.shape} of "
            "correct_a: a paired comparison needs outcomes on the same examples",
            "pass both models' outcomes on the same examples, in the same order")
    both, neither = int((correct_a & correct_b).sum()), int((~correct_a & ~correct_b).sum())
    only_a, only_b = int((correct_a & ~correct_b).sum()), int((~correct_a & correct_b).sum())
    n = len(correct_a)
    return Comparison(a, b, n, (both + only_a) / n, (both + only_b) / n, only_a, only_b,
                      paired_difference_interval(both, only_a, only_b, neither, level),
                      mcnemar_p_value(only_a, only_b), level)


def mcnemar_sample_size(difference: float, discordant: float, alpha: float = ALPHA, power: float = 0.8) -> int:
    """Examples a paired comparison needs to detect an accuracy `difference` with the McNemar test (Connor 1987).

    `discordant` is the expected fraction of examples on which the two models disagree (at least |difference|);
    a pilot run's comparison gives it as `(only_a + only_b) / n`.
    """
    d, psi = abs(difference), discordant
    if not 0 < d <= psi <= 1:
        raise ValueError(f"need 0 < |difference| <= discordant <= 1, got difference={difference}, "
                         f"discordant={discordant}")
    z_alpha, z_beta = stats.norm.ppf(1 - alpha / 2), stats.norm.ppf(power)
    return math.ceil((z_alpha * math.sqrt(psi) + z_beta * math.sqrt(psi - d * d)) ** 2 / (d * d))


def seed_spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation, minimum and maximum of a number measured with several training seeds."""
    values = np.asarray(items("values", values, numbers.Real, "number", "pass one accuracy per training seed, e.g. "
                              "[0.52, 0.55]"), dtype=float)
    return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else float("nan"),
            "min": float(values.min()), "max": float(values.max()), "seeds": len(values)}


@dataclass(frozen=True)
class RunsComparison:
    """Methods A and B, each trained in the same `runs` training runs and evaluated on the same `n` examples."""

    a: str
    b: str
    n: int
    differences: tuple[float, ...]  # accuracy_a - accuracy_b in each run
    interval: tuple[float, float]  # of the mean difference: runs and examples both sampled
    run_variance: float  # the per-run differences' sample variance (0 with one run)
    example_variance: float  # the sample variance of the per-example differences, averaged over runs
    runs_needed: int | None  # runs that would resolve the observed mean difference (80% power); None: more runs won't
    level: float = LEVEL

    @property
    def runs(self) -> int:
        return len(self.differences)

    @property
    def difference(self) -> float:
        return float(np.mean(self.differences))

    @property
    def resolved(self) -> bool:
        """Whether the interval excludes 0 (never with one run: one run says nothing about training randomness)."""
        return self.runs > 1 and not self.interval[0] <= 0 <= self.interval[1]

    @property
    def p_value(self) -> float | None:
        """The t-test's two-sided p-value of a zero mean difference (its interval excludes 0 exactly when p < 1 -
        level); None with one run, which tests nothing about the methods."""
        if self.runs == 1:
            return None
        se, df = _interval_width(self.run_variance, self.runs, self.example_variance, self.n)
        if se == 0:
            return 1.0 if self.difference == 0 else 0.0
        return float(2 * stats.t.sf(abs(self.difference) / se, df))

    @property
    def favouring(self) -> tuple[int, int]:
        """How many runs put A ahead, and how many B."""
        return sum(d > 0 for d in self.differences), sum(d < 0 for d in self.differences)

    def statement(self, what: str = "accuracy") -> str:
        """One sentence: who is better across the runs, by how much, how sure, and how many runs agree."""
        flip = self.resolved and self.difference < 0
        sign = -1 if flip else 1
        low, high = sorted(sign * v for v in self.interval)
        ahead, behind = self.favouring[::-1] if flip else self.favouring
        detail = (f"{100 * sign * self.difference:+.1f} points [{100 * low:+.1f}, {100 * high:+.1f}] over runs and "
                  f"test images, {ahead} of {self.runs} runs ahead, {behind} behind; n = {self.n}")
        if self.runs == 1:
            return f"{self.a} vs {self.b} ({what}): one training run, no verdict about the methods ({detail})"
        if self.run_variance == self.example_variance == self.difference == 0:
            return (f"{self.a} vs {self.b} ({what}): the same outcome on each of the {self.n} examples in all "
                    f"{self.runs} training runs")
        if not self.resolved:
            more = ("more runs alone would not resolve it: the test images limit it" if self.runs_needed is None else
                    f"about {self.runs_needed} runs would resolve it with 80% power")
            return f"{self.a} vs {self.b} ({what}): not resolved across {self.runs} training runs ({detail}; {more})"
        better, worse = (self.b, self.a) if flip else (self.a, self.b)
        return f"{better} beats {worse} on {what} across {self.runs} training runs ({detail})"


def _interval_width(run_variance: float, runs: int, example_variance: float, n: int) -> tuple[float, float]:
    """Standard error of the mean difference and its Welch-Satterthwaite degrees of freedom."""
    terms = [(run_variance / runs, runs - 1), (example_variance / n, n - 1)]
    terms = [(v, df) for v, df in terms if v > 0 and df > 0]
    if not terms:
        return 0.0, math.inf
    se2 = sum(v for v, _ in terms)
    return math.sqrt(se2), se2 ** 2 / sum(v ** 2 / df for v, df in terms)


def compare_runs(a: str, correct_a: Sequence[np.ndarray], b: str, correct_b: Sequence[np.ndarray],
                 level: float = LEVEL, power: float = 0.8, max_runs: int = 100) -> RunsComparison:
    """A against B over training runs: `correct_a[r]` and `correct_b[r]` are the per-example outcomes of run r's
    models on the same examples (the same ones in every run). The variance of the mean difference is estimated as
    the per-run differences' variance over the runs plus the per-example differences' (each example's difference
    averaged over the runs) variance over the examples: each term is one sampled factor, and their sum counts
    the runs-by-examples interaction twice, so the interval errs wide."""
    require(len(correct_a) > 0, "correct_a", list(correct_a), "no training runs",
            "pass, for each training run, the per-example outcomes (booleans) of method A's model")
    require(len(correct_a) == len(correct_b), "correct_b", f"{len(correct_b)} runs",
            f"not the {len(correct_a)} runs of correct_a", "pass both methods' outcomes for the same training runs")
    a_runs = np.asarray([np.asarray(c, dtype=bool) for c in correct_a])
    b_runs = np.asarray([np.asarray(c, dtype=bool) for c in correct_b])
    require(a_runs.ndim == 2 and a_runs.shape == b_runs.shape and a_runs.shape[1] > 0, "correct_b", b_runs.shape,
            f"not the shape {a_runs.shape} (runs x examples) of correct_a",
            "pass one boolean per example for every run, on the same examples in the same order")
    per_example = a_runs.astype(float) - b_runs.astype(float)  # runs x examples, in {-1, 0, 1}
    differences = per_example.mean(axis=1)
    runs, n = per_example.shape
    run_variance = float(differences.var(ddof=1)) if runs > 1 else 0.0
    example_variance = float(per_example.mean(axis=0).var(ddof=1)) if n > 1 else 0.0
    se, df = _interval_width(run_variance, runs, example_variance, n)
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se if se > 0 else 0.0
    mean = float(differences.mean())
    # For other numbers of runs: the examples' variance within one run is sigma_ex^2 + sigma_int^2, that of their
    # mean over the runs sigma_ex^2 + sigma_int^2 / runs; the interaction part shrinks as runs are added.
    within = float(per_example.var(axis=1, ddof=1).mean()) if n > 1 else 0.0
    interaction = max(0.0, (within - example_variance) * runs / (runs - 1)) if runs > 1 else 0.0
    needed = _runs_needed(mean, run_variance, max(0.0, example_variance - interaction / runs), interaction, n, level,
                          power, max_runs)
    return RunsComparison(a, b, n, tuple(float(d) for d in differences), (mean - half, mean + half), run_variance,
                          example_variance, needed, level)


def _runs_needed(mean: float, run_variance: float, example_variance: float, interaction: float, n: int, level: float,
                 power: float, max_runs: int) -> int | None:
    """The fewest runs (2 to `max_runs`) at which a difference of `mean` is expected to be resolved with `power`,
    the variance components as observed; None when even `max_runs` would not (the test images limit it)."""
    if mean == 0:
        return None
    for runs in range(2, max_runs + 1):
        se, df = _interval_width(run_variance, runs, example_variance + interaction / runs, n)
        if se == 0 or (stats.t.ppf(0.5 + level / 2, df) + stats.t.ppf(power, df)) * se <= abs(mean):
            return runs
    return None


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the given order: a claim survives testing all of them together at
    level alpha when its adjusted p-value is below alpha (Holm 1979)."""
    p = np.asarray(items("p_values", p_values, numbers.Real, "p-value", "pass the p-values of the tests made together",
                         at_least=0), dtype=float)
    order = np.argsort(p)
    adjusted = np.minimum(1.0, np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order]))
    result = np.empty_like(adjusted)
    result[order] = adjusted
    return result.tolist()
