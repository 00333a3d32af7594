"""Training runs as the unit of replication: which runs a comparison makes (`cropkit.runs.design`) and how the
verdicts pair and split them (`cropkit.runs.verdicts`)."""

from __future__ import annotations

import numpy as np
import pytest

from cropkit.core.validate import InputError
from cropkit.eval.records import accuracy_fields, encode_outcomes
from cropkit.runs.design import independent_runs, training_runs
from cropkit.runs.verdicts import paired, spread_by_factor, verdict


def test_every_seed_runs_on_the_first_model_and_each_further_model_with_one_of_them():
    runs = training_runs("embedded", [0, 1, 2], ["embedded@1", "embedded@2"])
    assert runs == [("embedded", 0), ("embedded", 1), ("embedded", 2), ("embedded@1", 1), ("embedded@2", 2)]
    assert independent_runs(runs) == [("embedded", 0), ("embedded@1", 1), ("embedded@2", 2)]
    assert independent_runs(training_runs("embedded", [0, 1])) == [("embedded", 0), ("embedded", 1)]


@pytest.mark.parametrize("seeds, more, parameter", [([0], ["embedded@1"], "more_foundations"),
                                                    ([0, 0], [], "seeds"),
                                                    ([0, 1], ["embedded"], "more_foundations")])
def test_a_design_that_cannot_separate_its_factors_is_refused(seeds, more, parameter):
    with pytest.raises(InputError, match=parameter):
        training_runs("embedded", seeds, more)


def record(model: str, foundation: str, seed: int | None, correct: np.ndarray) -> dict:
    return {"model": model, "attack": "worst case", "examples": "e", "n_examples": len(correct),
            "setup": {"foundation": foundation, "training_seed": seed},
            "outcomes": {"clean": encode_outcomes(correct), "robust": encode_outcomes(correct)},
            **accuracy_fields(correct, "clean"), **accuracy_fields(correct, "robust")}


def method(name: str, accuracy: dict, hard: np.ndarray) -> list[dict]:
    return [record(name, f, s, hard < a) for (f, s), a in accuracy.items()]


RUNS = training_runs("fm0", [0, 1, 2], ["fm1", "fm2"])


def test_a_model_without_a_training_seed_pairs_with_every_run_on_its_foundation_model():
    hard = np.random.default_rng(0).random(100)
    a = method("A", dict.fromkeys(RUNS, 0.5), hard)
    identity = method("Identity", {(f, None): 0.1 for f in ("fm0", "fm1", "fm2")}, hard)
    assert [(run, y["setup"]["foundation"]) for run, _, y in paired(a, identity)] == [(run, run[0]) for run in RUNS]


def test_the_factor_that_moves_the_difference_more_is_named():
    """The difference A - B moves by 20 points between foundation models and by 1 between seeds."""
    hard = np.random.default_rng(1).random(400)
    by_model = {"fm0": 0.50, "fm1": 0.70, "fm2": 0.30}
    a = method("A", {(f, s): by_model[f] + 0.01 * s for f, s in RUNS}, hard)
    b = method("B", dict.fromkeys(RUNS, 0.2), hard)
    spreads = spread_by_factor(paired(a, b))
    assert spreads["foundation model"] > 5 * spreads["seed"]
    text = verdict(a, b)
    assert "the foundation model moves it more" in text and "across 3 training runs" in text
    assert text.count("(p = ") == len(RUNS)  # every run's own McNemar test, as detail


def test_the_readme_headline_gives_each_comparison_over_its_runs_and_says_when_one_run_gives_no_verdict():
    from cropkit.runs.report import headline

    hard = np.random.default_rng(2).random(200)
    seeds = [("fm0", s) for s in (0, 1, 2)]
    cropd = method("CRoPD (lambda=1) · SLF", {run: 0.5 + 0.01 * run[1] for run in seeds}, hard)
    denoising = method("Adv-denoising AE · SLF", {run: 0.2 for run in seeds}, hard)
    identity = method("Identity · SLF", {("fm0", None): 0.0}, hard)
    aft = method("AFT (all blocks)", {("fm0", 0): 0.1}, hard)
    for r in cropd + denoising + identity:
        r["setup"]["protocol"] = "SLF"
    text = headline({"02_main_results": cropd + denoising + identity, "06_robust_finetuning": cropd[:1] + aft})
    rows = {line.split(" | ")[1]: line for line in text.splitlines()[2:]}
    assert "| 3 | +" in rows["CRoPD (lambda=1) · SLF vs Adv-denoising AE · SLF"]
    assert rows["CRoPD (lambda=1) · SLF vs Adv-denoising AE · SLF"].endswith("| CRoPD (lambda=1) · SLF ahead |")
    assert rows["CRoPD (lambda=1) · SLF vs AFT (all blocks)"].endswith("one training run: no verdict about the methods |")
    assert not any("Recon AE" in key for key in rows)  # a comparison whose records are missing is left out


def test_the_frontier_decides_on_the_interval_and_gives_the_ratio_a_range():
    """A budget whose point estimate reaches the target but whose interval straddles it does not count."""
    from cropkit.runs.report import frontier

    def budget(method, epochs, flops, correct):
        hard = np.arange(200) / 200
        return {"kind": "cost", "method": method, "budget_epochs": epochs, "flops": flops, "model": f"{method} {epochs}",
                **accuracy_fields(hard < correct, "robust"), "n_examples": 200}

    records = [budget("CRoPD", 1, 1.0, 0.05), budget("CRoPD", 2, 2.0, 0.45),
               budget("AFT", 1, 10.0, 0.22), budget("AFT", 2, 20.0, 0.40)]  # AFT 1: 22% [16.8, 28.2]: straddles 20%
    rows = {line.split(" | ")[0].strip("| "): line for line in frontier(records, 0.2).splitlines()[4:]}
    assert "| reaches | 2 epochs" in rows["AFT"] and "| at most 20 |" in rows["AFT"]
    assert rows["AFT"].endswith("| at most 20.0x |")  # at most 20 FLOPs against at least 1 of CRoPD's
    assert "| 1 to 2 |" in rows["CRoPD"]


def test_the_per_run_differences_are_oriented_as_the_verdict():
    """B beats A in every run: the verdict names B first with a positive lead, and so does every per-run difference
    (they were A - B, negative under a sentence that says B leads)."""
    hard = np.random.default_rng(2).random(300)
    runs = [("fm0", s) for s in (0, 1, 2)]
    a = method("A", {run: 0.2 + 0.01 * run[1] for run in runs}, hard)
    b = method("B", dict.fromkeys(runs, 0.6), hard)
    text = verdict(a, b)
    assert text.startswith("- B beats A") and "Per run (B - A, points" in text
    per_run = text.split("Per run")[1].split("\n")[0]
    assert per_run.count(" +3") == 3 and " -3" not in per_run
