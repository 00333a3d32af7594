"""The gradient-masking audit: it passes on an honest undefended pipeline and fails on masked ones."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from cropkit.eval import audit
from cropkit.eval.evaluate import evaluate
from cropkit.foundation import Pipeline


class Rounding(nn.Module):
    """A 'defence' that binarises its input: zero gradient everywhere (shattered gradients)."""

    def forward(self, x):
        return torch.round(x)


class Detaching(nn.Module):
    """A 'defence' that cuts the graph: no gradient reaches the input at all."""

    def forward(self, x):
        return x.detach() * 1.0


def failed(report: audit.AuditReport) -> set[str]:
    return {c.name for c in report.checks if not c.passed}


@pytest.fixture(scope="module")
def audit_data(mnist):
    return mnist[1].take(100, seed=1)


def test_audit_passes_on_identity(tiny_pipeline, audit_data):
    report = audit.run(tiny_pipeline, audit_data, 0.1, model="Identity", reference=tiny_pipeline)
    assert report.passed, report.table().to_string()
    assert len(report.checks) == 9  # no transfer check: the reference is the audited pipeline itself
    eps_curve = report.curves["accuracy vs eps"]
    assert eps_curve[0.0] > 0.3 and eps_curve[max(eps_curve)] <= 0.05
    assert report.verdict() == {"level": "full", "passed": True, "failed": []}


def test_audit_fails_on_a_rounding_preprocessor(tiny_pipeline, audit_data):
    masked = Pipeline(Rounding(), tiny_pipeline.foundation, tiny_pipeline.head)
    report = audit.run(masked, audit_data, 0.1, model="rounding", reference=tiny_pipeline)
    assert not report.passed
    assert "input gradients finite and non-zero" in failed(report)
    assert "transfer attack weaker than white-box" in failed(report)  # the undefended model's examples do better


def test_audit_needs_pgd_10_and_more_steps(tiny_pipeline, audit_data):
    with pytest.raises(ValueError, match="include 10"):
        audit.run(tiny_pipeline, audit_data, 0.1, steps=(1, 5, 10))


def test_audit_fails_on_a_detach_inside(tiny_pipeline, audit_data):
    masked = Pipeline(Detaching(), tiny_pipeline.foundation, tiny_pipeline.head)
    report = audit.run(masked, audit_data, 0.1, model="detach")
    assert failed(report) == {"input gradients finite and non-zero", "white-box attacks run"}
    assert report.verdict()["passed"] is False


def test_structural_checks_catch_train_mode_randomness_and_probabilities(tiny_pipeline, audit_data):
    x, y = audit_data.tensors()
    noisy = Pipeline(nn.Dropout(0.5), tiny_pipeline.foundation, copy.deepcopy(tiny_pipeline.head)).train()
    assert failed(audit.AuditReport("m", 0.1, audit.structural_checks(noisy, x[:32], y[:32], 10))) == {
        "no module in train mode", "deterministic forward pass"}
    softmax = nn.Sequential(tiny_pipeline, nn.Softmax(dim=1)).eval()
    assert failed(audit.AuditReport("m", 0.1, audit.structural_checks(softmax, x[:32], y[:32], 10))) == {
        "returns logits"}
    wrong_classes = audit.structural_checks(tiny_pipeline, x[:32], y[:32], 7)
    assert [c.name for c in wrong_classes if not c.passed] == ["returns logits"]


def test_every_evaluation_record_carries_an_audit_verdict(tiny_pipeline, audit_data):
    from cropkit.eval.attacks import pgd

    (record,) = evaluate(tiny_pipeline, audit_data.take(32), [pgd(0.1, 2)], model_name="identity")
    assert record["audit"] == {"level": "structural", "passed": True, "failed": []}
    masked = Pipeline(Rounding(), tiny_pipeline.foundation, tiny_pipeline.head)
    (record,) = evaluate(masked, audit_data.take(32), [pgd(0.1, 2)], model_name="rounding")
    assert record["audit"]["passed"] is False and record["audit"]["failed"] == ["input gradients finite and non-zero"]
