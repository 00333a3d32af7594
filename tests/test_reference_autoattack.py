"""The reference AutoAttack (Croce & Hein's `pyautoattack`) behind `autoattack-original`, against torchattacks' port,
on one small model: both run end to end, the records name the implementation, the reference's checks land in them."""

from __future__ import annotations

import logging

import pytest
import torch

from cropkit.data import ImageData
from cropkit.eval import attacks
from cropkit.eval.attacks import REFERENCE, AttackSpec
from cropkit.eval.checks import REFERENCE_FLAGS, REFERENCE_LOGGER, reference_checks
from cropkit.eval.evaluate import attack_batches, evaluate
from cropkit.eval.records import compare_records
from cropkit.runs import report

EPS = 0.02  # some examples fall, some survive APGD and meet FAB-T and Square


def classifier(n_classes: int, softmax: bool = False) -> torch.nn.Module:
    """A seeded linear classifier of 3x8x8 images in [0, 1] (probabilities out with `softmax`)."""
    torch.manual_seed(n_classes)
    layers = [torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, n_classes)]
    return torch.nn.Sequential(*layers, *([torch.nn.Softmax(dim=1)] if softmax else [])).eval()


def images(model: torch.nn.Module, n: int = 8) -> ImageData:
    """`n` random images labelled as `model` classifies them: every one is attacked."""
    x = (torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 255).round().to(torch.uint8)
    labels = model(x.float() / 255).argmax(dim=1)
    n_classes = model[1].out_features
    return ImageData("random", "test", x, labels, [str(c) for c in range(n_classes)])


def test_original_kind_is_the_reference_and_the_port_is_torchattacks(monkeypatch):
    monkeypatch.setitem(attacks.STEPS, "autoattack-port", 5)  # the port's budget is the kit's to set
    model = classifier(10)
    data = images(model)
    port, reference = AttackSpec("autoattack-port", EPS), AttackSpec("autoattack-original", EPS)
    records = evaluate(model, data, [port, reference], model_name="linear", cache=False)
    by_attack = {r["attack"]: r for r in records}
    version = by_attack["AutoAttack"]["versions"]["pyautoattack"]  # the records' library versions name it too
    assert by_attack["AutoAttack"]["implementation"] == REFERENCE == f"pyautoattack {version}"
    assert by_attack["AutoAttack (torchattacks port)"]["implementation"] == attacks.IMPLEMENTATION
    assert by_attack["AutoAttack"]["attack_settings"]["components"] == (
        "APGD-CE (100 steps), APGD-T (100 steps, 9 targets), FAB-T (100 steps, 9 targets), Square (5000 queries)")
    checks = by_attack["AutoAttack"]["reference_checks"]
    assert [c["name"] for c in checks] == list(REFERENCE_FLAGS) and all(c["passed"] for c in checks)
    assert "reference_checks" not in by_attack["AutoAttack (torchattacks port)"]
    assert 0 < by_attack["AutoAttack"]["robust_accuracy"] < 1  # some fell, some met every component
    comparison = compare_records(by_attack["AutoAttack (torchattacks port)"], by_attack["AutoAttack"])
    assert comparison.n == len(data) and comparison.interval[0] <= comparison.difference <= comparison.interval[1]
    text = report.reference_check(records)  # notebook 08's paired check, from the records
    assert "| linear | 8 | AutoAttack (torchattacks port) |" in text and "reference's checks flagged nothing" in text
    assert "- AutoAttack (torchattacks port): within half the interval's width of the reference on" in text
    assert "worst case" not in text and text in report.summary("08_robustness_audit", records)


def test_reference_checks_are_cached_with_the_outcomes_and_flag_probabilities(monkeypatch):
    from cropkit.eval import evaluate as evaluation

    model = classifier(10, softmax=True)
    data = images(model)
    spec = [AttackSpec("autoattack-original", EPS)]
    first = evaluate(model, data, spec, model_name="softmax")[0]
    flagged = {c["name"]: c for c in first["reference_checks"] if not c["passed"]}
    assert list(flagged) == ["reference: returns logits, not probabilities"]
    assert "probability distribution" in flagged["reference: returns logits, not probabilities"]["evidence"]
    monkeypatch.setattr(evaluation, "attack_batches", lambda *a, **k: pytest.fail("attacked although cached"))
    again = evaluate(model, data, spec, model_name="softmax")[0]
    assert again["cached"] and again["reference_checks"] == first["reference_checks"]


@pytest.mark.parametrize("n_classes", [2, 3])
def test_reference_runs_the_kits_components_on_two_and_three_classes(n_classes):
    model = classifier(n_classes)
    x, y = images(model).tensors()
    spec = AttackSpec("autoattack-original", EPS)
    reference = spec.build(model, n_classes=n_classes, seed=0).autoattack
    assert reference.attacks_to_run == ["apgd-ce", *(["apgd-dlr"] if n_classes == 3 else []), "fab-t", "square"]
    assert reference.fab.n_target_classes == n_classes - 1
    x_adv = attack_batches(model, spec, x, y, n_classes=n_classes, seed=0)
    assert (x_adv - x).abs().max() <= EPS + 1e-6 and 0 <= x_adv.min() and x_adv.max() <= 1


def test_reference_refuses_a_budget_it_does_not_run(monkeypatch):
    monkeypatch.setitem(attacks.STEPS, "autoattack-original", 4)
    with pytest.raises(ValueError, match="reference's budget"):
        AttackSpec("autoattack-original", EPS).build(classifier(10), n_classes=10, seed=0)


def test_reference_checks_name_each_warning():
    logger = logging.getLogger(REFERENCE_LOGGER)
    with reference_checks() as checks:
        logger.warning("there are 3 points with zero gradient! This might lead to unreliable evaluation")
        logger.warning("there are 3 points with zero gradient! This might lead to unreliable evaluation")
        logger.info("not a check")
    assert [c.name for c in checks if not c.passed] == ["reference: no zero input gradients"]
    assert next(c for c in checks if not c.passed).evidence.count("zero gradient") == 1  # batches repeat it
    assert all(c.evidence == "not flagged" for c in checks if c.passed)


def test_audit_with_the_reference_as_strong_attack_reports_its_checks_beside_the_kits():
    from cropkit.eval import audit

    model = classifier(10)
    report = audit.run(model, images(model), EPS, model="linear", eps_factors=(1, 40), steps=(10, 20), restarts=1,
                       strong=AttackSpec("autoattack-original", EPS))
    names = [c.name for c in report.checks]
    assert "strong attack not above PGD" in names and set(REFERENCE_FLAGS) <= set(names)
    assert report.records[-1]["implementation"] == REFERENCE
