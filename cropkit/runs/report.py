"""What the records say, in words and tables: each notebook's closing summary and the README's results.

Every comparative sentence comes from a paired test on the same examples (`cropkit.eval.stats.compare` through
`results.compare_records`) and says "not resolved at n = ..." when the test does not reject; every accuracy is
shown with its 95% interval. A notebook calls `summary(name, run.written)` on the records it wrote; `cropkit report`
renders the same summaries from a profile's committed reference records (`reference/<profile>/`) into
`reference/<profile>/RESULTS.md` and the README's generated block, so the README's numbers are what the code
printed, never typed. A test re-renders both and fails when they differ from the committed text.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cropkit.core.checkpoint import atomic_write_bytes
from cropkit.core.paths import cache_dir, project_root
from cropkit.core.validate import choice, items, record_list, require
from cropkit.cropd.bound import QUANTITY_NAMES, UNBOUNDED, rate_reading
from cropkit.cropd.losses import COLLAPSED
from cropkit.eval.convergence import not_converged
from cropkit.eval.records import ACCURACY_FIELDS, EVALUATIONS_FIX, RUNS_FILE, compare_records, load_records, pooled
from cropkit.eval.stats import ALPHA, RunsComparison, format_accuracy, holm, mcnemar_sample_size, seed_spread
from cropkit.runs.verdicts import across_runs, collecting, multiplicity, record_test, run_name, training_run, verdict

if TYPE_CHECKING:  # nbformat is imported where notebooks are written: it loads jsonschema, whose URI grammar alone
    import nbformat  # takes 3 s, and every notebook imports this module to render its summary

Record = dict[str, Any]
# What a measurement is (as opposed to what it measured and where): two records agreeing on these are one
# measurement made twice, and the newer one speaks.
_IDENTITY = ("kind", "model", "method", "dataset", "split", "n_examples", "examples", "attack", "eps", "seed", "setup",
             "features", "quantity", "l_con_attack", "budget_epochs", "pgd_steps")


def _is_kind(kind: str) -> Callable[[Record], bool]:
    return lambda r: r.get("kind") == kind


def latest(records: Iterable[Record]) -> list[Record]:
    """The last record of each measurement (same model, data, examples, attack, eps and seed), in first-seen order:
    a notebook run again appends new records, and the newest one speaks."""
    chosen: dict[str, Record] = {}
    for record in record_list("records", records, at_least=0):
        chosen[repr([record.get(k) for k in _IDENTITY])] = record
    return list(chosen.values())


def evaluations(records: Iterable[Record], **match: Any) -> list[Record]:
    """Evaluation records (those with an attack) whose fields equal `match`, e.g. `attack="PGD-10"`."""
    return [r for r in record_list("records", records, at_least=0)
            if r.get("attack") and all(r.get(k) == v for k, v in match.items())]


def one(records: Iterable[Record], **match: Any) -> Record:
    """The single latest record matching `match` (evaluations, or any kind with `kind=`)."""
    pool = record_list("records", records, at_least=0)
    found = [r for r in pool if all(r.get(k) == v for k, v in match.items())]
    if not found:
        raise LookupError(f"no record with {match}")
    return found[-1]


def accuracy(record: Record, which: str = "robust") -> str:
    """'53.7 [48.0, 59.3]' for a record's clean or robust accuracy."""
    return format_accuracy(record[f"{which}_accuracy"], record[f"{which}_interval"])


def claim(a: Record, b: Record, which: str = "robust", *, a_name: str | None = None,
          b_name: str | None = None, what: str | None = None) -> str:
    """A paired comparison of two records as one sentence ('A beats B ...' or '... not resolved at n = ...')."""
    comparison = compare_records(a, b, which, a_name=a_name, b_name=b_name)
    record_test(f"{comparison.a} vs {comparison.b}", comparison.p_value, comparison.resolved)
    same_attack = which == "robust" and a.get("attack") == b.get("attack")
    label = what or ("clean accuracy" if which == "clean" else "robust accuracy" if not same_attack else
                     "worst-case accuracy" if a.get("attack") == "worst case" else f"{a.get('attack')} accuracy")
    return comparison.statement(label)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A markdown table of `rows` (dicts), columns in the given or first-seen order (no rows: `columns` only)."""
    rows = items("rows", rows, dict, "row", "pass a list of dicts, one per row (or the columns of an empty table)",
                 at_least=0 if columns else 1)
    columns = list(columns or dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def accuracy_rows(records: Iterable[Record], index: Callable[[Record], str] = lambda r: r["model"]) -> list[dict]:
    """One row per `index(record)`: its clean accuracy and each attack's robust accuracy, all with intervals,
    and n (the rows' evaluations must share their examples to be compared in a column)."""
    rows: dict[str, dict[str, Any]] = {}
    for r in record_list("records", records, needs=("n_examples", "attack", *ACCURACY_FIELDS), fix=EVALUATIONS_FIX):
        row = rows.setdefault(index(r), {"model": index(r), "n": r["n_examples"], "clean": accuracy(r, "clean")})
        row[r["attack"]] = accuracy(r)
    return list(rows.values())


def attack_table(records: Sequence[Record]) -> str:
    """One model's evaluations as a markdown table: a row per attack with n, clean and robust accuracy."""
    records = record_list("records", records, needs=("attack", "eps", "n_examples", *ACCURACY_FIELDS),
                          fix=EVALUATIONS_FIX)
    return table([{"attack": r["attack"], "eps": f"{r['eps']:.4g}", "n": r["n_examples"],
                   "clean": accuracy(r, "clean"), "robust": accuracy(r)} for r in records])


# --------------------------------------------------------------------------------------------------------------
# One summary per notebook: the notebook's own closing cell and the README render the same text.

def probes(records: list[Record]) -> str:
    """Notebook 00's linear probes: frozen features against raw pixels, paired on the test split."""
    records = record_list("records", records, where=_is_kind("linear-probe"), counted="linear-probe record",
                          fix="pass notebook 00's records, which hold a probe on frozen features and one on raw pixels")
    features, pixels = one(records, kind="linear-probe", features="foundation"), one(records, kind="linear-probe",
                                                                                      features="pixels")
    return (f"Linear probe on {features['dataset']} ({features['n_examples']} test images): frozen "
            f"{features['foundation']} features {accuracy(features, 'clean')}, raw pixels {accuracy(pixels, 'clean')}; "
            + claim(features, pixels, "clean", a_name="features", b_name="pixels", what="test accuracy") + ".")


def _quickstart(records: list[Record]) -> str:
    eps = one(records, kind="linear-probe", features="foundation")["eps"]
    main = evaluations(records, model="Identity", eps=eps)
    n = one(main, attack="worst case")["n_examples"]
    curve = sorted((r for r in evaluations(records, model="Identity", attack="PGD-10") if r["n_examples"] == n),
                   key=lambda r: r["eps"])
    return "\n".join([
        probes(records), "",
        f"Identity pipeline at eps = {eps:g}:", "", attack_table([r for r in main if r["n_examples"] == n]), "",
        "PGD-10 accuracy against eps: " + ", ".join(f"{r['eps']:.3g}: {accuracy(r)}" for r in curve) + ".",
    ])


def resolution(a: Record, b: Record, which: str = "robust") -> str:
    """For an unresolved paired comparison, how many examples would resolve the observed difference (80% power);
    empty when the comparison is resolved or the two agree on every example."""
    comparison = compare_records(a, b, which)
    discordant = (comparison.only_a + comparison.only_b) / comparison.n
    # From the counts: accuracy_a - accuracy_b can exceed `discordant` by a rounding error when every discordant
    # example goes one way, which `mcnemar_sample_size` refuses.
    difference = (comparison.only_a - comparison.only_b) / comparison.n
    if comparison.resolved or difference == 0:
        return ""
    n = mcnemar_sample_size(difference, discordant)
    return (f" At the observed difference ({100 * difference:+.1f} points, {discordant:.0%} of examples "
            f"in disagreement) about {n} test images would resolve it with 80% power.")


def _by(records: Iterable[Record], key: Callable[[Record], Any]) -> dict[Any, list[Record]]:
    """Records grouped by `key`, groups and members in first-seen order."""
    groups: dict[Any, list[Record]] = {}
    for record in records:
        groups.setdefault(key(record), []).append(record)
    return groups


def _runs_rows(groups: Mapping[str, Sequence[Record]], attack: str) -> list[dict[str, Any]]:
    """Per group (a model over its training runs): clean and `attack` accuracy as mean ± sd across the runs, and
    the range; the within-run intervals are in the notebook's tables."""
    rows = []
    for name, found in groups.items():
        clean, robust = (seed_spread([r[f"{w}_accuracy"] for r in found]) for w in ("clean", "robust"))
        failed = len(not_converged(found))
        flag = f" (did not converge in {failed} of {len(found)} runs: not compared)" if failed else ""
        rows.append({"model": name + flag, "runs": robust["seeds"], "clean, mean ± sd": _mean_sd(clean),
                     f"{attack}, mean ± sd": _mean_sd(robust),
                     f"{attack}, range": f"{100 * robust['min']:.1f}-{100 * robust['max']:.1f}"})
    return rows


def _mean_sd(spread: dict[str, float]) -> str:
    """'mean ± sd' in percent; a model measured once (e.g. Identity, which has no training seed) has no spread."""
    if spread["seeds"] < 2:
        return f"{100 * spread['mean']:.1f} (one run)"
    return f"{100 * spread['mean']:.1f} ± {100 * spread['std']:.1f}"


def _runs_line(records: Sequence[Record]) -> str:
    """'3 training runs (seed 0; foundation model 1, seed 1; ...)' for the runs that `records` span."""
    runs = [run for run in dict.fromkeys(training_run(r) for r in records) if run[1] is not None]
    return f"{len(runs)} training run{'s' * (len(runs) != 1)} ({'; '.join(run_name(run) for run in runs)})"


def _main_results(records: list[Record]) -> str:
    worst = evaluations(records, attack="worst case")
    cropd = next(r["setup"]["preprocessor"] for r in worst if r["setup"]["preprocessor"].startswith("CRoPD"))
    lines = []
    for protocol in ("SLF", "ALF"):
        here = _by((r for r in worst if r["setup"]["protocol"] == protocol), lambda r: r["setup"]["preprocessor"])
        mine = here[cropd]
        pgd10 = evaluations(records, attack="PGD-10", model=mine[0]["model"])
        lines += [f"**{protocol} heads**, {_runs_line(mine)}; worst case over "
                  f"{', '.join(mine[0]['attack_settings']['over'])}, eps = {mine[0]['eps']:g}, "
                  f"{mine[0]['n_examples']} test images:", ""]
        lines += [verdict(mine, here[other]) for other in here if other != cropd]
        lines += [verdict(mine, here["Identity"], "clean"),
                  verdict(pgd10, mine, a_name=f"{cropd} under PGD-10", b_name="under the worst case",
                          what="robust accuracy: what PGD-10 alone overstates"), ""]
        if len(mine) > 1:
            lines += ["Across the training runs (each run's own intervals are in the table above):", "",
                      table(_runs_rows(here, "worst case")), ""]
    return "\n".join(lines).strip()


def _lambda_ablation(records: list[Record]) -> str:
    worst = _by(sorted(evaluations(records, attack="worst case"), key=lambda r: r["setup"]["lambda"]),
                lambda r: f"lambda = {r['setup']['lambda']:g}")
    first = next(iter(worst.values()))[0]
    lines = [f"SLF heads, {_runs_line(next(iter(worst.values())))}; worst case over "
             f"{', '.join(first['attack_settings']['over'])} at eps = {first['eps']:g} on {first['n_examples']} test "
             "images:", "", table(_runs_rows(worst, "worst case")), ""]
    names = list(worst)
    for a, b in zip(names[1:], names):
        lines += [verdict(worst[a], worst[b], a_name=a, b_name=b), verdict(worst[a], worst[b], "clean", a_name=a,
                                                                          b_name=b)]
    return "\n".join(lines)


def _theory_bound(records: list[Record]) -> str:
    """What is tested (the theorem's L_con, the kit's variant beside it), kappa in-sample, and the out-of-family
    check: the test family's violation rate with its exact interval beside 1/(m+1), and the unbounded models."""
    fits = [r for r in records if r.get("kind") == "bound-fit"]
    checks = [r for r in records if r.get("kind") == "bound-check"]
    first = one(checks, quantity="l_con", l_con_attack="pgd")
    lines = [f"kappa fitted on {len(first['fitted'])} pre-processors and tested on {len(first['tested'])} others "
             f"fixed in advance ({', '.join(first['tested'])}); {first['n_examples']} test images, eps = "
             f"{first['eps']:g}, L_con under PGD (at least the cross-entropy attack's steps and its restarts) in "
             f"batches of 128. Tested: Theorem 1 with {QUANTITY_NAMES['l_con']}; beside it "
             f"{QUANTITY_NAMES['increase']}."]
    for quantity in ("l_con", "increase"):
        fit = one(fits, quantity=quantity, l_con_attack="pgd")
        check = one(checks, quantity=quantity, l_con_attack="pgd")
        (low, high), (v_low, v_high) = fit["kappa_interval"], check["violation_interval"]
        r_low, r_high = check["resolved_interval"]
        n, rate, level = len(check["tested"]), check["exchangeable_rate"], f"{check['level']:.0%}"
        name = QUANTITY_NAMES[quantity]
        lines.append(
            f"- **{name[0].upper() + name[1:]}**. In-sample (holds on the fit family by construction): kappa = "
            f"{fit['kappa']:.3f} ({low:.3f}-{high:.3f}), Spearman of gap and quantity {fit['spearman']:+.2f} (p = "
            f"{fit['spearman_p']:.2g}). Out of family: kappa exceeded by {len(check['violated'])} of {n} test models, "
            f"{level} Clopper-Pearson interval {v_low:.0%}-{v_high:.0%}"
            + (f" ({', '.join(check['violated'])})" if check["violated"] else "")
            + f"; resolved for {len(check['resolved'])} of {n}, {r_low:.0%}-{r_high:.0%}"
            + (f" ({', '.join(check['resolved'])})" if check["resolved"] else "")
            + f"; models exchangeable with the {check['m']} fitted ones: 1/{check['m'] + 1} = {rate:.0%}; "
            f"{rate_reading(check['violation_interval'], rate)}."
            + (f" {UNBOUNDED.capitalize()}: {', '.join(check['unbounded'])}." if check["unbounded"] else ""))
    return "\n".join(lines)


def _transfer(records: list[Record]) -> str:
    worst = evaluations(records, attack="worst case")
    lines = [f"Worst case over {', '.join(worst[0]['attack_settings']['over'])} at eps = {worst[0]['eps']:g}, SLF "
             "heads trained on each target:", ""]
    for target in dict.fromkeys(r["dataset"] for r in worst):
        here = [r for r in worst if r["dataset"] == target]
        identity = one(here, model="Identity · SLF")
        for r in here:
            if r is identity:
                continue
            kind = "in-domain" if r["setup"]["trained_on"] == target else "transfer"
            lines.append(f"- on {target} ({kind}): {claim(r, identity)}."
                         + resolution(r, identity))
    return "\n".join(lines)


def _acl_family(records: list[Record]) -> str:
    worst = _by(evaluations(records, attack="worst case"), lambda r: r["model"])
    cost = _by((r for r in records if r.get("kind") == "pretraining"), lambda r: r["model"])
    baseline = next(name for name in worst if name.startswith("random init"))
    slf = {name.removesuffix(" · SLF"): rs for name, rs in worst.items() if name.endswith(" · SLF") and name != baseline}
    first = next(iter(worst.values()))[0]
    lines = [f"{_runs_line(worst[baseline])}; worst case over {', '.join(first['attack_settings']['over'])} at eps = "
             f"{first['eps']:g}, {first['n_examples']} test images:", "", table(_runs_rows(worst, "worst case")), "",
             "SLF heads against the untrained backbone:"]
    lines += [verdict(rs, worst[baseline]) for name, rs in slf.items() if name != "CRoPD"]
    pairs = [(name, "ACL") for name in slf if name.startswith("ACL-RCS")] + [
        ("ACL-AIR", "ACL"), ("DynACL-AIR", "DynACL"), ("DynACL-AIR (true KL)", "DynACL-AIR")]
    lines += ["", "Each variant against the method it modifies (SLF):"]
    seconds = {name: float(np.mean([r["seconds"] for r in rs])) for name, rs in cost.items()}
    for a, b in pairs:
        if a in slf and b in slf:
            speed = (f"\n  Pre-training {seconds[b] / seconds[a]:.2f}x faster than {b} (mean wall-clock over the "
                     f"runs, {cost[a][0]['examples']} examples trained against {cost[b][0]['examples']})."
                     if "RCS" in a else "")
            lines.append(verdict(slf[a], slf[b], a_name=a, b_name=b) + speed)
    encoders = {name: rs for name, rs in worst.items()
                if not name.startswith(("CRoPD", baseline)) and not not_converged(rs)}
    best = max(encoders, key=lambda name: np.mean([r["robust_accuracy"] for r in encoders[name]]))
    flagged = [name for name, rs in worst.items() if not_converged(rs)]
    if flagged:
        lines += ["", f"Did not converge in at least one run, so left out of every comparison: {', '.join(flagged)} "
                  "(`cropkit.eval.convergence`; each record's `training` says why)."]
    lines += ["", f"Against the converged ACL-family model most robust on average ({best}):",
              verdict(worst["CRoPD · SLF"], encoders[best])]
    return "\n".join(lines)


def _robust_finetuning(records: list[Record]) -> str:
    worst = evaluations(records, attack="worst case")
    first = worst[0]
    lines = [f"Worst case over {', '.join(first['attack_settings']['over'])} at eps = {first['eps']:g}, "
             f"{first['n_examples']} test images:", ""]
    for dataset in dict.fromkeys(r["dataset"] for r in worst):
        here = _by((r for r in worst if r["dataset"] == dataset), lambda r: r["model"])
        cropd = next(name for name in here if name.startswith("CRoPD"))
        seen = "" if not here[cropd][0]["setup"].get("zero-shot") else " (never seen in fine-tuning)"
        lines += [f"On {dataset}{seen}, {_runs_line(here[cropd])}:", "", table(_runs_rows(here, "worst case")), ""]
        for name, rs in here.items():
            if name not in (cropd, "Identity · SLF"):
                lines += [verdict(rs, here["Identity · SLF"]), verdict(rs, here[cropd])]
        lines.append("")
    return "\n".join(lines).strip()


def _crossing(budgets: Sequence[Record], target: float) -> tuple[str, Record | None, float, float]:
    """Where a method's budgets (by FLOPs) cross `target`, decided on their intervals: ("reaches", the cheapest budget
    whose interval lies above it, and the FLOPs range the crossing lies in: above the last budget below the target,
    up to that one); ("does not", None, ...) when every interval lies below it; else ("not resolved", None, ...)."""
    below = 0.0
    for r in sorted(budgets, key=lambda r: r["flops"]):
        low, high = r["robust_interval"]
        if low >= target:
            return "reaches", r, below, r["flops"]
        if high < target:
            below = r["flops"]
    verdict = "does not" if all(r["robust_interval"][1] < target for r in budgets) else "not resolved"
    return verdict, None, below, math.inf


def _ratio(low: float, high: float) -> str:
    """A FLOP ratio range as text: '3.1x to 6.2x', 'at least 3.1x', 'at most 6.2x'."""
    if high == math.inf:
        return f"at least {low:.1f}x" if low > 0 else "not bounded at these budgets"
    return f"{low:.1f}x to {high:.1f}x" if low > 0 else f"at most {high:.1f}x"


def frontier(records: Iterable[Record], target: float) -> str:
    """For each method of notebook 07's cost records, whether it reaches `target` worst-case accuracy, decided on
    the 95% intervals (reaches / does not / not resolved), the cheapest budget whose interval lies above the target,
    the FLOPs range the crossing lies in (the budgets' granularity), and that range's ratio to CRoPD's."""
    records = record_list("records", records, where=_is_kind("cost"), counted="cost record",
                          needs=("method", "flops", "robust_accuracy", "robust_interval", "budget_epochs"),
                          fix="pass notebook 07's records (its cost records, CRoPD's among them)")
    by_method = _by((r for r in latest(records) if r.get("kind") == "cost"), lambda r: r["method"])
    require(any(m.startswith("CRoPD") for m in by_method), "records", records, f"cost records of {list(by_method)} "
            "only, none of CRoPD, against whose FLOPs the others are measured", "add CRoPD's cost records")
    crossing = {m: _crossing(rs, target) for m, rs in by_method.items()}
    cropd = next(m for m in by_method if m.startswith("CRoPD"))
    _, _, c_low, c_high = crossing[cropd]
    rows = []
    for method, (reaches, r, low, high) in crossing.items():
        best = max(by_method[method], key=lambda r: r["robust_accuracy"])
        rows.append({"method": method, "reaches the target": reaches,
                     "first budget above it": f"{r['budget_epochs']} epochs, {accuracy(r)}" if r else
                     f"none (best {accuracy(best)})",
                     "FLOPs of the crossing": (f"{low:.3g} to {high:.3g}" if r else f"above {low:.3g}") if low else
                     (f"at most {high:.3g}" if r else "-"),
                     "FLOPs / CRoPD": "1x (the reference)" if method == cropd else
                     _ratio(low / c_high if c_high != math.inf else 0.0, high / c_low if c_low else math.inf)})
    return (f"Target: {target:.0%} worst-case accuracy, decided on the 95% intervals; the crossing lies between the "
            "last budget whose interval is below the target and the first whose interval is above it.\n\n"
            + table(rows))


def _cost(records: list[Record]) -> str:
    costs = [r for r in records if r.get("kind") == "cost"]
    price = {}
    for r in costs:
        price.setdefault(r["method"], r["flops"] / r["examples"])
    cropd = next(m for m in price if m.startswith("CRoPD"))
    units = ", ".join(f"{m} {p / price[cropd]:.1f}x" for m, p in price.items() if m != cropd)
    scale = [r for r in records if r.get("kind") == "cost-at-scale"]
    large = [r for r in scale if r["model"] == "facebook/vit-mae-large"]
    return "\n".join([
        frontier(records, costs[0]["target"]), "",
        f"Unit price (training FLOPs per example-epoch) against CRoPD's {price[cropd]:.3g}: {units}.",
        "At ViT-MAE-Large scale (closed-form FLOPs, assumed epochs and PGD steps), fine-tuning / CRoPD training FLOPs: "
        + ", ".join(f"{r['method']} {r['ratio_preprocessor_fixed']:.1f}x (pre-processor fixed) / "
                    f"{r['ratio_preprocessor_scaled']:.1f}x (scaled)" for r in large) + "."])


def _is_reference(record: Record) -> bool:
    """Whether the reference AutoAttack (Croce & Hein's, `autoattack-original`) made the evaluation `record`."""
    return record.get("attack_settings", {}).get("kind") == "autoattack-original"


def _against_reference(records: list[Record]) -> list[tuple[Record, list[Record]]]:
    """Each reference AutoAttack evaluation with the other attacks run on its model, examples and eps."""
    return [(ref, [r for r in evaluations(records) if not _is_reference(r) and r["attack"] != "worst case"
                   and all(r.get(k) == ref.get(k) for k in ("model", "examples", "eps"))])
            for ref in evaluations(records) if _is_reference(ref)]


def reference_check(records: Sequence[Record]) -> str:
    """Notebook 08's paired check against the reference AutoAttack: each attack run on the reference's model and
    examples (torchattacks' port, the quick profile's strong attack) minus the reference, in points with the 95%
    interval of the paired difference, and whether the gap is within half the interval's width (the criterion the
    quick profile's strong-attack iterations are chosen by), per attack over the models; then what the reference's own
    checks flagged."""
    rows, flagged, within = [], [], {}
    for ref, others in _against_reference(list(records)):
        flagged += [f"{ref['model']}: {c['name']} ({c['evidence']})" for c in ref.get("reference_checks", [])
                    if not c["passed"]]
        for r in others:
            comparison = compare_records(r, ref)
            low, high = comparison.interval
            close = abs(comparison.difference) <= (high - low) / 2
            within.setdefault(r["attack"], []).append(close)
            difference = f"{100 * comparison.difference:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"
            rows.append({"model": r["model"], "n": r["n_examples"], "attack": r["attack"], "robust": accuracy(r),
                         "reference AutoAttack": accuracy(ref), "difference (points)": difference,
                         "within half the width": "yes" if close else "NO"})
    if not rows:
        return "No attack ran beside the reference AutoAttack on the same examples."
    verdicts = [f"- {attack}: within half the interval's width of the reference on {sum(c)} of {len(c)} model(s)"
                + (" (the criterion holds)." if all(c) else " (the criterion FAILS).") for attack, c in within.items()]
    checks = ("The reference's checks flagged " + "; ".join(flagged) + "." if flagged
              else "The reference's checks flagged nothing.")
    return "\n".join([table(rows), "", *verdicts, "", checks])


def _audit(records: list[Record]) -> str:
    compared = {(r["model"], r.get("examples"), r["eps"]) for r in evaluations(records) if _is_reference(r)}
    rows = [{"model": r["model"], "n": r["n_examples"], "clean": accuracy(r, "clean"), r["attack"]: accuracy(r),
             "audit": "passed" if r["audit"]["passed"] else "FAILED: " + ", ".join(r["audit"]["failed"])}
            for r in evaluations(records) if (r["model"], r.get("examples"), r["eps"]) not in compared]
    return "\n\n".join(([table(rows)] if rows else []) + ([reference_check(records)] if compared else []))


# --------------------------------------------------------------------------------------------------------------
# The questions the paper leaves open: pre-processor capacity, samples per class, the radius (notebooks 09-11).

def _beats(a: Record, b: Record) -> bool:
    comparison = compare_records(a, b)
    return comparison.resolved and comparison.difference > 0


NOT_ROBUST = 0.05  # a family whose best robust accuracy has its 95% upper bound below this is not robust at all


def saturation(records: Sequence[Record]) -> Record:
    """Of evaluations on the same examples in order of size, the smallest that no larger one beats on robust accuracy
    (paired exact McNemar): where robustness stops improving, as far as this evaluation can resolve."""
    records = record_list("records", records, fix="pass evaluations on the same examples, in order of size")
    return next(r for i, r in enumerate(records) if not any(_beats(s, r) for s in records[i + 1:]))


def _capacity(records: list[Record]) -> str:
    found = [r for r in evaluations(records, attack="worst case") if "kind" not in r]
    identity = next((r for r in found if r["setup"]["architecture"] == "none"), None)  # no pre-processor: the floor
    families: dict[str, list[Record]] = {}
    for r in found:
        if r is not identity:
            families.setdefault(r["setup"]["architecture"], []).append(r)

    def name(r: Record) -> str:
        return f"{r['setup']['architecture']} {r['setup']['size']}"

    def cost(r: Record) -> str:
        return (f"{100 * r['setup']['parameter_fraction']:.1f}% of the foundation model's parameters, "
                f"{r['setup']['train_flops']:.3g} training FLOPs")

    rows = []
    for members in families.values():
        members.sort(key=lambda r: r["setup"]["parameters"])
        rows += [{"pre-processor": name(r), "parameters": f"{r['setup']['parameters']:,}",
                  "of the foundation model": f"{100 * r['setup']['parameter_fraction']:.1f}%",
                  "epochs": r["setup"]["epochs"], "training FLOPs": f"{r['setup']['train_flops']:.3g}",
                  "FLOPs / example-epoch": f"{r['setup']['train_flops'] / r['setup']['train_examples']:.3g}",
                  "clean": accuracy(r, "clean"), r["attack"]: accuracy(r)} for r in members]
    if identity is not None:
        rows.append({"pre-processor": "none (Identity)", "parameters": "0", "of the foundation model": "0.0%",
                     "clean": accuracy(identity, "clean"), identity["attack"]: accuracy(identity)})
    first = found[0]
    lines = [f"Worst case over {', '.join(first['attack_settings']['over'])} at eps = {first['eps']:g} on "
             f"{first['n_examples']} test images, SLF heads:", "",
             table(rows), ""]
    for architecture, members in families.items():
        lines += [f"- {claim(b, a, a_name=name(b), b_name=name(a))}." + resolution(b, a)
                  for a, b in zip(members, members[1:])]
        best = max(members, key=lambda r: r["robust_accuracy"])
        if identity is not None:
            against = claim(best, identity, a_name=f"{name(best)} (its most robust)", b_name="no pre-processor")
            lines.append(f"- {against}." + resolution(best, identity))
        if len(members) < 2:
            continue
        top, largest = saturation(members), members[-1]
        if best["robust_interval"][1] < NOT_ROBUST:
            lines.append(f"- **{architecture}: not robust at any size swept** (best {accuracy(best)}, upper bound below "
                         f"{NOT_ROBUST:.0%}): a defence the attack breaks on nearly every example is a failure to explain, "
                         "not a point on the capacity curve; this sweep cannot say where its robustness stops "
                         "improving.")
        elif top is largest:
            lines.append(f"- **{architecture}: robustness still improves at the largest size swept**, {name(top)} "
                         f"({cost(top)}): every smaller one is beaten by a larger one; a larger size may help further.")
        else:
            lines.append(f"- **{architecture}: robustness stops improving at {name(top)}** ({cost(top)}, {accuracy(top)}): "
                         f"no larger {architecture} pre-processor beats it at n = {top['n_examples']}; the largest "
                         f"swept, {name(largest)}, costs {largest['setup']['train_flops'] / top['setup']['train_flops']:.1f}x "
                         f"its training FLOPs ({accuracy(largest)}).")
    return "\n".join(lines)


def _samples_per_class(records: list[Record]) -> str:
    main = [r for r in evaluations(records, attack="worst case") if "kind" not in r]
    parts = {(r["model"], r["classes"][0]): r for r in records if r.get("kind") == "per-class"}
    all_classes = max(r["setup"]["n_classes"] for r in main)
    first = main[0]

    def name(r: Record) -> str:
        return r["model"].removesuffix(" · SLF")

    def on_classes(r: Record, classes: Sequence[str]) -> Record:
        return pooled([parts[r["model"], c] for c in classes])

    lines = [f"Worst case over {', '.join(first['attack_settings']['over'])} at eps = {first['eps']:g} on "
             f"{first['n_examples']} class-balanced test images of all "
             f"{all_classes} classes; SLF heads fitted on the whole training split, so only the pre-processor's "
             "training set varies; every arm trained for the same number of optimiser steps:", "",
             table([{"arm": name(r), "training examples": r["setup"]["train_examples"], "steps": r["setup"]["steps"],
                     "clean": accuracy(r, "clean"), r["attack"]: accuracy(r)} for r in main]), ""]
    every = [r for r in main if r["setup"]["n_classes"] == all_classes]
    for free in (False, True):
        arms = sorted((r for r in every if r["setup"]["label_free"] == free), key=lambda r: r["setup"]["per_class"])
        if len(arms) < 2:
            continue
        few, many = arms[0], arms[-1]
        rose = sum(parts[many["model"], c]["robust_accuracy"] > parts[few["model"], c]["robust_accuracy"]
                   for c in few["setup"]["classes"])
        fell = sum(parts[many["model"], c]["robust_accuracy"] < parts[few["model"], c]["robust_accuracy"]
                   for c in few["setup"]["classes"])
        lines += [f"**Samples per class, every class, {'label-free' if free else 'class-based'} L_con:**", ""]
        lines += [f"- {claim(b, a, a_name=name(b), b_name=name(a))}." + resolution(b, a) for a, b in zip(arms, arms[1:])]
        if len(arms) > 2:
            lines.append(f"- {claim(many, few, a_name=name(many), b_name=name(few))}." + resolution(many, few))
        lines += [f"- Per class, from {few['setup']['per_class']} to {many['setup']['per_class']} examples per class the "
                  f"robust accuracy rose for {rose} and fell for {fell} of {all_classes} classes "
                  f"({parts[few['model'], few['setup']['classes'][0]]['n_examples']} test images each).", ""]
    fewer = [r for r in main if r["setup"]["n_classes"] < all_classes]
    if fewer:
        lines += ["**Fewer classes at a fixed total** (on the classes the smaller arm saw, paired):", ""]
    for r in fewer:
        match = [s for s in every if s["setup"]["label_free"] == r["setup"]["label_free"]
                 and s["setup"]["train_examples"] == r["setup"]["train_examples"]]
        if not match:
            lines.append(f"- {name(r)}: no all-classes arm with the same total ({r['setup']['train_examples']} examples) "
                         "and loss to compare with.")
            continue
        seen = r["setup"]["classes"]
        a, b = on_classes(r, seen), on_classes(match[0], seen)
        unseen = [c for c in match[0]["setup"]["classes"] if c not in seen]
        rest = f"; on the {len(unseen)} classes it never saw: {accuracy(on_classes(r, unseen))}" if unseen else ""
        lines.append(f"- on classes {', '.join(seen)}: {claim(a, b, a_name=name(r), b_name=name(match[0]))}{rest}."
                     + resolution(a, b))
    pairs = [(r, s) for r in main for s in main if s["setup"]["label_free"] and not r["setup"]["label_free"]
             and (s["setup"]["per_class"], s["setup"]["classes"]) == (r["setup"]["per_class"], r["setup"]["classes"])]
    if pairs:
        lines += ["", "**Label-free against class-based negatives**, arm by arm:", ""]
        lines += [f"- {claim(s, r, a_name=name(s), b_name=name(r))}." + resolution(s, r) for r, s in pairs]
    return "\n".join(lines).strip()


def _radius(records: list[Record]) -> str:
    main = [r for r in evaluations(records, attack="worst case") if "kind" not in r]
    cell = {(r["setup"]["train_eps"], r["eps"]): r for r in main}
    trained, tested = sorted({e for e, _ in cell}), sorted({t for _, t in cell})
    lines = [f"Worst-case accuracy over {', '.join(main[0]['attack_settings']['over'])} (%, 95% interval) on "
             f"{main[0]['n_examples']} test images, rows "
             "trained at, columns attacked at:", "",
             table([{"train eps": f"{e:.3g}", **{f"test {t:.3g}": accuracy(cell[e, t]) for t in tested if (e, t) in cell}}
                    for e in trained]), ""]
    for t in (t for t in tested if t in trained):
        lines += [f"- at test eps {t:.3g}: {claim(cell[t, t], cell[e, t], a_name=f'trained at {t:.3g}', b_name=f'trained at {e:.3g}')}."
                  + resolution(cell[t, t], cell[e, t]) for e in trained if e != t and (e, t) in cell]
    rising = [f"{e:.3g}" for e in trained
              if any(cell[e, a]["robust_accuracy"] < cell[e, b]["robust_accuracy"] for a, b in zip(tested, tested[1:]))]
    lines.append("- Robust accuracy falls (or stays) as the test radius grows for every model, as it must without "
                 "gradient masking." if not rising else f"- Robust accuracy *rises* with the test radius for the "
                 f"model(s) trained at {', '.join(rising)}: check them for gradient masking (notebook 08).")
    fits = sorted((r for r in records if r.get("kind") == "bound-fit"), key=lambda r: r["eps"])
    if fits:
        terms = [r for r in records if r.get("kind") == "bound-terms"]
        lines += ["", f"The bound at each test radius (kappa fitted across the {len(fits[0]['models'])} models on the "
                      "floor-free increase of L_con under PGD, 95% bootstrap interval; per model: mean gap adversarial "
                      "minus clean CE, and increase):", "",
                  table([{"test eps": f"{f['eps']:.3g}",
                          "kappa": f"{f['kappa']:.3f} [{f['kappa_interval'][0]:.3f}, {f['kappa_interval'][1]:.3f}]",
                          **{f"trained at {r['setup']['train_eps']:.3g}: gap / increase":
                             f"{r['gap']:.2f} / {r['increase (PGD)']:.3f}" for r in terms if r["eps"] == f["eps"]}}
                         for f in fits]), ""]
        collapsed = sorted({r["setup"]["train_eps"] for r in terms if r.get("latent similarity", 0) >= COLLAPSED})
        if collapsed:
            shown = ", ".join(f"{e:.3g}" for e in collapsed)
            lines.append(f"- **The latent of the model(s) trained at {shown} has collapsed** (latent similarity >= "
                         f"{COLLAPSED}: every image maps to about the same direction), so their L_con does not move "
                         "under attack while their adversarial CE does: no finite kappa bounds them, and the kappa "
                         "fitted across the models is set by them rather than by the bound's constant.")
        low, high = fits[0], fits[-1]
        apart = low["kappa_interval"][1] < high["kappa_interval"][0] or high["kappa_interval"][1] < low["kappa_interval"][0]
        lines.append(f"- kappa goes from {low['kappa']:.3f} at eps {low['eps']:.3g} to {high['kappa']:.3f} at eps "
                     f"{high['eps']:.3g}: " + ("a collapsed model sets it, so this is not a reading of the bound's "
                     "constant." if collapsed else "the intervals do not overlap, so the bound's constant depends on "
                     "the radius (fit it at the radius it is used at)." if apart else "the intervals overlap, so this "
                     "run does not show the constant moving with the radius."))
    return "\n".join(lines)


SUMMARIES: dict[str, Callable[[list[Record]], str]] = {
    "00_quickstart": _quickstart,
    "01_theory_bound": _theory_bound,
    "02_main_results": _main_results,
    "03_lambda_ablation": _lambda_ablation,
    "04_cross_dataset_transfer": _transfer,
    "05_acl_rcs_air": _acl_family,
    "06_robust_finetuning": _robust_finetuning,
    "07_cost": _cost,
    "08_robustness_audit": _audit,
    "09_capacity": _capacity,
    "10_samples_per_class": _samples_per_class,
    "11_radius": _radius,
}


# What each summary reads first (the others: worst-case evaluations), so that another notebook's records are refused.
_READS: dict[str, tuple[str, Callable[[Record], bool]]] = {
    "00_quickstart": ("linear-probe record", _is_kind("linear-probe")),
    "01_theory_bound": ("bound-check record", _is_kind("bound-check")),
    "07_cost": ("cost record", _is_kind("cost")),
    "08_robustness_audit": ("evaluation", lambda r: bool(r.get("attack"))),
}
_WORST_CASE = ("worst-case evaluation", lambda r: r.get("attack") == "worst case")


def summary(notebook: str, records: Iterable[Record]) -> str:
    """The closing summary of `notebook` (e.g. "02_main_results") from its records, as markdown, ending with how
    many comparisons it tested and which survive Holm's correction for testing them together."""
    choice(tuple(SUMMARIES), "notebook")("notebook", notebook)
    counted, reads = _READS.get(notebook, _WORST_CASE)
    records = record_list("records", records, where=reads, counted=counted,
                          fix=f"pass the records notebook {notebook} wrote (run.written, or load_records of its file)")
    with collecting() as tests:
        text = SUMMARIES[notebook](latest(records))
    corrected = multiplicity(tests)
    return f"{text}\n\n{corrected}" if corrected else text


# --------------------------------------------------------------------------------------------------------------
# The committed reference and the generated README block.

def reference_dir(profile: str) -> Path:
    return project_root() / "reference" / profile


def load_reference(profile: str, folder: Path | None = None) -> dict[str, list[Record]]:
    """Each notebook's records in `folder` (default: the profile's committed reference), by notebook name."""
    folder = reference_dir(profile) if folder is None else folder
    return {path.stem: load_records(path) for path in sorted(folder.glob("[0-9][0-9]_*.jsonl"))}


def check_notebooks(name: str, value: Any, fix: str, at_least: int = 1) -> None:
    """Refuse `value` unless it maps notebook names to lists of records (as `load_reference` returns), with records
    of at least `at_least` notebooks."""
    require(isinstance(value, dict), name, value, "not a dict of each notebook's records", fix)
    require(len(value) >= at_least, name, value, "no notebook's records", fix)
    for notebook, records in value.items():
        record_list(f"{name}[{notebook!r}]", records, at_least=0, fix=fix)


def _reference_fix(profile: str) -> str:
    return (f"pass load_reference({profile!r}) once reference/{profile}/ holds records (`cropkit reproduce --profile "
            f"{profile}`, then `cropkit report --profile {profile} --update-from results/{profile}`)")


def _sections(by_notebook: dict[str, list[Record]], names: Iterable[str], level: str) -> list[str]:
    """Each notebook's summary under a heading, with its records' provenance."""
    parts = []
    for name in names:
        records = by_notebook.get(name)
        if records and name in SUMMARIES:
            first = records[0]
            parts.append(f"{level} {name}\n\n{summary(name, records)}\n\n"
                         f"<sub>{len(records)} records; commit {first.get('commit', '?')[:12]}, "
                         f"{first.get('device', '?')}, {first.get('timestamp', '?')}.</sub>\n")
    return parts


def render(profile: str, by_notebook: dict[str, list[Record]]) -> str:
    """The results page: every notebook's summary from its records, with where they came from."""
    check_notebooks("by_notebook", by_notebook, _reference_fix(profile))
    return "\n".join([
        f"# Results of the `{profile}` profile\n",
        f"Generated by `cropkit report --profile {profile}` from the records in `reference/{profile}/` (each record "
        "holds its provenance: commit, device, library versions, time). Accuracies in percent with 95% Wilson "
        "intervals; comparisons are exact McNemar tests on the same examples.\n",
        *_sections(by_notebook, by_notebook, "##")])


# The README's headline comparisons: (notebook, method A, method B, which of the notebook's worst-case records).
HEADLINES: tuple[tuple[str, str, str, Callable[[Record], bool]], ...] = (
    *(("02_main_results", "CRoPD", other, lambda r: r["setup"].get("protocol") == "SLF")
      for other in ("Identity", "Recon AE", "Adv-denoising AE")),
    ("03_lambda_ablation", "CRoPD (lambda=1)", "CRoPD (lambda=0.1)", lambda r: True),
    *(("06_robust_finetuning", "CRoPD", other, lambda r: not r["setup"].get("zero-shot"))
      for other in ("AFT", "TeCoA", "PMG-AFT")),
)


def _headline_row(notebook: str, comparison: RunsComparison, adjusted: float | None, tested: int) -> dict[str, Any]:
    low, high = comparison.interval
    ahead, behind = comparison.favouring
    if comparison.runs == 1:
        said = "one training run: no verdict about the methods"
    elif comparison.resolved:
        said = f"{comparison.a if comparison.difference > 0 else comparison.b} ahead"
        said += "" if adjusted < ALPHA else f" alone, not after Holm's correction over the table's {tested} rows"
    else:
        said = "not resolved" + (f" (about {comparison.runs_needed} runs would resolve it)"
                                 if comparison.runs_needed else " (the test images limit it)")
    return {"notebook": notebook[:2], "A vs B, worst-case accuracy": f"{comparison.a} vs {comparison.b}",
            "runs": comparison.runs, "A - B, points [95% interval]":
            f"{100 * comparison.difference:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]",
            "runs with A ahead / B ahead": f"{ahead} / {behind}", "verdict": said}


def headline(by_notebook: dict[str, list[Record]]) -> str:
    """The headline comparisons (`HEADLINES`) over training runs, one row each: the mean difference of worst-case
    accuracy with its interval over runs and test images, how many runs put each ahead, and the verdict, which
    says when a resolved row does not survive Holm's correction for the table's rows tested together. A model is
    named by its name or the start of it up to a space ("CRoPD" for "CRoPD (lambda=1) · SLF")."""
    found = []
    for notebook, a, b, where in HEADLINES:
        worst = [r for r in evaluations(latest(by_notebook.get(notebook, [])), attack="worst case") if where(r)]
        first = {name: [r for r in worst if r["model"] == name or r["model"].startswith(name + " ")] for name in (a, b)}
        if all(first.values()):
            found.append((notebook, across_runs(first[a], first[b])[0]))
    if not found:
        return "No headline comparison has been run in this profile."
    tested = [c.p_value for _, c in found if c.p_value is not None]
    adjusted = iter(holm(tested))
    return table([_headline_row(notebook, c, next(adjusted) if c.p_value is not None else None, len(tested))
                  for notebook, c in found])


def readme_block(profile: str, by_notebook: dict[str, list[Record]]) -> str:
    """The README's generated results: the headline comparisons over training runs, each notebook's wall-clock in
    the run that made the committed outputs (the quick profile's), and where the rest is."""
    check_notebooks("by_notebook", by_notebook, _reference_fix(profile))
    seconds = {p.stem: json.loads(p.read_text(encoding="utf-8"))["metadata"].get("cropkit", {}).get("seconds")
               for p in sorted((project_root() / "notebooks").glob("[0-9][0-9]_*.ipynb"))}
    attacked = [r for records in by_notebook.values() for r in evaluations(latest(records))
                if r["attack"] != "worst case"]
    replayed = sum(bool(r.get("cached")) for r in attacked)
    timing = (["Wall-clock of each notebook in the run that made this reference: "
               + ", ".join(f"{name[:2]} {s:.0f} s" for name, s in seconds.items())
               + f"; {sum(seconds.values()) / 60:.1f} min in all, with {replayed} of its {len(attacked)} attack "
               "evaluations replayed from the cache of earlier runs.\n"]
              if profile == "quick" and None not in seconds.values() else [])
    return "\n".join([
        f"Generated by `cropkit report --profile {profile}` from `reference/{profile}/`; every notebook's summary, "
        f"with each run's own tests, is in [`reference/{profile}/RESULTS.md`](reference/{profile}/RESULTS.md).\n",
        headline(by_notebook), "", *timing])


README_PROFILES = ("quick", "cifar10-subset")  # the profiles whose headline verdicts the README shows


def outputs(profile: str) -> dict[Path, str]:
    """What `cropkit report` writes for a profile, rendered from its committed reference records."""
    by_notebook = load_reference(profile)
    written = {reference_dir(profile) / "RESULTS.md": render(profile, by_notebook)}
    if profile in README_PROFILES:
        readme = project_root() / "README.md"
        written[readme] = readme_with_block(readme.read_text(), profile, readme_block(profile, by_notebook))
    return written


def stale(profile: str) -> list[Path]:
    """The generated files whose committed text differs from what the reference records render to."""
    return [path for path, text in outputs(profile).items() if not path.is_file() or path.read_text() != text]


def write(profile: str) -> list[Path]:
    """Render the results page and the README block from the reference records; return the files that changed."""
    changed = stale(profile)
    for path, text in outputs(profile).items():
        if path in changed:
            atomic_write_bytes(path, text.encode())
    return changed


def last_run(records: list[Record]) -> list[Record]:
    """The records of the last run among `records` (by `run_id`; records without one form a single run)."""
    records = record_list("records", records, at_least=0)
    last = records[-1].get("run_id") if records else None
    return [r for r in records if r.get("run_id") == last]


def recipe_versions() -> dict[str, int]:
    """The recipe version of every trained artifact: what a committed output was made with."""
    from cropkit.acl import pretrain as acl
    from cropkit.cropd import config as preprocessor
    from cropkit.eval import protocols
    from cropkit.finetune import robust as finetune
    from cropkit.foundation import pretrain

    return {"pretrain": pretrain.RECIPE_VERSION, "preprocessor": preprocessor.RECIPE_VERSION, "acl": acl.RECIPE_VERSION,
            "finetune": finetune.RECIPE_VERSION, "slf_head": protocols.HEAD_RECIPE_VERSION}


def source_digest(notebook: nbformat.NotebookNode) -> str:
    """Hash of a notebook's code (its code cells, papermill's injected parameters left out)."""
    code = [c.source for c in notebook.cells
            if c.cell_type == "code" and "injected-parameters" not in c.metadata.get("tags", [])]
    return hashlib.sha256("\0".join(code).encode()).hexdigest()[:16]


_OBJECT_REPR = re.compile(r"<[\w.]+ (object )?at 0x[0-9a-f]+>")


def clean_outputs(cell: Any, paths: Mapping[str, str]) -> None:
    """What a reader of the repository should not see in a committed cell's outputs: this machine's folders (each
    key of `paths` replaced by its value, e.g. the checkout by nothing, the cache by `$CROPKIT_CACHE/`) and an
    object's address where the output has a rich form beside it (a pandas Styler's `<...Styler at 0x...>`)."""
    for output in cell.get("outputs", []):
        data = output.get("data", {})
        if len(data) > 1 and _OBJECT_REPR.fullmatch(str(data.get("text/plain", "")).strip()):
            del data["text/plain"]
        for holder, key in [(output, "text"), *((data, mime) for mime in data if mime.startswith("text/"))]:
            if isinstance(holder.get(key), str):
                for folder, shown in paths.items():
                    holder[key] = holder[key].replace(folder, shown)


def commit_outputs(executed: Path, target: Path, profile: str, seconds: float | None) -> None:
    """Copy an executed notebook's outputs over the committed notebook `target`: without papermill's injected
    parameters and timing metadata, cleaned of machine paths and object addresses (`clean_outputs`), stamped with
    the recipes and the code it was made with (a test compares them with the current ones, so outputs of an older
    recipe or of edited code are caught)."""
    import nbformat

    notebook = nbformat.read(executed, as_version=4)
    notebook.cells = [c for c in notebook.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    for cell in notebook.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        clean_outputs(cell, {f"{cache_dir()}/": "$CROPKIT_CACHE/", f"{project_root()}/": ""})
    notebook.metadata.pop("papermill", None)
    notebook.metadata["cropkit"] = {"profile": profile, "recipes": recipe_versions(),
                                    "source": source_digest(notebook), "seconds": seconds}
    atomic_write_bytes(target, nbformat.writes(notebook).encode())


def update_reference(profile: str, folder: Path) -> list[Path]:
    """Make the last complete run in `folder` (e.g. `results/quick`) the profile's reference: its records (runs that
    did not finish `ok` are left out) and, for the quick profile, the executed notebooks' outputs.

    Each notebook's last run logged in `runs.jsonl` must be the one its records come from (so its executed copy
    holds that run's outputs), must have ended `ok`, and must have run the current recipes: a folder holding older
    runs beside a fresh `--only` run cannot pass them off as current. Nothing is written when one is not."""
    by_notebook = {name: last_run([r for r in records if "run_status" not in r])
                   for name, records in load_reference(profile, folder).items()}
    if not any(by_notebook.values()):
        raise ValueError(f"no notebook records (NN_*.jsonl) in {folder}: run `cropkit reproduce --profile {profile}`")
    last = {run.get("notebook"): run for run in load_records(folder / RUNS_FILE)}
    current = recipe_versions()
    made_by = {name: last.get(name, {}) for name, records in by_notebook.items() if records}
    problems = {}
    for name, run in made_by.items():
        if run.get("run_id") != by_notebook[name][0].get("run_id") or run.get("status") != "ok":
            problems[name] = (f"its last run ({run.get('run_id', 'none logged')}) "
                              f"{'ended ' + run['status'] if 'status' in run else 'is not in ' + RUNS_FILE}")
        elif run.get("recipes") != current:
            problems[name] = f"made with recipes {run.get('recipes', 'not recorded')}"
    if problems:
        raise ValueError(f"{folder} does not hold a complete current run of every notebook (the code's recipes are "
                         f"{current}): " + "; ".join(f"{name}: {why}" for name, why in problems.items())
                         + f". Rerun them (`cropkit reproduce --profile {profile} --only "
                         + ",".join(name[:2] for name in problems) + "`), then update the reference.")
    target = reference_dir(profile)
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name, run in made_by.items():
        path = target / f"{name}.jsonl"
        atomic_write_bytes(path, "".join(json.dumps(r, sort_keys=True) + "\n"
                                         for r in latest(by_notebook[name])).encode())
        written.append(path)
        executed = folder / f"{name}.ipynb"
        if profile == "quick" and executed.is_file():
            commit_outputs(executed, project_root() / "notebooks" / f"{name}.ipynb", profile, run["seconds"])
            written.append(project_root() / "notebooks" / f"{name}.ipynb")
    return written


BEGIN, END = "<!-- results:{profile}:begin -->", "<!-- results:{profile}:end -->"


def readme_with_block(readme: str, profile: str, block: str) -> str:
    """`readme` with the text between the profile's generated-block markers replaced by `block`."""
    begin, end = BEGIN.format(profile=profile), END.format(profile=profile)
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), flags=re.S)
    if not pattern.search(readme):
        raise ValueError(f"the README has no generated block for {profile!r}: add the lines {begin} and {end}")
    return pattern.sub(lambda _: f"{begin}\n{block.strip()}\n{end}", readme)
