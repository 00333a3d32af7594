"""The embedded foundation models ship with the package like downloaded checkpoints: each loads as it is only when
its card says it was made by the current recipe from exactly this config and data; its card carries the linear
probe with an interval and the command that re-creates it."""

from __future__ import annotations

import shutil
from dataclasses import asdict, replace

import pytest

from cropkit.core.checkpoint import read_json, write_json
from cropkit.core.validate import InputError
from cropkit.foundation import pretrain
from cropkit.foundation.pretrain import PRESETS, RECIPE_VERSION, embedded_config, load_foundation, shipped_model
from cropkit.runs import shipping

SHIPPED = sorted(pretrain.SHIPPED.glob("*/card.json"))


def test_at_least_the_quick_profiles_model_ships_with_a_complete_card():
    assert pretrain.SHIPPED / "mnist5k-seed0" / "card.json" in SHIPPED
    for path in SHIPPED:
        card = read_json(path)
        config = embedded_config("embedded:" + card["config"]["dataset"] + f"@{card['config']['seed']}")
        assert card["recipe"] == RECIPE_VERSION and card["config"] == asdict(config), path
        low, high = card["probe"]["interval"]
        assert low < card["probe"]["accuracy"] < high and card["probe"]["n"] >= 100, path
        assert card["command"] == shipping.command(config)
        assert all((path.parent / name).is_file() for name in (*shipping.SHIPPED_FILES, "README.md"))


def test_embedded_loads_the_shipped_checkpoint_without_pre_training(monkeypatch):
    monkeypatch.setattr(pretrain, "pretrain_mae", lambda *a, **k: pytest.fail("pre-trained instead of loading"))
    model = load_foundation("embedded")
    assert "shipped" in model.name and "seed 0" in model.name


def test_a_shipped_checkpoint_of_another_recipe_config_or_data_is_not_used(tmp_path, monkeypatch):
    config = PRESETS["mnist5k"]
    shutil.copytree(pretrain.shipped_dir(config), tmp_path / "mnist5k-seed0")
    monkeypatch.setattr(pretrain, "SHIPPED", tmp_path)
    assert shipped_model(config) == tmp_path / "mnist5k-seed0"
    card_path = tmp_path / "mnist5k-seed0" / "card.json"
    card = read_json(card_path)
    for field, wrong in (("recipe", RECIPE_VERSION + 1), ("config", asdict(replace(config, epochs=41))),
                         ("data", "0" * 16)):
        write_json(card_path, card | {field: wrong})
        assert shipped_model(config) is None, field
    write_json(card_path, card)
    assert shipped_model(replace(config, seed=1)) is None  # another seed is another run, never this one's file
    called = []
    monkeypatch.setattr(pretrain, "pretrain_mae", lambda c, **k: called.append(c) or pretrain.shipped_dir(config))
    load_foundation("embedded", from_scratch=True)
    assert called == [config]  # the documented from-scratch option pre-trains whatever ships


@pytest.mark.parametrize(("spec", "problem"), [("embedded@x", "not a whole number"),
                                                ("embedded:svhn", "No embedded foundation model"),
                                                ("embeddedd", "not an embedded model's name")])
def test_a_malformed_embedded_name_is_refused_before_any_work(spec, problem):
    with pytest.raises(InputError, match=problem):
        load_foundation(spec)


def test_embedded_names_select_dataset_and_seed():
    assert embedded_config("embedded") == PRESETS["mnist5k"]
    assert embedded_config("embedded@2") == replace(PRESETS["mnist5k"], seed=2)
    assert embedded_config("embedded:cifar10-subset@1") == replace(PRESETS["cifar10-subset"], seed=1)
