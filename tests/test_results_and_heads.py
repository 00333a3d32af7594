"""Results files, checkpoints on disk, and linear heads on cached features."""

from __future__ import annotations

import json
import re
import threading

import torch

from cropkit.core.checkpoint import atomic_directory, existing_directory, load_weights, save_weights
from cropkit.eval.records import append_records, git_commit, load_records, provenance
from cropkit.foundation.heads import WEIGHT_DECAYS, LinearHead, accuracy, extract_features, train_linear_head


def test_concurrent_appends_lose_no_record(tmp_path):
    path = tmp_path / "r.jsonl"
    threads = [threading.Thread(target=append_records, args=(path, [{"i": i, "j": j} for j in range(5)]))
               for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records = load_records(path)
    assert len(records) == 40 and {(r["i"], r["j"]) for r in records} == {(i, j) for i in range(8) for j in range(5)}
    assert not list(tmp_path.glob("*.tmp"))


def test_provenance_names_device_versions_and_commit():
    info = provenance("cpu")
    assert info["device"].startswith("cpu") and "torch" in info["versions"] and "transformers" in info["versions"]
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?|unknown", git_commit())


def test_atomic_directory_keeps_the_old_copy_on_failure(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_directory(target) as tmp:
        (tmp / "a").write_text("first")
    try:
        with atomic_directory(target) as tmp:
            (tmp / "a").write_text("second")
            raise RuntimeError("interrupted")
    except RuntimeError:
        pass
    assert (existing_directory(target) / "a").read_text() == "first"
    assert len(list(tmp_path.iterdir())) == 1


def test_head_weights_round_trip_as_safetensors(tmp_path):
    head = LinearHead(4, 3)
    head.shift.fill_(0.5)
    save_weights(head, tmp_path / "head", {"in_features": 4, "num_classes": 3})
    loaded = LinearHead(4, 3)
    config = load_weights(loaded, tmp_path / "head")
    assert config == {"in_features": 4, "num_classes": 3}
    assert all(torch.equal(a, b) for a, b in zip(head.state_dict().values(), loaded.state_dict().values()))
    assert json.loads((tmp_path / "head" / "config.json").read_text())["num_classes"] == 3


def test_linear_head_separates_separable_data():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 20, generator=generator) * 3
    labels = torch.arange(300) % 3
    features = (centres[labels] + torch.randn(300, 20, generator=generator)) * 100 + 1000  # badly scaled
    features[:, 0] = 7.0  # a constant feature must not break the standardisation
    head = train_linear_head(features, labels, 3)
    assert accuracy(head, features, labels) > 0.95
    assert not any(p.requires_grad for p in head.parameters())
    assert head.weight_decay in WEIGHT_DECAYS and set(head.validation) == set(WEIGHT_DECAYS)


def test_weight_decay_is_chosen_on_held_out_training_data():
    generator = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 2, (200,), generator=generator)
    features = torch.randn(200, 300, generator=generator)
    features[:, 0] += labels * 1.5  # one signal among more noise features than samples: shrinkage generalises
    head = train_linear_head(features, labels, 2, weight_decay=(1e-6, 1.0))
    assert head.validation[1.0] > head.validation[1e-6] and head.weight_decay == 1.0
    fixed = train_linear_head(features, labels, 2, weight_decay=1e-3)
    assert fixed.weight_decay == 1e-3 and fixed.validation == {}


def test_extract_features_matches_the_model_and_batches():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
    x = torch.randn(10, 3, 2, 2)
    assert torch.allclose(extract_features(model, x, batch_size=3), model(x))


def test_accuracy_table_pivots_attacks_shows_intervals_and_labels_smaller_samples():
    from cropkit.eval.records import accuracy_table

    base = {"model": "A", "n_examples": 300, "clean_accuracy": 0.9, "clean_interval": [0.86, 0.93]}
    records = [base | {"attack": "PGD-10", "robust_accuracy": 0.5, "robust_interval": [0.44, 0.56]},
               base | {"attack": "PGD-20", "robust_accuracy": 0.4, "robust_interval": [0.35, 0.46]},
               base | {"attack": "AutoAttack", "robust_accuracy": 0.3, "robust_interval": [0.22, 0.4],
                       "n_examples": 100, "clean_accuracy": 0.95, "clean_interval": [0.89, 0.98]},
               {"model": "B", "n_examples": 300, "clean_accuracy": 0.8, "clean_interval": [0.75, 0.84],
                "attack": "PGD-10", "robust_accuracy": 0.1, "robust_interval": [0.07, 0.14]},
               {"kind": "linear-probe", "model": "ignored"}]
    table = accuracy_table(records)
    assert list(table.columns) == ["clean", "PGD-10", "PGD-20", "AutoAttack (n=100)"]
    assert table.loc["A", "clean"] == "90.0 [86.0, 93.0]" and table.loc["A", "AutoAttack (n=100)"] == "30.0 [22.0, 40.0]"
    assert table.loc["B", "PGD-10"] == "10.0 [7.0, 14.0]" and table.loc["B"].isna().sum() == 2


def _toy_evaluation(data, model, clean, robust):
    """An evaluation record of `model` on `data` with the given per-example outcomes (robust implies clean)."""
    import numpy as np

    from cropkit.eval.records import accuracy_fields, encode_outcomes

    clean, robust = np.asarray(clean, bool), np.asarray(robust, bool)
    return {"model": model, "attack": "PGD-10", "eps": 0.1, "n_examples": len(clean), "examples": data.digest(),
            **accuracy_fields(clean, "clean"), **accuracy_fields(robust, "robust"),
            "outcomes": {"clean": encode_outcomes(clean), "robust": encode_outcomes(robust)}}


def _toy_data():
    from cropkit.data import ImageData

    images = torch.arange(8, dtype=torch.uint8).view(8, 1, 1, 1).expand(8, 1, 4, 4).contiguous()
    return ImageData("toy", "test", images, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]), ["a", "b", "c"])


def test_an_evaluation_cut_down_to_classes_and_pooled_again_compares_paired():
    import pytest

    from cropkit.eval.records import class_records, compare_records, pooled, restrict_to_classes

    data = _toy_data()
    a = _toy_evaluation(data, "A", [1, 1, 1, 1, 1, 1, 1, 0], [1, 0, 1, 1, 0, 0, 1, 0])
    b = _toy_evaluation(data, "B", [1, 1, 1, 1, 1, 1, 1, 1], [0, 1, 0, 0, 1, 0, 0, 1])
    per_class = {r["classes"][0]: r for r in class_records(a, data)}
    assert {c: (r["n_examples"], r["robust_accuracy"]) for c, r in per_class.items()} == {
        "a": (3, 1.0), "b": (3, 0.0), "c": (2, 0.5)}
    assert per_class["b"]["clean_accuracy"] == pytest.approx(2 / 3)
    ab = restrict_to_classes(a, data, ["a", "b"])
    assert ab["n_examples"] == 6 and ab["robust_accuracy"] == pytest.approx(0.5)
    assert ab["examples"] == restrict_to_classes(b, data, ["a", "b"])["examples"] != a["examples"]
    comparison = compare_records(restrict_to_classes(a, data, ["a"]), restrict_to_classes(b, data, ["a"]))
    assert (comparison.only_a, comparison.only_b) == (3, 0)
    again = pooled([per_class["a"], per_class["c"]])
    assert again["n_examples"] == 5 and again["robust_accuracy"] == pytest.approx(4 / 5)
    assert again["classes"] == ["a", "c"]
    other = pooled([r for r in class_records(b, data) if r["classes"][0] in ("a", "c")])
    assert compare_records(again, other).only_a == 4  # the same examples, in the same order
    with pytest.raises(ValueError, match="examples"):
        restrict_to_classes(a, data.take(4, seed=0), ["a"])
    with pytest.raises(ValueError, match="classes"):
        restrict_to_classes(a, data, ["z"])
    with pytest.raises(ValueError, match="disjoint"):
        pooled([per_class["a"], per_class["a"]])
    with pytest.raises(ValueError, match="one model"):
        pooled([per_class["a"], class_records(b, data)[1]])
