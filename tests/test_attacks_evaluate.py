"""Attacks and the end-to-end evaluator: real attacks, sane numbers, provenance on every record."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchattacks

from cropkit.eval import attacks
from cropkit.eval.attacks import AttackSpec, pgd, validate_eps
from cropkit.eval.evaluate import attack_batches, evaluate, predict
from cropkit.eval.records import load_records

PROVENANCE = {"model", "setup", "dataset", "split", "n_examples", "threat_model", "eps", "attack", "attack_settings",
              "implementation", "seed", "clean_accuracy", "robust_accuracy", "runtime_s", "audit", "device", "versions",
              "commit", "timestamp"}


@pytest.mark.parametrize("eps", [-0.01, 1.5, 8])
def test_eps_out_of_range_is_rejected(eps):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        validate_eps(eps)


def test_eps_in_pixel_units_gets_a_hint():
    with pytest.raises(ValueError, match="8/255"):
        pgd(8)


def test_spec_labels_settings_and_errors():
    spec = pgd(0.1, steps=20, restarts=3)
    assert spec.label == "PGD-20x3" and spec.step_size == pytest.approx(2.5 * 0.1 / 20)
    assert spec.settings(10) | {"steps": 20} == spec.settings(10) and spec.settings(10)["restarts"] == 3
    assert AttackSpec("autoattack-original", 0.1).label == "AutoAttack"
    assert AttackSpec("autoattack-port", 0.1).label == "AutoAttack (torchattacks port)"
    assert AttackSpec("apgd-ce", 0.1, steps=5).label == "APGD-CE-5"
    with pytest.raises(ValueError, match="Unknown attack"):
        AttackSpec("cw", 0.1)
    with pytest.raises(ValueError, match="n_classes"):
        AttackSpec("apgd", 0.1).components(1)


def test_autoattack_always_gets_classes_and_seed(tiny_pipeline):
    ours = AttackSpec("autoattack", 0.1).build(tiny_pipeline, n_classes=7, seed=3)
    assert [type(a).__name__ for a in ours.attacks] == ["APGD", "APGDT", "FAB", "Square"]
    assert [a.seed for a in ours.attacks] == [3] * 4
    assert ours.attacks[1].n_target_classes == 6 and ours.attacks[2].n_target_classes == 6
    original = AttackSpec("autoattack-port", 0.1).build(tiny_pipeline, n_classes=7, seed=3)
    assert [a.steps for a in original.attacks[:3]] == [100, 100, 100] and original.attacks[3].n_queries == 5000
    apgd = AttackSpec("apgd", 0.1, steps=25).build(tiny_pipeline, n_classes=7, seed=3)
    assert [type(a).__name__ for a in apgd.attacks] == ["APGD", "APGDT"] and apgd.attacks[1].n_target_classes == 6
    apgd_ce = AttackSpec("apgd-ce", 0.1, steps=25).build(tiny_pipeline, n_classes=7, seed=3)
    assert type(apgd_ce).__name__ == "APGD" and apgd_ce.loss == "ce" and apgd_ce.steps == 25


def test_original_autoattack_targets_at_most_nine_classes_and_records_it(tiny_pipeline):
    port = AttackSpec("autoattack-port", 8 / 255).build(tiny_pipeline, n_classes=100, seed=0)
    assert [a.n_target_classes for a in port.attacks[1:3]] == [9, 9]
    reference = AttackSpec("autoattack-original", 8 / 255).build(tiny_pipeline, n_classes=100, seed=0).autoattack
    assert reference.apgd_targeted.n_target_classes == reference.fab.n_target_classes == 9
    settings = AttackSpec("autoattack-original", 8 / 255).settings(100)
    assert settings["target_classes"] == 9 and settings["n_classes"] == 100
    assert "APGD-T (100 steps, 9 targets)" in settings["components"]
    assert AttackSpec("apgd", 8 / 255).settings(100)["target_classes"] == 9
    assert AttackSpec("autoattack", 8 / 255).settings(100)["target_classes"] == 99  # torchattacks' own choice


def tiny_classifier(n_classes: int) -> torch.nn.Module:
    """A seeded linear classifier of 3x8x8 images in [0, 1]: fast enough to run every strong attack."""
    torch.manual_seed(n_classes)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, n_classes)).eval()


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("kind", ["apgd-ce", "apgd", "autoattack", "autoattack-port"])
def test_strong_attacks_run_on_two_and_three_classes(monkeypatch, n_classes, kind):
    monkeypatch.setattr(attacks, "STEPS", {"autoattack": 3, "autoattack-port": 4})  # budgets for a unit test
    monkeypatch.setattr(attacks, "SQUARE_QUERIES", 20)
    model, eps = tiny_classifier(n_classes), 0.003  # small: some examples survive APGD and meet FAB-T and Square
    x = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    y = model(x).argmax(dim=1)
    spec = AttackSpec(kind, eps, steps=3)
    x_adv = attack_batches(model, spec, x, y, n_classes=n_classes, seed=0)
    assert (x_adv - x).abs().max() <= eps + 1e-6 and 0 <= x_adv.min() and x_adv.max() <= 1
    names = [c.name for c in spec.components(n_classes)]
    assert "APGD-T" not in names and ("APGD-DLR" in names) == (n_classes == 3 and kind != "apgd-ce")
    if kind.startswith("autoattack"):
        assert (model(x_adv).argmax(dim=1) == y).any(), "no survivor: FAB-T and Square were not exercised"
        assert spec.settings(n_classes)["target_classes"] == n_classes - 1


def test_autoattack_composition_equals_torchattacks_own_on_ten_classes(monkeypatch):
    monkeypatch.setattr(attacks, "SQUARE_QUERIES", 20)
    model = tiny_classifier(10)
    x = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    y = model(x).argmax(dim=1)
    theirs = torchattacks.AutoAttack(model, norm="Linf", eps=0.02, version="standard", n_classes=10, seed=1)
    theirs._autoattack.attacks[3].n_queries = 20
    torch.manual_seed(0)
    expected = theirs(x, y)
    flipped = model(expected).argmax(dim=1) != y
    assert 2 < flipped.sum() < 8  # APGD-CE leaves some for the later components, and not all fall
    torch.manual_seed(0)
    assert torch.equal(AttackSpec("autoattack", 0.02).build(model, n_classes=10, seed=1)(x, y), expected)


def test_large_eps_pgd_breaks_identity_pipeline_and_gradients_flow(tiny_pipeline, mnist):
    test = mnist[1].take(200)
    x, y = test.tensors()
    clean = (predict(tiny_pipeline, x) == y).float().mean()
    assert clean > 0.5
    x_adv = attack_batches(tiny_pipeline, pgd(0.5, steps=20), x, y, n_classes=10, seed=0)
    assert (predict(tiny_pipeline, x_adv) == y).float().mean() < 0.05
    assert (x_adv - x).abs().max() <= 0.5 + 1e-6
    probe = x[:16].clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(tiny_pipeline(probe), y[:16]).backward()
    assert torch.isfinite(probe.grad).all() and probe.grad.abs().sum() > 0


def test_seeded_attacks_are_reproducible(tiny_pipeline, mnist):
    x, y = mnist[1].take(32).tensors()
    a = attack_batches(tiny_pipeline, pgd(0.1, steps=3), x, y, n_classes=10, seed=5)
    b = attack_batches(tiny_pipeline, pgd(0.1, steps=3), x, y, n_classes=10, seed=5)
    assert torch.equal(a, b)


def test_evaluate_records_carry_provenance_and_append(tiny_pipeline, mnist, tmp_path):
    test = mnist[1].take(64)
    results = tmp_path / "records.jsonl"
    specs = [pgd(0.0, steps=2), pgd(0.05, steps=5), pgd(0.3, steps=10)]
    records = evaluate(tiny_pipeline, test, specs, model_name="identity", results=results,
                       setup={"preprocessor": "identity"})
    for record in records:
        assert PROVENANCE <= record.keys()
        assert record["n_examples"] == 64 and record["implementation"].startswith("torchattacks 3.5")
        assert record["versions"]["torchattacks"] == "3.5.1" and record["commit"]
        assert 0 <= record["robust_accuracy"] <= record["clean_accuracy"] <= 1
    robust = [r["robust_accuracy"] for r in records]
    assert robust[0] == records[0]["clean_accuracy"]  # eps = 0 changes nothing
    assert robust[0] >= robust[1] >= robust[2]
    evaluate(tiny_pipeline, test, specs[:1], model_name="again", results=results)
    lines = results.read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(line) for line in lines)
    assert [r["model"] for r in load_records(results)] == ["identity"] * 3 + ["again"]


def test_records_keep_intervals_outcomes_and_the_worst_case_over_attacks(tiny_pipeline, mnist):
    from cropkit.eval.records import compare_records, outcomes, worst_case
    from cropkit.eval.stats import wilson_interval

    test = mnist[1].take(96)
    specs = [pgd(0.05, steps=3), AttackSpec("fgsm", 0.05), pgd(0.05, steps=1, random_start=False)]
    records = evaluate(tiny_pipeline, test, specs, model_name="identity")
    *per_attack, worst = records
    assert [r["attack"] for r in records] == ["PGD-3", "FGSM", "PGD-1", "worst case"]
    clean = outcomes(per_attack[0], "clean")
    assert clean.mean() == pytest.approx(per_attack[0]["clean_accuracy"])
    assert per_attack[0]["clean_interval"] == pytest.approx(wilson_interval(int(clean.sum()), 96))
    for record in per_attack:
        robust = outcomes(record)
        assert robust.mean() == pytest.approx(record["robust_accuracy"]) and not (robust & ~clean).any()
        assert record["examples"] == test.digest()
    both = outcomes(per_attack[0]) & outcomes(per_attack[1]) & outcomes(per_attack[2])
    assert np.array_equal(outcomes(worst), both) and worst["attack_settings"]["over"] == ["PGD-3", "FGSM", "PGD-1"]
    assert worst["robust_accuracy"] <= min(r["robust_accuracy"] for r in per_attack)
    assert worst == worst_case(per_attack) | {"runtime_s": worst["runtime_s"]}
    # Paired: the stronger attack against the weaker one on the same examples, and refused on other examples.
    comparison = compare_records(per_attack[1], worst, a_name="FGSM", b_name="worst case")
    assert comparison.only_b == 0 and comparison.n == 96
    other = evaluate(tiny_pipeline, mnist[1].take(64, seed=1), specs[:1], model_name="identity")
    with pytest.raises(ValueError, match="different examples"):
        compare_records(per_attack[0], other[0])


def test_attack_outcomes_are_replayed_for_the_same_model_and_examples_only(tiny_pipeline, mnist, monkeypatch):
    import copy

    from cropkit.core.validate import CorruptFileError
    from cropkit.eval import evaluate as evaluation

    test, specs = mnist[1].take(64), [pgd(0.05, steps=3), AttackSpec("fgsm", 0.05)]
    first = evaluate(tiny_pipeline, test, specs, model_name="identity")
    assert not any(r["cached"] for r in first)
    monkeypatch.setattr(evaluation, "attack_batches", lambda *a, **k: pytest.fail("attacked although cached"))
    again = evaluate(tiny_pipeline, test, specs, model_name="identity")
    assert all(r["cached"] for r in again)
    assert [(r["outcomes"], r["runtime_s"]) for r in again] == [(r["outcomes"], r["runtime_s"]) for r in first]
    changed = copy.deepcopy(tiny_pipeline)
    changed.head.linear.bias.data += 0.01  # other weights, other examples, another attack: all attacked afresh
    for args in ((changed, test, specs[:1]), (tiny_pipeline, mnist[1].take(64, seed=1), specs[:1]),
                 (tiny_pipeline, test, [pgd(0.05, steps=4)])):
        with pytest.raises(pytest.fail.Exception, match="attacked although cached"):
            evaluate(*args, model_name="identity")
    for path in evaluation.outcomes_dir().iterdir():
        path.write_text(path.read_text()[:20])
    with pytest.raises(CorruptFileError, match="rm "):
        evaluate(tiny_pipeline, test, specs, model_name="identity")


def test_precision_switch_forces_fp32_and_is_recorded(tiny_pipeline, mnist, monkeypatch):
    from cropkit.core import precision

    seen = []
    real = precision.autocast

    def spy(device):
        seen.append(precision.describe(torch.device("cuda")))  # what CUDA would run in at this moment
        return real(device)

    monkeypatch.setattr(precision, "autocast", spy)
    evaluate(tiny_pipeline, mnist[1].take(16), [pgd(0.05, steps=1)], model_name="m", precision="fp32")
    assert seen and set(seen) == {"fp32"}
    seen.clear()
    evaluate(tiny_pipeline, mnist[1].take(16), [pgd(0.05, steps=1)], model_name="m")
    assert set(seen) == {"bf16 autocast"}
    with pytest.raises(ValueError, match="precision = 'bf8'"):  # the validator's "parameter = value" form
        evaluate(tiny_pipeline, mnist[1].take(16), [], model_name="m", precision="bf8")
