"""Notebook 07's cost arithmetic: what a budget of a run cost, what one training example costs in forward passes of
the network that is trained, and what those counts become at the paper's scale (ViT-MAE-Base, -Large, -Huge).

The per-example counts are measured with the FLOP counter on one batch and divided by one forward pass of the
trained network (the auto-encoder for CRoPD, the foundation model for fine-tuning): ratios that depend on the method,
not on the model's size, which is what lets `at_scale` carry them to models the kit never runs on a CPU, with the
closed-form forward FLOPs of each hub checkpoint's architecture (`budget.facts.HUB_VIT_MAE`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from cropkit.core.cost import total, vit_forward_flops
from cropkit.cropd import PreprocessorConfig, preprocessor_loss
from cropkit.finetune.robust import FinetuneConfig, finetune_loss
from cropkit.runs.budget.facts import HUB_VIT_MAE
from cropkit.runs.budget.passes import count_flops

SCALE_MODELS = ("facebook/vit-mae-base", "facebook/vit-mae-large", "facebook/vit-mae-huge")
SCALE_IMAGE_SIZE = 224


def budget_fields(worst: Mapping[str, Any], history: Sequence[Mapping[str, Any]], *, method: str, epochs: int,
                  trains: str, target: float) -> dict[str, Any]:
    """A "cost" record's fields: what the first `epochs` epochs of a run cost (`history`) and the worst-case
    evaluation of its weights after them."""
    spent = total(history[:epochs])
    return {"model": worst["model"], "method": method, "budget_epochs": epochs, "trains": trains,
            **{k: spent[k] for k in ("flops", "seconds", "examples", "trainable_parameters", "peak_memory_mb")},
            **{k: worst[k] for k in ("robust_accuracy", "robust_interval", "clean_accuracy", "clean_interval",
                                     "n_examples", "eps")},
            "examples_digest": worst["examples"], "target": target}


def flops_per_example(step: Callable[[], Any], examples: int) -> float:
    """FLOPs of one call of `step` on a batch of `examples`, per example (`budget.passes.count_flops`)."""
    return count_flops(step) / examples


def _training_step(loss: Callable[[], tuple[Tensor, Any]]) -> Callable[[], None]:
    return lambda: loss()[0].backward()


def cropd_passes(model: nn.Module, config: PreprocessorConfig, x: Tensor, y: Tensor) -> float:
    """One CRoPD training step per example, in forward passes of its auto-encoder."""
    model.requires_grad_(True)
    try:
        forward = flops_per_example(lambda: model(x), len(x))
        return flops_per_example(_training_step(lambda: preprocessor_loss(model, config, x, y)), len(x)) / forward
    finally:
        model.requires_grad_(False)


def finetune_passes(start: nn.Module, config: FinetuneConfig, x: Tensor, y: Tensor) -> float:
    """One robust fine-tuning step of `config` per example, in forward passes of the frozen `start` pipeline."""
    forward = flops_per_example(lambda: start(x), len(x))
    model = copy.deepcopy(start).requires_grad_(True)
    return flops_per_example(_training_step(lambda: finetune_loss(model, start, config, x, y)), len(x)) / forward


def forward_flops(model: str) -> float:
    """One 224x224 image through a hub ViT-MAE encoder (its architecture from `HUB_VIT_MAE`), in FLOPs."""
    config = HUB_VIT_MAE[model]
    return vit_forward_flops(image_size=SCALE_IMAGE_SIZE, patch_size=config["patch_size"],
                             hidden_size=config["hidden_size"], num_layers=config["num_hidden_layers"],
                             intermediate_size=config["intermediate_size"])


def at_scale(finetune: Mapping[str, float], cropd: float, *, ae_fraction: float, ae_epochs: int, ft_epochs: int,
             models: Sequence[str] = SCALE_MODELS, fixed_to: str = "facebook/vit-mae-large") -> list[dict[str, Any]]:
    """Training FLOPs per example at scale, fine-tuning against CRoPD, for each model and method: `finetune` maps a
    method to its passes per step, `cropd` is CRoPD's. The pre-processor is `ae_fraction` of a foundation model's
    forward FLOPs, either fixed (that of `fixed_to`) or scaled with the model; both sides add the linear probe's one
    forward pass of the frozen model."""
    rows = []
    for model in models:
        forward = forward_flops(model)
        fixed = ae_epochs * cropd * ae_fraction * forward_flops(fixed_to) + forward
        scaled = ae_epochs * cropd * ae_fraction * forward + forward
        for method, passes in finetune.items():
            spent = ft_epochs * passes * forward + forward
            rows.append({"model": model, "forward_gflops": forward / 1e9, "method": method,
                         "finetune_tflops_per_example": spent / 1e12, "ratio_preprocessor_fixed": spent / fixed,
                         "ratio_preprocessor_scaled": spent / scaled})
    return rows
