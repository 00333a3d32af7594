"""The closing summaries of notebooks 09-11, on records whose outcomes are known; what rendering them loads."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from cropkit.eval.records import accuracy_fields, encode_outcomes
from cropkit.runs import report

N = 100


def evaluation(model: str, robust: int, *, setup: dict, examples: str = "test", eps: float = 0.1,
               clean: int = N, n: int = N, first: int = 0) -> dict:
    """An evaluation record on `n` examples: `clean` correct, and examples first..first+robust-1 also robust."""
    correct = np.arange(n) < clean
    held = (np.arange(n) >= first) & (np.arange(n) < first + robust) & correct
    return {"model": model, "attack": "worst case", "attack_settings": {"over": ["PGD-10", "APGD-CE-10"]},
            "eps": eps, "n_examples": n, "examples": examples,
            "setup": setup, "dataset": "toy", **accuracy_fields(correct, "clean"), **accuracy_fields(held, "robust"),
            "outcomes": {"clean": encode_outcomes(correct), "robust": encode_outcomes(held)}}


def sized(width: int, robust: int, architecture: str = "conv") -> dict:
    return evaluation(f"{architecture} {width}", robust, setup={
        "architecture": architecture, "size": f"width {width}", "parameters": 1000 * width,
        "parameter_fraction": width / 100, "epochs": 8, "train_flops": 1e9 * width, "train_examples": 1000})


def test_saturation_is_the_smallest_size_no_larger_one_beats():
    small, middle, large = sized(4, 10), sized(8, 40), sized(16, 44)
    assert report.saturation([small, middle, large]) is middle  # 44 vs 40 on the same examples: not resolved
    assert report.saturation([small, middle]) is middle
    assert report.saturation([middle, sized(16, 70)])["model"] == "conv 16"
    with pytest.raises(ValueError):
        report.saturation([])


def unprocessed(robust: int) -> dict:
    """Notebook 09's floor: the foundation model and head with no pre-processor."""
    return evaluation("Identity · SLF", robust, setup={"architecture": "none", "size": "none", "parameters": 0,
                                                      "parameter_fraction": 0.0})


def test_capacity_summary_names_where_robustness_stops_and_its_cost():
    text = report.summary("09_capacity", [sized(4, 10), sized(8, 40), sized(16, 44), sized(1, 20, "vit"),
                                          sized(2, 50, "vit"), unprocessed(2)])
    assert "conv width 16 (its most robust) beats no pre-processor on worst-case accuracy" in text
    assert "| none (Identity) | 0 | 0.0% |" in text and "none none" not in text  # a floor, not a family
    assert "conv: robustness stops improving at conv width 8** (8.0% of the foundation model's parameters" in text
    assert "costs 2.0x its training FLOPs" in text
    assert "vit: robustness still improves at the largest size swept" in text
    assert "conv width 8 beats conv width 4 on worst-case accuracy" in text and "conv width 16 vs conv width 8" in text


def test_capacity_summary_says_when_no_size_of_a_family_is_robust():
    text = report.summary("09_capacity", [sized(4, 10), sized(8, 40), sized(1, 0, "vit"), sized(2, 0, "vit")])
    assert "**vit: not robust at any size swept**" in text and "robustness stops improving at vit" not in text
    assert "conv: robustness still improves at the largest size swept" in text


def arm(per_class: int, robust_by_class: dict[str, int], *, classes: list[str], free: bool = False,
        all_classes: tuple[str, ...] = ("a", "b", "c", "d")) -> list[dict]:
    """One arm's evaluation on 10 test images per class of `all_classes`, and its per-class records."""
    name = f"CRoPD, {per_class}/class, {len(classes)} classes" + (", label-free" if free else "") + " · SLF"
    setup = {"per_class": per_class, "classes": classes, "n_classes": len(classes), "label_free": free,
             "train_examples": per_class * len(classes), "steps": 64}
    parts = [evaluation(name, robust_by_class.get(c, 0), setup=setup, examples=f"class {c}", n=10)
             | {"kind": "per-class", "classes": [c], "train_count": per_class if c in classes else 0}
             for c in all_classes]
    outcomes = {w: np.concatenate([np.arange(10) < (10 if w == "clean" else robust_by_class.get(c, 0))
                                   for c in all_classes]) for w in ("clean", "robust")}
    whole = evaluation(name, 0, setup=setup, n=40) | {
        **accuracy_fields(outcomes["clean"], "clean"), **accuracy_fields(outcomes["robust"], "robust"),
        "outcomes": {w: encode_outcomes(o) for w, o in outcomes.items()}}
    return [whole, *parts]


def test_samples_per_class_summary_compares_arms_paired_and_on_the_seen_classes():
    every = ["a", "b", "c", "d"]
    records = (arm(5, {c: 2 for c in every}, classes=every) + arm(50, {c: 9 for c in every}, classes=every)
               + arm(5, {c: 2 for c in every}, classes=every, free=True)
               + arm(50, {c: 3 for c in every}, classes=every, free=True)
               + arm(10, {"a": 10, "b": 10}, classes=["a", "b"]))
    text = report.summary("10_samples_per_class", records)
    assert "CRoPD, 50/class, 4 classes beats CRoPD, 5/class, 4 classes" in text
    assert "rose for 4 and fell for 0 of 4 classes" in text
    assert "CRoPD, 50/class, 4 classes, label-free vs CRoPD, 5/class, 4 classes, label-free" in text  # unresolved
    assert "on classes a, b: CRoPD, 10/class, 2 classes beats CRoPD, 5/class, 4 classes" in text
    assert "never saw: 0.0" in text
    assert "CRoPD, 50/class, 4 classes beats CRoPD, 50/class, 4 classes, label-free" in text


def test_radius_summary_reads_the_grid_the_matched_radius_and_kappa():
    robust = {(0.05, 0.05): 80, (0.05, 0.1): 30, (0.1, 0.05): 85, (0.1, 0.1): 60, (0.2, 0.05): 70, (0.2, 0.1): 65}
    records = [evaluation(f"trained at {e}", r, setup={"train_eps": e}, eps=t) for (e, t), r in robust.items()]
    records += [{"kind": "bound-fit", "eps": t, "kappa": k, "kappa_interval": interval, "models": ["x", "y", "z"]}
                for t, k, interval in [(0.05, 0.3, [0.2, 0.4]), (0.1, 0.9, [0.7, 1.1])]]
    records += [{"kind": "bound-terms", "eps": t, "setup": {"train_eps": e}, "model": f"trained at {e}", "gap": 1.0,
                 "increase (PGD)": 0.5} for e in (0.05, 0.1, 0.2) for t in (0.05, 0.1)]
    text = report.summary("11_radius", records)
    assert "| 0.05 | 80.0 [" in text and "| test 0.05 | test 0.1 |" in text
    assert "at test eps 0.1: trained at 0.1 beats trained at 0.05" in text
    assert "falls (or stays) as the test radius grows for every model" in text
    assert "the intervals do not overlap" in text
    assert "has collapsed" not in text
    collapsed = [r | {"latent similarity": 0.99 if r.get("setup", {}).get("train_eps") == 0.2 else 0.3}
                 if r.get("kind") == "bound-terms" else r for r in records]
    flagged = report.summary("11_radius", collapsed)
    assert "**The latent of the model(s) trained at 0.2 has collapsed**" in flagged
    assert "a collapsed model sets it" in flagged and "the intervals do not overlap" not in flagged
    rising = records[:-8] + [evaluation("trained at 0.2", 90, setup={"train_eps": 0.2}, eps=0.1)] + records[-8:]
    assert "*rises* with the test radius for the model(s) trained at 0.2" in report.summary("11_radius", rising)


def test_resolution_when_every_discordant_example_goes_one_way():
    """5 of 100 examples robust for B only: unresolved (p = 0.0625); the float difference of the two accuracies is
    -0.05000000000000004, a rounding error beyond the 5% discordant that the sample-size formula refused."""
    a, b = (evaluation(m, r, setup={}, first=f) for m, r, f in (("A", 60, 5), ("B", 65, 0)))
    assert "about" in report.resolution(a, b) and "-5.0 points, 5% of examples" in report.resolution(a, b)


def test_rendering_summaries_does_not_load_nbformat():
    """Every notebook imports `cropkit.runs.report` for its summary; nbformat loads jsonschema, whose URI grammar alone
    takes 3 s of each kernel's start, so only the functions that write notebooks import it."""
    code = "import sys, cropkit.runs.report; sys.exit(sorted({'nbformat', 'jsonschema'} & set(sys.modules)) or None)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def test_a_model_measured_once_shows_no_spread_instead_of_nan():
    from cropkit.eval.stats import seed_spread
    from cropkit.runs.report import _mean_sd

    assert _mean_sd(seed_spread([0.5])) == "50.0 (one run)"
    assert _mean_sd(seed_spread([0.5, 0.6])) == "55.0 ± 7.1"


def test_committed_outputs_carry_no_machine_path_or_object_address(tmp_path):
    import nbformat

    from cropkit.runs.report import clean_outputs

    cell = nbformat.v4.new_code_cell("run.save(fig, 'x.png')")
    cell.outputs = [
        nbformat.v4.new_output("execute_result", {"text/html": "<table></table>",
                                                  "text/plain": "<pandas.io.formats.style.Styler at 0x7f4562cfc050>"}),
        nbformat.v4.new_output("execute_result", {"text/plain": f"PosixPath('{tmp_path}/figures/quick/x.png')"}),
        nbformat.v4.new_output("stream", name="stdout", text=f"records in {tmp_path}/results/quick/00.jsonl\n"),
        nbformat.v4.new_output("stream", name="stderr", text=f"model in {tmp_path}/cache/preprocessors/x: collapsed\n"),
        nbformat.v4.new_output("execute_result", {"text/plain": "<object at 0x7f00aa>"}),  # nothing richer: kept
    ]
    clean_outputs(cell, {f"{tmp_path}/cache/": "$CROPKIT_CACHE/", f"{tmp_path}/": ""})
    styler, path, stream, warning, alone = cell.outputs
    assert dict(styler["data"]) == {"text/html": "<table></table>"}
    assert path["data"]["text/plain"] == "PosixPath('figures/quick/x.png')"
    assert stream["text"] == "records in results/quick/00.jsonl\n"
    assert warning["text"] == "model in $CROPKIT_CACHE/preprocessors/x: collapsed\n"
    assert alone["data"]["text/plain"] == "<object at 0x7f00aa>"
