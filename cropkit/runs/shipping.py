"""Shipping the embedded foundation models like downloaded checkpoints: each pre-training run's weights copied
into the package with a card (recipe, config, training data's digest, linear probe with its interval, the
command that re-creates it), and the check that a model pre-trained from scratch lands inside the card's
interval (`cropkit pretrain-fm --ship` / `--check`)."""

from __future__ import annotations

import platform
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cropkit import __version__
from cropkit.core.checkpoint import atomic_directory, read_json, write_json
from cropkit.data import ImageData, load_dataset
from cropkit.eval.stats import format_accuracy, wilson_interval
from cropkit.foundation import FoundationModel
from cropkit.foundation.heads import LinearHead, extract_features, train_linear_head
from cropkit.foundation.pretrain import (
    CARD,
    RECIPE_VERSION,
    MAEConfig,
    load_foundation,
    pretrain_mae,
    shipped_dir,
    training_data,
)

SHIPPED_FILES = ("config.json", "model.safetensors", "preprocessor_config.json", "cropkit_pretraining.json")


def probe_outcomes(foundation: nn.Module, train: ImageData, test: ImageData) -> tuple[Tensor, LinearHead]:
    """The kit's linear probe on `foundation`'s frozen features (weight decay chosen on held-out training data) and,
    per test example, whether it is right: what a card's probe and the budget investigation's paired comparisons
    are made of."""
    (x_train, y_train), (x_test, y_test) = train.tensors(), test.tensors()
    head = train_linear_head(extract_features(foundation, x_train), y_train, test.num_classes)
    return head(extract_features(foundation, x_test)).argmax(1) == y_test, head


def linear_probe(foundation: nn.Module, dataset: str) -> dict[str, Any]:
    """The linear probe of `foundation` on `dataset`, scored on its whole test split, as a card holds it."""
    test = load_dataset(dataset, "test")
    outcomes, head = probe_outcomes(foundation, load_dataset(dataset, "train"), test)
    correct = int(outcomes.sum())
    return {"accuracy": correct / len(test), "interval": list(wilson_interval(correct, len(test))),
            "correct": correct, "n": len(test), "test_data": test.digest(), "weight_decay": head.weight_decay}


def command(config: MAEConfig) -> str:
    """The one command that re-creates (and checks) a shipped model."""
    return f"cropkit pretrain-fm --dataset {config.dataset} --seed {config.seed} --check"


def model_card(card: dict[str, Any]) -> str:
    """The card as people read it (Hugging Face model-card front matter, then the facts of `card.json`)."""
    config, probe, run = card["config"], card["probe"], card["pretraining"]
    return "\n".join([
        "---", "license: mit", "library_name: transformers", "pipeline_tag: image-feature-extraction",
        f"tags: [vit-mae, cropkit, {config['dataset']}]", "---", "",
        f"# Embedded ViT-MAE: {config['dataset']}, pre-training seed {config['seed']}", "",
        "A small ViT-MAE the kit pre-trains with the MAE objective, shipped with cropkit so that a fresh machine",
        "loads it like a downloaded checkpoint (`load_foundation(\"embedded"
        + ("" if config["dataset"] == "mnist5k" else f":{config['dataset']}")
        + ("" if config["seed"] == 0 else f"@{config['seed']}") + "\")`).", "",
        "| fact | value |", "| --- | --- |",
        f"| recipe version | {card['recipe']} |",
        f"| architecture | {config['num_layers']} layers, width {config['hidden_size']}, patch {config['patch_size']}, "
        f"image {config['image_size']} |",
        f"| pre-training | {run['epochs']} epochs, final MAE loss {run['final_loss']:.4f}, {run['seconds']:.0f} s on "
        f"{card['environment']['machine']} |",
        f"| training data | {card['data_name']}, digest `{card['data']}` |",
        f"| linear probe (test split, n = {probe['n']}) | {format_accuracy(probe['accuracy'], probe['interval'])} |",
        f"| re-create and check | `{card['command']}` |", "",
        "The full config is in `card.json`; the interval is Wilson's 95% interval over the test examples, so a",
        "model pre-trained from scratch on another machine (another floating-point path) is expected inside it.", ""])


def ship(config: MAEConfig) -> Path:
    """Pre-train `config` (or take it from the cache), probe it and write it with its card into the package."""
    source = pretrain_mae(config)
    foundation = FoundationModel.from_pretrained(source)
    history = read_json(source / "cropkit_pretraining.json")["history"]
    data = training_data(config)
    card = {"format": "cropkit-foundation/1", "recipe": RECIPE_VERSION, "config": asdict(config),
            "data": data.digest(), "data_name": f"{data.name}/{data.split} ({len(data)} images)",
            "probe": linear_probe(foundation, config.dataset),
            "pretraining": {"epochs": len(history), "final_loss": history[-1]["loss"],
                            "seconds": sum(h["seconds"] for h in history)},
            "environment": {"torch": torch.__version__, "cropkit": __version__,
                            "machine": f"{platform.machine()} CPU" if not torch.cuda.is_available()
                            else torch.cuda.get_device_name()},
            "command": command(config)}
    with atomic_directory(shipped_dir(config)) as tmp:
        for name in SHIPPED_FILES:
            shutil.copy(source / name, tmp / name)
        write_json(tmp / CARD, card)
        (tmp / "README.md").write_text(model_card(card))
    return shipped_dir(config)


def check(config: MAEConfig) -> tuple[bool, str]:
    """Pre-train `config` from scratch (cached) and say whether its probe lands inside the shipped card's
    interval: (inside, a line saying both)."""
    card_path = shipped_dir(config) / CARD
    if not card_path.is_file():
        raise FileNotFoundError(f"no shipped model for {config.dataset} seed {config.seed} ({card_path}); "
                                f"write one with: cropkit pretrain-fm --dataset {config.dataset} --seed {config.seed} "
                                "--ship")
    shipped = read_json(card_path)["probe"]
    spec = "embedded" + ("" if config.dataset == "mnist5k" else f":{config.dataset}") + f"@{config.seed}"
    probe = linear_probe(load_foundation(spec, from_scratch=True), config.dataset)
    low, high = shipped["interval"]
    inside = low <= probe["accuracy"] <= high
    return inside, (f"from scratch: probe {format_accuracy(probe['accuracy'], probe['interval'])}; shipped card: "
                    f"{format_accuracy(shipped['accuracy'], shipped['interval'])} -> "
                    + ("inside its interval" if inside else "OUTSIDE its interval"))
