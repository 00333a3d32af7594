"""What evaluation and the heads' training check before they start: a pipeline whose logits index the data's
labels, a usable dataset, attack specs and settings (messages as `cropkit.core.validate` writes them)."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor, nn
from torchattacks.attack import Attack as TorchAttack

from cropkit.core import precision
from cropkit.core.validate import Summary, integer, require, show, writable_file
from cropkit.data import ImageData
from cropkit.eval.attacks import AttackSpec, ExternalAttack


def head_classes(pipeline: nn.Module, example: Tensor) -> int:
    """The number of logits `pipeline` returns for one example (run on the pipeline's device)."""
    device = next(pipeline.parameters(), torch.empty(0)).device
    training = pipeline.training
    try:
        with torch.inference_mode(), precision.autocast(device):
            logits = pipeline.eval()(example.to(device))
    finally:
        pipeline.train(training)
    require(isinstance(logits, Tensor) and logits.ndim == 2, "pipeline", type(pipeline).__name__,
            f"returns {show(logits)} for one image, not logits of shape (1, classes)",
            "give evaluate a module that maps [0, 1] images to logits (cropkit.foundation.Pipeline)")
    return int(logits.shape[1])


def head_matches(pipeline: nn.Module, data: Any, parameter: str, fix: str) -> None:
    """Refuse `pipeline` (named `parameter`) unless its number of logits is `data`'s number of classes: a mismatch
    would otherwise train or score against labels that do not index the logits (or ignore some logits silently)."""
    classes = head_classes(pipeline, data[0][0][None])
    require(classes == data.num_classes, parameter, Summary(f"a head with {classes} classes"),
            f"the dataset {data.name!r} has {data.num_classes} classes, so its labels do not index these logits",
            fix)


def check_evaluation(pipeline: nn.Module, data: Any, attacks: Any, *, model_name: Any, batch_size: Any,
                     seed: Any, results: Any) -> None:
    """Everything `evaluate` needs, checked before the first attack: a module, a non-empty dataset of >= 2 classes
    whose class count equals the pipeline's number of logits, a non-empty list of attack specs, and usable
    settings. A mismatch would otherwise be recorded as a (meaningless) accuracy."""
    require(isinstance(pipeline, nn.Module), "pipeline", pipeline, "not a torch module",
            "pass a cropkit.foundation.Pipeline (or any module from [0, 1] images to logits)")
    require(isinstance(data, ImageData), "data", data, "not an ImageData",
            "load it with cropkit.data.load_dataset(name, split)")
    require(len(data) > 0, "data", data.describe(), "has no examples", "evaluate on a non-empty dataset")
    require(data.num_classes >= 2, "data", data.describe(), "has fewer than 2 classes: accuracy means nothing",
            "evaluate on a dataset of 2 or more classes")
    require(isinstance(attacks, (list, tuple)), "attacks", attacks, "not a list of attacks",
            "pass a list, e.g. [pgd(0.1)]")
    require(len(attacks) > 0, "attacks", attacks, "no attack to run, so nothing would be recorded",
            "pass at least one AttackSpec, e.g. [pgd(0.1)] (pgd(0.0) records clean accuracy alone)")
    for i, spec in enumerate(attacks):
        require(isinstance(spec, (AttackSpec, ExternalAttack, TorchAttack)), f"attacks[{i}]", spec,
                "not an attack", "build it with cropkit.eval.attacks.AttackSpec(...) or pgd(eps), or pass a "
                "torchattacks attack bound to the pipeline, e.g. torchattacks.PGDL2(pipeline, eps=0.5)")
        attack = spec.attack if isinstance(spec, ExternalAttack) else spec
        require(getattr(attack, "model", pipeline) is pipeline, f"attacks[{i}]", type(attack).__name__,
                "is bound to another model than the pipeline evaluated: it would attack that model and score this one",
                "build it on the pipeline you evaluate, e.g. torchattacks.PGDL2(pipeline, eps=0.5)")
        if isinstance(spec, TorchAttack):
            ExternalAttack(spec)  # refuses an attack without a radius, before any work
    require(isinstance(model_name, str) and model_name.strip() != "", "model_name", model_name,
            "every record needs a model name", "pass a non-empty string")
    if batch_size != "auto":
        integer(1)("batch_size", batch_size)
    integer(0)("seed", seed)
    if results is not None:
        require(isinstance(results, (str, os.PathLike)), "results", results, "not a path",
                "pass a file path such as 'results/quick/records.jsonl', or None")
        writable_file("results", results)
    head_matches(pipeline, data, "pipeline", "fit a head on this dataset (e.g. cropkit.eval.protocols.fit_slf) or "
                 "evaluate on the dataset the head was fitted on")
