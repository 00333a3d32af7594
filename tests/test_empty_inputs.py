"""Empty and malformed inputs to the functions that take records, tables, per-notebook records or lists of models
and values (issue "Meet robustness researchers where they are", item 6): refused before any work, naming the
argument, its value and the fix.

Before, each case below ended in a bare KeyError / IndexError / StopIteration / AttributeError / TypeError, in a
ValueError from numpy or from deeper in the kit that named neither the argument nor the fix, or in a silent
result (a header-only table, an empty list of moved numbers, a kappa fitted on no model).
"""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch

from cropkit.core.validate import InputError
from cropkit.cropd.bound import BoundTerms, fit_bound, holdout_slack, out_of_family_check
from cropkit.eval import audit
from cropkit.eval.records import accuracy_fields, accuracy_table, pooled, worst_case
from cropkit.eval.stats import compare, compare_runs, seed_spread
from cropkit.runs import check, report
from cropkit.runs.design import training_runs

RECORD = {"model": "A", "attack": "PGD-10", "eps": 0.1}
PROBE = {"kind": "linear-probe", "features": "foundation", "model": "probe"}


def terms(name: str, n: int = 3) -> BoundTerms:
    ones = torch.ones(n)
    return BoundTerms(name, 0.3 * ones, 0.8 * ones, {"fgsm": 2.2 * ones, "pgd": 2.5 * ones}, 2.0 * ones)


CASES: list[tuple[str, Callable[[], Any], str]] = [
    ("latest", lambda: report.latest(RECORD), r"^records = \{.*a single dict, not a list of records; pass a list"),
    ("evaluations", lambda: report.evaluations(["PGD-10"]), r"^records\[0\] = 'PGD-10': a str, not a record; pass"),
    ("one", lambda: report.one(RECORD, model="A"), r"^records = \{.*a single dict, not a list of records; pass"),
    ("table", lambda: report.table([]), r"^rows = \[\]: no rows; pass a list of dicts"),
    ("accuracy_rows", lambda: report.accuracy_rows([{"model": "A"}]),
     r"^records\[0\] = \{'model': 'A'\}: lacks 'n_examples', 'attack'.*; pass evaluation records"),
    ("attack_table", lambda: report.attack_table([]), r"^records = \[\]: no records; pass evaluation records"),
    ("probes", lambda: report.probes([]), r"^records = \[\]: no linear-probe records; pass notebook 00's records"),
    ("saturation", lambda: report.saturation([]), r"^records = \[\]: no records; pass evaluations"),
    ("frontier", lambda: report.frontier([], 0.5), r"^records = \[\]: no cost records; pass notebook 07's records"),
    ("summary", lambda: report.summary("02_main_results", [PROBE]),
     r"^records = .*no worst-case evaluations; pass the records notebook 02_main_results wrote"),
    ("last_run", lambda: report.last_run(RECORD), r"^records = \{.*a single dict, not a list of records; pass"),
    ("render", lambda: report.render("quick", {}), r"^by_notebook = \{\}: no notebook's records; pass"),
    ("readme_block", lambda: report.readme_block("cifar10-subset", {"09_capacity": RECORD}),
     r"^by_notebook\['09_capacity'\] = \{.*a single dict, not a list of records; pass"),
    ("moved", lambda: check.moved({}, {}), r"^reference = \{\}: no notebook's records; pass"),
    ("pooled", lambda: pooled([{"model": "A"}]), r"^records\[0\] = \{'model': 'A'\}: lacks 'attack'.*; pass"),
    ("worst_case", lambda: worst_case(RECORD), r"^records = \{.*a single dict, not a list of records; pass"),
    ("accuracy_table", lambda: accuracy_table([]), r"^records = \[\]: no evaluation records; pass"),
    ("accuracy_fields", lambda: accuracy_fields([]), r"^correct = .*shape \(0,\)>: .*; pass one boolean per"),
    ("seed_spread", lambda: seed_spread([]), r"^values = \[\]: no numbers; pass one accuracy per training seed"),
    ("compare", lambda: compare("a", [], "b", []), r"^correct_a = .*shape \(0,\)>: .*; pass one boolean per"),
    ("compare_runs", lambda: compare_runs("a", [], "b", []), r"^correct_a = \[\]: no training runs; pass, for each training run"),
    ("training_runs", lambda: training_runs("embedded", []), r"^seeds = \[\]: no seeds; pass training seeds"),
    ("fit_bound", lambda: fit_bound([terms("a", 0), terms("b", 0)]),
     r"^family = terms on \[0, 0\] examples: measured on no examples; measure bound_terms on"),
    ("holdout_slack", lambda: holdout_slack([], terms("a")), r"^fitted = \[\]: no models; pass the bound_terms"),
    ("out_of_family_check", lambda: out_of_family_check([terms("a"), terms("b")], [{"name": "c"}]),
     r"^test\[0\] = \{'name': 'c'\}: a dict, not a model; pass the bound_terms of the models to test kappa on"),
    # pipeline and data are None: the check comes before any of them is touched
    ("audit.run", lambda: audit.run(None, None, 0.1, eps_factors=()),
     r"^eps_factors = \(\): no numbers; pass multiples of eps"),
]


@pytest.mark.parametrize("call, pattern", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_empty_or_malformed_input_is_refused_naming_the_argument_and_the_fix(call, pattern):
    with pytest.raises(InputError, match=pattern):
        call()
