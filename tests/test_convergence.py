"""One convergence rule for every notebook: a model that fits its training images worse than the uniform predictor,
or whose training changed none of its start's predictions, is flagged and left out of the comparisons."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from cropkit.data import load_dataset
from cropkit.eval.convergence import not_converged, training_fit
from cropkit.eval.records import accuracy_fields, encode_outcomes
from cropkit.runs.verdicts import collecting, verdict


def linear(scale: float, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
    with torch.no_grad():
        model[1].weight.mul_(scale)
    return model


def test_a_model_worse_than_the_uniform_predictor_did_not_converge():
    """Random weights blown up a hundredfold give confident, mostly wrong predictions: a cross-entropy of tens of
    nats, far above log 10, as the diverged AFF runs of notebook 05 had. Zero weights are the uniform predictor."""
    data = load_dataset("digits", "train").take(64, seed=0)
    diverged = training_fit(linear(100.0), data)
    assert not diverged["converged"] and diverged["clean_ce"] > math.log(10)
    assert "above the uniform predictor's log 10" in diverged["why"]
    fit = training_fit(uniform(), data)
    assert fit["converged"] and fit["clean_ce"] == pytest.approx(math.log(10)) and fit["why"] == ""


def uniform() -> nn.Module:
    model = linear(0.0)
    nn.init.zeros_(model[1].bias)
    return model


def templates(data) -> nn.Module:
    """Each class's mean image as its weight row, centred: a classifier that fits the digits far better than chance."""
    images, labels = data.tensors()
    flat = images.flatten(1)
    model = uniform()
    with torch.no_grad():
        means = torch.stack([flat[labels == k].mean(0) for k in range(10)])
        model[1].weight.copy_(0.05 * (means - means.mean(0)))
    return model


def test_a_training_that_changed_no_prediction_of_its_start_did_not_converge():
    data = load_dataset("digits", "train").take(64, seed=0)
    same = training_fit(uniform(), data, start=uniform())  # the cross-entropy rule passes: only the start rule fails
    assert not same["converged"] and same["predictions_changed"] == 0 and "changed none" in same["why"]
    moved = training_fit(templates(data), data, start=uniform())
    assert moved["converged"] and moved["predictions_changed"] > 0, moved


def record(model: str, seed: int, correct: np.ndarray, converged: bool = True) -> dict:
    return {"model": model, "attack": "worst case", "examples": "e", "n_examples": len(correct),
            "setup": {"foundation": "fm0", "training_seed": seed},
            "training": {"converged": converged, "why": "" if converged else "it diverged"},
            "outcomes": {"clean": encode_outcomes(correct), "robust": encode_outcomes(correct)},
            **accuracy_fields(correct, "clean"), **accuracy_fields(correct, "robust")}


def test_a_model_that_did_not_converge_in_one_run_is_not_compared():
    """A beats B by 40 points in every run; B's training diverged in seed 1, so the verdict is refused and no test
    is counted for the multiplicity correction."""
    hard = np.random.default_rng(0).random(200)
    a = [record("A", s, hard < 0.8) for s in range(3)]
    b = [record("B", s, hard < 0.4, converged=s != 1) for s in range(3)]
    assert not_converged(b) == [b[1]]
    with collecting() as tests:
        text = verdict(a, b)
    assert "**not compared**" in text and "B (seed 1): it diverged" in text and not tests
    fine = [record("B", s, hard < 0.4) for s in range(3)]
    assert "beats" in verdict(a, fine)
