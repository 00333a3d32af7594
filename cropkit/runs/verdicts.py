"""Verdicts about methods, made over training runs: the sentences the summaries print when a comparison was
repeated with several training seeds (and foundation models).

Each method's evaluations are grouped by training run (`training_run`: the foundation model and the training seed
in the record's setup); two methods are paired run by run, a method without a training seed of its own (Identity)
pairing with every run on its foundation model. The verdict is `cropkit.eval.stats.compare_runs` over the
independent runs (`design.independent_runs`); beside it stand the per-run differences with their exact McNemar
tests, and, where the runs vary both the seed and the foundation model, which of the two moves the difference more.
Inside `collecting()` every test a summary makes is noted, so that the summary can end with how many it made and
which resolved ones survive Holm's correction (`multiplicity`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import numpy as np

from cropkit.eval.convergence import not_converged
from cropkit.eval.records import compare_records, outcomes
from cropkit.eval.stats import ALPHA, RunsComparison, compare_runs, holm
from cropkit.runs.design import independent_runs

Record = dict[str, Any]
_TESTS: ContextVar[list[tuple[str, float, bool]] | None] = ContextVar("tests", default=None)


@contextmanager
def collecting() -> Iterator[list[tuple[str, float, bool]]]:
    """Collect (claim, p-value, resolved) of every test `record_test` sees inside the block: the claims one
    summary makes together, for `multiplicity`."""
    tests: list[tuple[str, float, bool]] = []
    token = _TESTS.set(tests)
    try:
        yield tests
    finally:
        _TESTS.reset(token)


def record_test(claim: str, p_value: float | None, resolved: bool) -> None:
    """Note a test made by a summary (ignored outside `collecting`, and for a comparison that tests nothing)."""
    tests = _TESTS.get()
    if tests is not None and p_value is not None:
        tests.append((claim, p_value, resolved))


def multiplicity(tests: Sequence[tuple[str, float, bool]]) -> str:
    """How many claims a summary tested and which resolved ones survive Holm's correction for testing them
    together; empty for fewer than two tests."""
    if len(tests) < 2:
        return ""
    adjusted = holm([p for _, p, _ in tests])
    resolved = [(claim, q) for (claim, _, was), q in zip(tests, adjusted) if was]
    lost = [claim for claim, q in resolved if q >= ALPHA]
    text = (f"{len(tests)} comparisons tested in this summary; {len(resolved)} resolved, of which "
            f"{len(resolved) - len(lost)} stay resolved after Holm's correction for testing all {len(tests)} together")
    return text + (f" ({len(lost)} do not: {'; '.join(lost)})." if lost else ".")


def training_run(record: Record) -> tuple[Any, Any]:
    """The training run a record measured: (foundation model, training seed); None where the record has neither."""
    setup = record.get("setup") or {}
    return setup.get("foundation"), setup.get("training_seed")


def run_name(run: tuple[Any, Any]) -> str:
    """'seed 1' or 'foundation model 2, seed 2' (an embedded model's own pre-training seed), for per-run details."""
    foundation, seed = run
    found = re.search(r"seed (\d+)", foundation or "")
    parts = [f"foundation model {found.group(1)}"] if found and found.group(1) != "0" else []
    return ", ".join(parts + ([f"seed {seed}"] if seed is not None else []))


def run_label(record: Record) -> str:
    """A record's model with its training run, for tables listing several: 'CRoPD · SLF, foundation model 1, seed 1'."""
    return ", ".join(part for part in (record["model"], run_name(training_run(record))) if part)


def paired(a: Sequence[Record], b: Sequence[Record]) -> list[tuple[tuple[Any, Any], Record, Record]]:
    """The runs both methods were evaluated in, each as (run, A's record, B's record), in A's order. A record of B
    without a training seed (a model nothing was trained for, e.g. Identity) pairs with each of A's runs on its
    foundation model."""
    by_run = {training_run(r): r for r in b}
    pairs = []
    for record in a:
        run = training_run(record)
        other = by_run.get(run) or by_run.get((run[0], None))
        if other is not None:
            pairs.append((run, record, other))
    return pairs


def across_runs(a: Sequence[Record], b: Sequence[Record], which: str = "robust", *, a_name: str | None = None,
                b_name: str | None = None) -> tuple[RunsComparison, list[tuple[tuple[Any, Any], Record, Record]]]:
    """The seed-level comparison of A and B over their independent paired runs, and every paired run."""
    pairs = paired(a, b)
    if not pairs:
        raise ValueError(f"{a[0]['model'] if a else 'A'} and {b[0]['model'] if b else 'B'} share no training run "
                         "(foundation model and training seed in their setup): nothing to pair")
    kept = set(independent_runs([run for run, _, _ in pairs]))
    chosen = [(x, y) for run, x, y in pairs if run in kept]
    for x, y in chosen:
        if x.get("examples") != y.get("examples"):
            raise ValueError(f"{x['model']!r} and {y['model']!r} were evaluated on different examples in one run: a "
                             "paired comparison needs the same ones")
    comparison = compare_runs(a_name or a[0]["model"], [outcomes(x, which) for x, _ in chosen],
                              b_name or b[0]["model"], [outcomes(y, which) for _, y in chosen])
    return comparison, pairs


def spread_by_factor(pairs: Sequence[tuple[tuple[Any, Any], Record, Record]], which: str = "robust"
                     ) -> dict[str, float]:
    """The standard deviation of the difference A - B attributable to each factor the runs vary, from the pooled
    within-group variance: 'seed' among runs sharing a foundation model, 'foundation model' among runs sharing a
    seed (the same pre-processor weights). A factor no two runs isolate is absent."""
    difference = {run: x[f"{which}_accuracy"] - y[f"{which}_accuracy"] for run, x, y in pairs}
    spreads = {}
    for factor, index in (("seed", 0), ("foundation model", 1)):  # group by the other factor
        groups: dict[Any, list[float]] = {}
        for run, d in difference.items():
            groups.setdefault(run[index], []).append(d)
        squares = sum(float(((np.asarray(g) - np.mean(g)) ** 2).sum()) for g in groups.values())
        df = sum(len(g) - 1 for g in groups.values())
        if df > 0:
            spreads[factor] = float(np.sqrt(squares / df))
    return spreads


DOMINANT = 2.0  # a factor is named as moving a difference more only when its sd is at least this many times the other's


def _dominant(spreads: dict[str, float]) -> str:
    """Which factor moves the difference more, said only when one spread is `DOMINANT` times the other: from a
    handful of runs per factor, a smaller ratio is within the noise of the spreads themselves."""
    (_, low), (large, high) = sorted(spreads.items(), key=lambda item: item[1])
    if high >= DOMINANT * low and high > 0:
        return f"the {large} moves it more"
    return "neither factor clearly dominates at this number of runs"


def verdict(a: Sequence[Record], b: Sequence[Record], which: str = "robust", *, a_name: str | None = None,
            b_name: str | None = None, what: str | None = None) -> str:
    """A markdown bullet: the seed-level verdict, then the per-run differences (exact McNemar), then which factor
    moves the difference more, when the runs vary both; "not compared" where a model did not converge in one of
    the runs (`cropkit.eval.convergence`)."""
    failed = not_converged([*a, *b])
    if failed:
        names = (a_name or a[0]["model"], b_name or b[0]["model"])
        why = "; ".join(dict.fromkeys(f"{r['model']} ({run_name(training_run(r))}): {r['training']['why']}"
                                      for r in failed))
        return f"- {names[0]} vs {names[1]}: **not compared**, a model did not converge: {why}."
    comparison, pairs = across_runs(a, b, which, a_name=a_name, b_name=b_name)
    record_test(f"{comparison.a} vs {comparison.b}", comparison.p_value, comparison.resolved)
    label = what or ("clean accuracy" if which == "clean" else "worst-case accuracy"
                     if a[0].get("attack") == "worst case" else f"{a[0].get('attack')} accuracy")
    lines = [f"- {comparison.statement(label)}."]
    if len(pairs) > 1 and not comparison.difference == comparison.run_variance == comparison.example_variance == 0:
        independent = independent_runs([run for run, _, _ in pairs])
        pooled = ("" if len(independent) == len(pairs) else
                  f"; the verdict pools the independent runs: {'; '.join(run_name(run) for run in independent)}")
        flip = comparison.resolved and comparison.difference < 0  # oriented as the statement: its winner first
        ahead, behind = (comparison.b, comparison.a) if flip else (comparison.a, comparison.b)
        per_run = [f"{run_name(run)} {100 * (-1 if flip else 1) * c.difference:+.1f} (p = {c.p_value:.2g})"
                   for run, x, y in pairs for c in [compare_records(x, y, which)]]
        lines.append(f"  Per run ({ahead} - {behind}, points, exact McNemar p{pooled}): " + "; ".join(per_run) + ".")
        spreads = spread_by_factor(pairs, which)
        if len(spreads) == 2:
            lines.append("  Spread of the difference: " + ", ".join(
                f"{100 * sd:.1f} points sd across {factor}s" for factor, sd in spreads.items()) + "; "
                + _dominant(spreads) + ".")
    return "\n".join(lines)
