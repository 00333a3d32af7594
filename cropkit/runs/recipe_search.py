"""The robust fine-tuning recipe search's committed result (`investigations/finetune_recipe.json`, written by
`investigations/finetune_recipe.py`): each method's chosen recipe and every grid point behind it, as notebook 06
shows them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cropkit.core.paths import project_root

RECIPE = ("lr", "attack_steps", "eps_warmup_epochs", "epochs", "n_train", "batch_size")  # a chosen point's config


def search_file() -> Path:
    return project_root() / "investigations" / "finetune_recipe.json"


def load_search(path: Path | None = None) -> dict[str, Any]:
    """The search: its budget `rule`, `grids`, every run in `runs`, the `superseded` ones, the `chosen` recipes."""
    return json.loads((path or search_file()).read_text())


def recipe(row: dict[str, Any]) -> dict[str, Any]:
    """The recipe of one run of the search: its head start and its config's `RECIPE` fields."""
    return {"start": row["start"]} | {k: row["config"].get(k, 0) for k in RECIPE}


def search_rows(search: dict[str, Any]) -> list[dict[str, Any]]:
    """A row per run of the search: its settings, its validation accuracies, and whether it is its method's chosen
    recipe or was superseded (trained before the method's loss last changed)."""
    return [{"method": r["method"], "lr": r["lr"], "PGD steps": r["attack_steps"],
             "eps warmup": r["config"].get("eps_warmup_epochs", 0), "epochs": r["config"]["epochs"],
             "examples": r["config"]["n_train"] or "all", "validation clean": r["validation_clean"],
             "validation PGD-10": r["validation_pgd10"], "validation PGD-10 interval": r["validation_pgd10_interval"],
             "chosen": search["chosen"][r["method"]] == recipe(r) and i not in search["superseded"],
             "superseded": i in search["superseded"]}
            for i, r in enumerate(search["runs"])]
