"""How many MAE pre-training epochs the embedded foundation model needs: the linear probe against the budget.

    python investigations/pretraining_budget.py [--epochs 10 20 40 80] [--out investigations/pretraining_budget.json]

Each budget is a full pre-training run of that length (the warm-up + cosine schedule scales with it), cached
under `$CROPKIT_CACHE` like the kit's own model. Each gets the kit's linear probe (weight decay chosen on held-out
training data) on its frozen mean-pooled features, scored on MNIST-5k's 1,000 test images; every budget is
compared, paired on those images (exact McNemar), with the longest one. The preset takes the smallest budget
whose probe is not resolved below the longest's (issue: the quick profile's pre-training in minutes, not ten).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, replace
from pathlib import Path

from cropkit.core.checkpoint import write_json
from cropkit.data import load_dataset
from cropkit.eval.records import provenance
from cropkit.eval.stats import compare, format_accuracy, wilson_interval
from cropkit.foundation import FoundationModel
from cropkit.foundation.heads import train_linear_head
from cropkit.foundation.pretrain import PRESETS, pretrain_mae
from cropkit.runs.shipping import probe_outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, nargs="+", default=[10, 20, 30, 40, 80])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    args = parser.parse_args()
    train, test = load_dataset("mnist5k", "train"), load_dataset("mnist5k", "test")
    x_train, y_train = train.tensors()
    x_test, y_test = test.tensors()
    pixels = train_linear_head(x_train.flatten(1), y_train, 10)(x_test.flatten(1)).argmax(1) == y_test
    rows, outcomes = [], {}
    for epochs in sorted(args.epochs):
        config = replace(PRESETS["mnist5k"], epochs=epochs)
        path = pretrain_mae(config)
        history = json.loads((path / "cropkit_pretraining.json").read_text())["history"]
        outcomes[epochs] = probe_outcomes(FoundationModel.from_pretrained(path), train, test)[0].numpy()
        rows.append({"epochs": epochs, "pretraining_seconds": sum(h["seconds"] for h in history),
                     "final_mae_loss": history[-1]["loss"], "probe_accuracy": float(outcomes[epochs].mean()),
                     "probe_interval": wilson_interval(int(outcomes[epochs].sum()), len(y_test))})
        print(f"{epochs} epochs: {rows[-1]['pretraining_seconds']:.0f} s, probe "
              f"{format_accuracy(rows[-1]['probe_accuracy'], rows[-1]['probe_interval'])}", flush=True)
    longest = max(outcomes)
    below = set()
    for row in rows[:-1]:
        against = compare(f"{row['epochs']} epochs", outcomes[row["epochs"]], f"{longest} epochs", outcomes[longest])
        row["against_longest"] = against.statement("probe accuracy")
        if against.resolved and against.difference < 0:
            below.add(row["epochs"])
    for row in rows:
        row["against_pixels"] = compare(f"{row['epochs']} epochs", outcomes[row["epochs"]], "raw pixels",
                                        pixels.numpy()).statement("probe accuracy")
    chosen = min(epochs for epochs in outcomes if epochs not in below)
    result = {"config": asdict(PRESETS["mnist5k"]), "pixels_accuracy": float(pixels.float().mean()),
              "budgets": rows, "rule_chooses_epochs": chosen, **provenance("cpu")}
    write_json(args.out, result)
    print(f"the rule chooses {chosen} epochs; the preset has {PRESETS['mnist5k'].epochs}")
    for row in rows:
        print(row.get("against_longest", f"{longest} epochs: the longest"), "|", row["against_pixels"])


if __name__ == "__main__":
    main()
