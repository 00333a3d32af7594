"""Notebook 07's cost arithmetic (`cropkit.runs.costs`) and notebook 06's reading of the recipe search."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cropkit.core.validate import InputError
from cropkit.data import load_dataset, require_compatible
from cropkit.runs import costs, recipe_search


def test_at_scale_fixes_the_preprocessor_at_the_large_model_and_scales_it_otherwise():
    rows = costs.at_scale({"aft": 12.0}, 3.0, ae_fraction=0.06, ae_epochs=30, ft_epochs=10)
    by_model = {r["model"]: r for r in rows}
    assert list(by_model) == list(costs.SCALE_MODELS)
    large = by_model["facebook/vit-mae-large"]
    assert large["ratio_preprocessor_fixed"] == pytest.approx(large["ratio_preprocessor_scaled"])
    # fine-tuning's cost grows with the model; a fixed pre-processor's does not, so the ratio grows with size
    fixed = [by_model[m]["ratio_preprocessor_fixed"] for m in costs.SCALE_MODELS]
    assert fixed == sorted(fixed) and fixed[0] < fixed[-1]
    forward = costs.forward_flops("facebook/vit-mae-large")
    assert large["finetune_tflops_per_example"] == pytest.approx((10 * 12.0 * forward + forward) / 1e12)


def test_datasets_one_model_cannot_serve_are_refused_naming_the_parameter():
    mnist, digits = load_dataset("mnist5k", "test"), load_dataset("digits", "test")
    require_compatible("datasets", {"mnist5k": mnist, "digits": digits}, same_classes=True, fix="pick one size")
    cropped = replace(digits, images=digits.images[:, :, :14, :14])
    with pytest.raises(InputError, match=r"^datasets = \['mnist5k', 'cropped'\]: images of different shapes"):
        require_compatible("datasets", {"mnist5k": mnist, "cropped": cropped}, fix="pick one size")
    require_compatible("transfer", {"mnist5k": mnist, "cropped": cropped}, same_shape=False, fix="-")
    two = replace(digits, classes=[f"digit {c}" for c in digits.classes])
    with pytest.raises(InputError, match=r"^transfer = \['mnist5k', 'two'\]: different classes"):
        require_compatible("transfer", {"mnist5k": mnist, "two": two}, same_shape=False, same_classes=True, fix="-")


def test_the_recipe_search_chooses_one_current_recipe_per_method():
    search = recipe_search.load_search()
    rows = recipe_search.search_rows(search)
    chosen = [r for r in rows if r["chosen"]]
    assert sorted(r["method"] for r in chosen) == sorted(search["chosen"])
    assert not any(r["superseded"] for r in chosen)
