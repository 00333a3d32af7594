"""Intervals, paired comparisons and sample sizes: checked against published values and simulations."""

from __future__ import annotations

import numpy as np
import pytest

from cropkit.core.validate import InputError
from cropkit.eval.stats import (
    compare,
    compare_runs,
    format_accuracy,
    holm,
    mcnemar_p_value,
    mcnemar_sample_size,
    paired_difference_interval,
    seed_spread,
    wilson_interval,
)


def test_wilson_interval_matches_the_closed_form():
    low, high = wilson_interval(81, 263)  # Newcombe (1998) example: 0.2553 to 0.3662... recomputed in closed form
    p, n, z = 81 / 263, 263, 1.959963984540054
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert (low, high) == pytest.approx((centre - half, centre + half), abs=1e-9)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="n >= 1"):
        wilson_interval(0, 0)


def test_paired_interval_reduces_to_newcombes_unpaired_interval_without_correlation():
    # a*d == b*c makes phi 0: the square-and-add of the two Wilson intervals' arms (Newcombe's method 10 for
    # independent proportions).
    both, only_a, only_b, neither = 20, 10, 20, 10
    n = 60
    p_a, p_b = 30 / n, 40 / n
    (la, ua), (lb, ub) = wilson_interval(30, n), wilson_interval(40, n)
    expected = (p_a - p_b - np.hypot(p_a - la, ub - p_b), p_a - p_b + np.hypot(ua - p_a, p_b - lb))
    assert paired_difference_interval(both, only_a, only_b, neither) == pytest.approx(expected, abs=1e-12)
    # Same marginals (35 / 60 against 45 / 60): positively correlated outcomes give the narrower interval.
    low, high = paired_difference_interval(35, 0, 10, 15)
    low_anti, high_anti = paired_difference_interval(20, 15, 25, 0)
    assert high - low < high_anti - low_anti


def test_paired_interval_matches_the_published_worked_examples():
    """Fagerland, Lydersen & Laake (2017), chapter 8, as their R package contingencytables checks it: complete
    response before and after consolidation therapy (Cavo et al. 2012, [[59, 6], [16, 80]]): -0.0621 (-0.1186 to
    -0.0046); and a table of perfect agreement, [[1, 0], [0, 1]]: 0 (-0.5734 to 0.5734), which the uncorrected
    correlation collapses to a zero-width interval."""
    assert paired_difference_interval(59, 6, 16, 80) == pytest.approx((-0.1186, -0.0046), abs=5e-5)
    assert paired_difference_interval(1, 0, 0, 1) == pytest.approx((-0.5734, 0.5734), abs=5e-5)


def test_mcnemar_exact_p_value_is_the_binomial_test_on_discordant_pairs():
    assert mcnemar_p_value(0, 0) == 1.0
    assert mcnemar_p_value(10, 0) == pytest.approx(2 * 0.5**10)
    assert mcnemar_p_value(5, 4) == pytest.approx(1.0)


def test_compare_says_beats_only_when_the_paired_test_rejects():
    rng = np.random.default_rng(0)
    shared = rng.random(400) < 0.5
    a = shared | (rng.random(400) < 0.3)  # A is right on everything B is right on, and more
    clear = compare("A", a, "B", shared)
    assert clear.resolved and clear.difference > 0 and clear.statement().startswith("A beats B")
    assert clear.interval[0] > 0 and clear.only_b == 0
    flipped = compare("B", shared, "A", a).statement()  # the winner is named first, with a positive lead
    assert flipped.startswith("A beats B") and f"+{100 * clear.difference:.1f} points" in flipped
    close = compare("A", shared, "B", shared ^ (rng.random(400) < 0.02))
    assert not close.resolved and "not resolved at n = 400" in close.statement()
    assert close.interval[0] < close.difference < close.interval[1]
    with pytest.raises(ValueError, match="same examples"):
        compare("A", a, "B", shared[:10])


def test_paired_interval_covers_the_true_difference_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    covered = 0
    for _ in range(400):
        a = rng.random(200) < 0.6
        b = np.where(rng.random(200) < 0.7, a, rng.random(200) < 0.5)  # correlated, true p_b = 0.7*0.6+0.3*0.5
        low, high = compare("A", a, "B", b).interval
        covered += low <= 0.6 - (0.7 * 0.6 + 0.3 * 0.5) <= high
    assert 0.91 <= covered / 400 <= 0.99


def test_sample_size_grows_as_the_difference_shrinks_and_matches_connor():
    # Connor (1987): difference 0.1 with 30% discordant pairs, alpha 0.05, power 0.8 -> about 234 pairs.
    assert mcnemar_sample_size(0.1, 0.3) == pytest.approx(234, abs=2)
    assert mcnemar_sample_size(0.05, 0.3) > 3 * mcnemar_sample_size(0.1, 0.3)
    with pytest.raises(ValueError, match="discordant"):
        mcnemar_sample_size(0.3, 0.1)


def test_formatting_and_seed_spread():
    assert format_accuracy(0.537, (0.48, 0.593)) == "53.7 [48.0, 59.3]"
    spread = seed_spread([0.5, 0.6, 0.7])
    assert spread["mean"] == pytest.approx(0.6) and spread["std"] == pytest.approx(0.1) and spread["seeds"] == 3


# --------------------------------------------------------------------------------------------------------------
# Verdicts over training runs (compare_runs): the unit of replication is the training run.

def _runs(rng, accuracies, n=200, shared=None):
    """Per-example outcomes of one method in several runs: each run its own accuracy; `shared` (uniform draws per
    example) makes the runs agree on which examples are hard, as trained models do."""
    shared = rng.random(n) if shared is None else shared
    return [shared < a for a in accuracies]


def test_a_difference_every_run_agrees_on_is_resolved_across_runs():
    rng = np.random.default_rng(0)
    hard = rng.random(200)
    result = compare_runs("A", _runs(rng, [0.60, 0.62, 0.58], shared=hard), "B", _runs(rng, [0.30, 0.33, 0.31],
                                                                                          shared=hard))
    assert result.resolved and result.favouring == (3, 0)
    assert result.interval[0] > 0.2 and "A beats B" in result.statement() and "3 of 3 runs ahead" in result.statement()


def test_runs_that_disagree_leave_the_verdict_unresolved_though_each_run_alone_resolves():
    """What a one-run verdict misses: each run's McNemar test rejects, in opposite directions."""
    rng = np.random.default_rng(1)
    hard = rng.random(200)
    a, b = _runs(rng, [0.70, 0.30, 0.65], shared=hard), _runs(rng, [0.40, 0.60, 0.45], shared=hard)
    assert all(compare("A", x, "B", y).resolved for x, y in zip(a, b))
    result = compare_runs("A", a, "B", b)
    assert not result.resolved and result.favouring == (2, 1)
    assert "not resolved across 3 training runs" in result.statement()


def test_one_run_gives_no_verdict_about_the_methods():
    rng = np.random.default_rng(2)
    hard = rng.random(200)
    result = compare_runs("A", _runs(rng, [0.9], shared=hard), "B", _runs(rng, [0.1], shared=hard))
    assert not result.resolved and "one training run" in result.statement()


def test_the_interval_widens_with_the_runs_spread_and_more_runs_are_asked_for():
    rng = np.random.default_rng(3)
    hard = rng.random(200)
    steady = compare_runs("A", _runs(rng, [0.50, 0.51, 0.49], shared=hard), "B",
                          _runs(rng, [0.45, 0.45, 0.45], shared=hard))
    noisy = compare_runs("A", _runs(rng, [0.60, 0.41, 0.49], shared=hard), "B",
                         _runs(rng, [0.45, 0.45, 0.45], shared=hard))
    assert np.diff(noisy.interval)[0] > 2 * np.diff(steady.interval)[0]
    assert not noisy.resolved and noisy.runs_needed is not None and noisy.runs_needed > 3


def test_compare_runs_refuses_unpaired_runs():
    with pytest.raises(InputError, match="correct_b"):
        compare_runs("A", [np.ones(5, bool)] * 2, "B", [np.ones(5, bool)])
    with pytest.raises(InputError, match="correct_b"):
        compare_runs("A", [np.ones(5, bool)] * 2, "B", [np.ones(4, bool)] * 2)


def test_holm_adjusts_step_down_and_keeps_the_order():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([]) == []


def test_a_summary_says_which_resolved_claims_survive_holm():
    from cropkit.runs.verdicts import multiplicity

    tests = [("A vs B", 0.001, True), ("C vs D", 0.03, True), ("E vs F", 0.4, False)]
    text = multiplicity(tests)
    assert text.startswith("3 comparisons tested in this summary; 2 resolved, of which 1 stay resolved")
    assert "(1 do not: C vs D)" in text
    assert multiplicity(tests[:1]) == ""
