"""The reference check (`cropkit report --compare`, `cropkit.runs.check.moved`) judges a new run against the spread
of the reference's training runs: a faithful run with seeds the reference never used passes, a broken method fails
on its own numbers. The runs judged are real: `investigations/check_power.py` made them with the quick profile."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from cropkit.core.paths import project_root
from cropkit.runs import check, report
from cropkit.runs.verdicts import training_run

POWER = project_root() / "investigations" / "check_power"


@pytest.fixture(scope="module")
def reference():
    return report.load_reference("quick")


def measured_in(reference: dict, produced: dict) -> dict:
    """The reference's records of the measurements `produced` made (a run of some notebooks and models only)."""
    keys = check.measurements(produced).keys()
    return {nb: [r for r in records if check._key(nb, r) in keys] for nb, records in reference.items()}


def load(folder: str) -> dict:
    found = report.load_reference("quick", POWER / folder)
    assert found, f"no records in {POWER / folder}: run `python investigations/check_power.py`"
    return found


def test_the_reference_reproduces_itself_and_a_missing_record_is_named(reference):
    assert check.moved(reference, reference) == []
    produced = copy.deepcopy(reference)
    produced["02_main_results"] = [r for r in produced["02_main_results"] if not r["model"].startswith("CRoPD")]
    assert any("CRoPD" in p and "no such record" in p for p in check.moved(reference, produced))


def test_a_number_shifted_beyond_its_runs_spread_is_named_and_one_within_it_is_not(reference):
    produced = copy.deepcopy(reference)
    runs = [r for r in report.latest(produced["02_main_results"])
            if r.get("attack") == "worst case" and r["model"] == "CRoPD (lambda=1) · SLF"]
    assert len(runs) >= 3, "the reference's CRoPD has one training run: the check has no spread of its own to use"
    values = np.array([r["robust_accuracy"] for r in runs])
    for r in runs:  # each run moved by one across-run standard deviation: noise
        r["robust_accuracy"] += values.std(ddof=1)
    assert check.moved(reference, produced) == []
    for r in runs:  # by 40 points: a broken method
        r["robust_accuracy"] -= values.std(ddof=1) + 0.4
    problems = check.moved(reference, produced)
    assert len(problems) == 1 and "CRoPD (lambda=1) · SLF / worst case" in problems[0] and "beyond" in problems[0]


def test_a_run_with_seeds_the_reference_never_used_passes(reference):
    fresh = load("fresh")
    seeds = {training_run(r)[1] for records in fresh.values() for r in records} - {None}
    used = {training_run(r)[1] for records in reference.values() for r in records}
    assert seeds and not seeds & used, (seeds, used)
    assert check.moved(measured_in(reference, fresh), fresh) == []


@pytest.mark.parametrize("folder, model", [("broken-cropd", "CRoPD (lambda=1)"), ("broken-aft", "AFT (all blocks)")])
def test_a_broken_method_fails_on_its_own_numbers(reference, folder, model):
    """CRoPD at lambda 0 under CRoPD's name; AFT fine-tuned at radius 0 (its attack never moves an image)."""
    broken = load(folder)
    problems = check.moved(measured_in(reference, broken), broken)
    assert problems, f"{folder}: the broken {model} passed the check"
    assert all(model in p for p in problems), problems
    assert any("robust_accuracy" in p and "beyond" in p for p in problems), problems
