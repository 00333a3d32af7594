"""Whether a new run reproduces the reference: judged against training randomness, not against one run.

A reference number is a distribution: the same measurement (model, data, examples, attack, eps) made in each of
the reference's training runs (seeds, foundation models). A new run, on another machine or with seeds the reference
never used, reproduces a number when the mean over its runs lies within what the runs' spread allows around the
reference's mean: a Welch-style bound `crit * s * sqrt(1/K_ref + 1/K_new)`, where s is the larger of the number's own
across-run standard deviation and the notebook's pooled one (the profile's, for a notebook run once), and crit the
t quantile at a Bonferroni-corrected level over every number compared, so that a faithful run fails with probability
about 5% in all. A broken method moves its numbers by far more than training noise and fails (tests/test_check.py).
Numbers measured once in the reference borrow the pooled spread; kappa (a fit over models) keeps its bootstrap
interval. Timings and costs are not compared.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from cropkit.runs.report import check_notebooks, latest

Record = dict[str, Any]
ALPHA = 0.05  # the chance that a faithful run fails somewhere, over all the numbers compared
# What a measurement is, whatever training run made it.
_MEASUREMENT = ("kind", "model", "dataset", "attack", "eps", "n_examples", "examples", "quantity", "l_con_attack",
                "features")
_ACCURACIES = ("clean_accuracy", "robust_accuracy")


def _key(notebook: str, record: Record) -> tuple[str, str]:
    return notebook, repr([record.get(k) for k in _MEASUREMENT])


def _label(notebook: str, record: Record) -> str:
    return f"{notebook}: {record.get('model') or record.get('kind')} / {record.get('attack') or record.get('quantity')}"


def measurements(by_notebook: Mapping[str, Sequence[Record]]) -> dict[tuple[str, str], list[Record]]:
    """Each measurement's records over the training runs (the latest of each run), keyed by notebook and
    measurement."""
    grouped: dict[tuple[str, str], list[Record]] = {}
    for notebook, records in by_notebook.items():
        for record in latest(records):
            if any(n in record for n in _ACCURACIES) or {"kappa", "kappa_interval"} <= record.keys():
                grouped.setdefault(_key(notebook, record), []).append(record)
    return grouped


def pooled_sd(groups: Iterable[Sequence[Record]], number: str) -> tuple[float, int]:
    """The pooled across-run standard deviation of `number` over the groups measured in two or more runs, and its
    degrees of freedom (0 when no group was)."""
    squares, df = 0.0, 0
    for records in groups:
        values = [r[number] for r in records if number in r]
        if len(values) > 1:
            squares += float(((np.asarray(values) - np.mean(values)) ** 2).sum())
            df += len(values) - 1
    return (math.sqrt(squares / df), df) if df else (0.0, 0)


def moved(reference: dict[str, list[Record]], produced: dict[str, list[Record]], alpha: float = ALPHA) -> list[str]:
    """Every reference number that the new run did not reproduce: absent, or further from the reference's mean than
    the training runs' spread allows (see the module's docstring). Empty when all agree."""
    check_notebooks("reference", reference, "pass a profile's reference records, load_reference(profile): with "
                     "none, no number would be compared and the run would pass")
    check_notebooks("produced", produced, "pass the new run's records, load_reference(profile, folder)", at_least=0)
    ref, new = measurements(reference), measurements(produced)
    spreads = {(nb, number): pooled_sd((g for (notebook, _), g in ref.items() if notebook == nb), number)
               for nb in reference for number in _ACCURACIES}
    profile_wide = {number: pooled_sd(ref.values(), number) for number in _ACCURACIES}
    compared = sum(n in records[0] for records in ref.values() for n in _ACCURACIES)
    problems = []
    for key, records in ref.items():
        notebook = key[0]
        label = _label(notebook, records[0])
        found = new.get(key)
        if not found:
            problems.append(f"{label}: no such record in the new run")
            continue
        if "kappa_interval" in records[0]:
            low, high = records[-1]["kappa_interval"]
            if not low - 1e-9 <= found[-1]["kappa"] <= high + 1e-9:
                problems.append(f"{label}: kappa {found[-1]['kappa']:.4g} outside the reference's "
                                f"{records[-1]['kappa']:.4g} [{low:.4g}, {high:.4g}]")
            continue
        for number in _ACCURACIES:
            if number not in records[0]:
                continue
            pooled, df = spreads[(notebook, number)]
            if not df:
                pooled, df = profile_wide[number]
            values, fresh = [r[number] for r in records], [r[number] for r in found]
            own = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
            crit = stats.t.ppf(1 - alpha / (2 * max(compared, 1)), max(df, 1))
            allowed = crit * max(own, pooled) * math.sqrt(1 / len(values) + 1 / len(fresh))
            shift = float(np.mean(fresh) - np.mean(values))
            if abs(shift) > allowed + 1e-9:
                problems.append(f"{label}: {number} {100 * np.mean(fresh):.1f} (mean of {len(fresh)} runs) against "
                                f"the reference's {100 * np.mean(values):.1f} (mean of {len(values)}): "
                                f"{100 * shift:+.1f} points, beyond the {100 * allowed:.1f} its training runs allow")
    return problems
