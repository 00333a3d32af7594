"""`cropkit.benchmark`: one call writes a RobustBench-style card that agrees with the result and the records,
and refuses bad arguments before any work."""

from __future__ import annotations

import json

import numpy as np
import pytest
from torch import nn

import cropkit
from cropkit.core.validate import InputError
from cropkit.data import load_dataset
from cropkit.eval import benchmarking as module
from cropkit.eval.benchmarking import benchmark
from cropkit.eval.records import load_records, outcomes

ROBUSTBENCH_FIELDS = {"link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue",
                      "architecture", "eps", "clean_acc", "reported", "autoattack_acc", "footnote", "unreliable"}
KIT_FIELDS = {"version", "model", "license", "threat_model", "eps", "split", "n_examples", "examples", "seeds",
              "weights", "parameters", "clean", "robust_acc", "worst_case_acc", "attacks", "evaluation", "audit",
              "records", "device", "versions", "commit", "timestamp", "run_id"}


def test_benchmark_writes_a_card_that_agrees_with_the_result_and_the_records(tiny_pipeline, tmp_path):
    result = cropkit.benchmark(tiny_pipeline, "mnist5k", eps=0.01, model_name="Tiny2025Pipeline", n=16, steps=2, pgd_steps=2,
                       results_dir=tmp_path, license="MIT", submission={"venue": "nowhere", "reported": "50.0"})

    assert result.card == tmp_path / "mnist5k" / "Linf" / "Tiny2025Pipeline.json"
    assert result.records == result.card.with_suffix(".jsonl")
    assert not [p for p in result.card.parent.iterdir() if p.name.endswith(".tmp")]  # written through a rename
    card = json.loads(result.card.read_text())
    kit = card["cropkit"]
    assert ROBUSTBENCH_FIELDS | {"cropkit"} == set(card) and KIT_FIELDS == set(kit)

    assert card["dataset"] == "mnist5k" and card["eps"] == "0.01" and card["venue"] == "nowhere"
    assert card["additional_data"] is False and card["number_forward_passes"] == 1 and card["reported"] == "50.0"
    assert card["architecture"] == f"FoundationModel ({tiny_pipeline.foundation.name}) + LinearHead"  # no Identity
    assert card["clean_acc"] == str(round(100 * result.clean_accuracy, 2))
    assert card["autoattack_acc"] is None and "APGD-CE+T-2" in card["footnote"]  # not AutoAttack's strength
    assert card["unreliable"] is (not result.audit["passed"]) and kit["audit"] == result.audit
    assert result.audit["level"] == "structural"

    test = load_dataset("mnist5k", "test").take(16, 0)
    assert (kit["n_examples"], kit["examples"], kit["split"]) == (16, test.digest(), "test") == (
        result.n_examples, test.digest(), "test")
    assert kit["seeds"] == {"examples": 0, "attacks": 0} and kit["license"] == "MIT"
    assert kit["threat_model"] == "Linf" and kit["eps"] == result.eps == 0.01
    assert kit["clean"] == {"accuracy": result.clean_accuracy, "interval": list(result.clean_interval)}
    assert kit["robust_acc"] == str(round(100 * result.robust_accuracy, 2))
    assert kit["worst_case_acc"] == str(round(100 * result.worst_case_accuracy, 2))
    assert kit["evaluation"]["method"] == result.attack == "APGD-CE+T-2"
    assert kit["evaluation"]["implementation"].startswith("torchattacks ")
    assert kit["evaluation"]["settings"]["steps"] == 2

    records = [r for r in load_records(result.records) if r["timestamp"] == kit["records"]["timestamp"]]
    assert kit["records"]["file"] == str(result.records)
    assert [r["attack"] for r in records] == [a["attack"] for a in kit["attacks"]] == ["PGD-2", "APGD-CE+T-2",
                                                                                      "worst case"]
    _, strong, worst = records
    assert strong["examples"] == kit["examples"] and strong["audit"] == result.audit
    assert (strong["robust_accuracy"], tuple(strong["robust_interval"])) == (result.robust_accuracy,
                                                                             result.robust_interval)
    assert (worst["robust_accuracy"], tuple(worst["robust_interval"])) == (result.worst_case_accuracy,
                                                                           result.worst_case_interval)
    assert np.mean(outcomes(strong, "clean")) == result.clean_accuracy
    assert np.mean(outcomes(worst)) == result.worst_case_accuracy <= result.robust_accuracy <= result.clean_accuracy
    assert "Tiny2025Pipeline" in str(result) and "worst case" in str(result)


def test_card_fields_are_written_as_robustbench_writes_them():
    assert module._eps_text(8 / 255) == "8/255" and module._eps_text(0.3) == "0.3"
    assert module._percent(0.5342) == "53.42" and module._percent(1.0) == "100.0"
    assert module.architecture(nn.Linear(2, 2)) == "Linear"
    assert module._slug("cifar10-subset[cat,dog]") == "cifar10-subset-cat-dog"


@pytest.mark.parametrize(("change", "parameter", "says"), [
    ({"threat_model": "L2"}, "threat_model", "L2 is not supported yet"),
    ({"n": 0}, "n", ">= 1"),
    ({"model": "resnet18"}, "model", "not a torch module"),
    ({"eps": 8}, "eps", "8/255"),
    ({"eps": 0.0}, "eps", "attacks nothing"),
    ({"attack": "cw"}, "attack", "Unknown attack"),
    ({"model_name": "a/b"}, "model_name", "card's file"),
    ({"dataset": 3}, "dataset", "not a dataset name"),
    ({"submission": {"clean_acc": "99"}}, "submission", "not a field the caller fills"),
    ({"submission": {"additional_data": "no"}}, "submission['additional_data']", "not a bool"),
], ids=["L2", "n-0", "not-a-module", "eps-in-pixels", "eps-0", "unknown-attack", "model-name-a-path", "dataset-int",
        "submission-unknown-field", "submission-bad-type"])
def test_bad_arguments_are_refused_before_any_work(monkeypatch, tmp_path, change, parameter, says):
    def no_work(*args, **kwargs):
        raise AssertionError("work started before the arguments were checked")

    monkeypatch.setattr(module, "load_dataset", no_work)
    monkeypatch.setattr(module, "evaluate", no_work)
    arguments = {"model": nn.Linear(784, 10), "dataset": "mnist5k", "eps": 0.1, "model_name": "m", "n": 16,
                 "results_dir": tmp_path} | change
    with pytest.raises(InputError, match=says) as refused:
        benchmark(**arguments)
    assert refused.value.parameter == parameter
    assert not any(tmp_path.iterdir())
