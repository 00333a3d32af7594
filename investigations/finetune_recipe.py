"""The robust fine-tuning recipe of the quick profile, chosen by one search that treats every method alike.

    python investigations/finetune_recipe.py [--out investigations/finetune_recipe.json] [--lr ...] [--steps ...]
    python investigations/finetune_recipe.py --append --lr 3e-4 --steps 10   # more points, one file
    python investigations/finetune_recipe.py --append --lr 3e-4 --eps-warmup 1 --epochs 3 --n-train 0  # whole split
    python investigations/finetune_recipe.py --rechoose --epochs 3 --n-train 0  # the choice again, nothing run

Budget rule (the same for AFT, TeCoA and PMG-AFT): every method gets the same grid of head starts, learning
rates, PGD steps and eps-warmups, the same number of training examples and epochs (hence the same number of
attacked training examples). Head starts: the linear probe on the frozen embedded ViT-MAE (SLF), or that probe
trained one epoch on PGD examples of the frozen stack (ALF: a head already used to adversarial inputs; TeCoA and
PMG-AFT keep it fixed, AFT trains it on). Each grid point is scored on held-out *training* images (never the test
split) by PGD-10 accuracy at eps 0.1, clean accuracy breaking ties; each method's best point among the runs with
this invocation's budget (epochs, examples, batch size: what the notebooks then run) is its recipe. Earlier grids
stay in the file for the record. Runs are cached like any fine-tuning run, so a rerun only re-evaluates.
A run made before its method's loss last changed (`LOSS_CHANGED`: the fine-tuning recipe version that changed it)
stays in the file, marked superseded, and is not chosen.
"""

from __future__ import annotations

import argparse
import itertools
import json
from dataclasses import asdict, replace
from pathlib import Path

import torch

from cropkit.core.checkpoint import atomic_write_bytes
from cropkit.data import ImageData, load_dataset
from cropkit.eval.attacks import pgd
from cropkit.eval.evaluate import evaluate
from cropkit.eval.protocols import fit_alf, fit_slf
from cropkit.eval.records import provenance
from cropkit.finetune.robust import RECIPE_VERSION, FinetuneConfig, finetune_robust
from cropkit.foundation.pretrain import load_foundation
from cropkit.runs.recipe_search import recipe

METHODS = ("aft", "tecoa", "pmg-aft")
STARTS = ("slf", "alf")
LEARNING_RATES = (1e-4, 3e-4, 1e-3)
ATTACK_STEPS = (3,)
EPS_WARMUP = (0,)
EPOCHS, N_TRAIN, BATCH_SIZE, N_VALIDATION, EPS = 4, 1000, 32, 300, 0.1
# 6: TeCoA and PMG-AFT on the head's cosine logits (TeCoA x 100, as CLIP's); before, a linear probe's logits (TeCoA)
# and its logits / 100 (PMG-AFT, which collapsed at every grid point).
LOSS_CHANGED = {"tecoa": 6, "pmg-aft": 6}
FIRST_RECIPE = 5  # the fine-tuning recipe of the runs recorded before rows carried theirs


def split() -> tuple[ImageData, ImageData]:
    """MNIST-5k's training split as (validation, fitting): N_VALIDATION held-out images, drawn once with seed 0, that
    score every grid point (the test split is never looked at), and the rest to fine-tune on."""
    train = load_dataset("mnist5k", "train")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    held_out, rest = order[:N_VALIDATION], order[N_VALIDATION:]
    return (replace(train, images=train.images[held_out], labels=train.labels[held_out]),
            replace(train, images=train.images[rest], labels=train.labels[rest]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--foundation", default="embedded", help="as notebook 06's `foundation` (a smoke run: a tiny one)")
    parser.add_argument("--starts", nargs="+", default=list(STARTS), choices=STARTS)
    parser.add_argument("--lr", type=float, nargs="+", default=list(LEARNING_RATES))
    parser.add_argument("--steps", type=int, nargs="+", default=list(ATTACK_STEPS))
    parser.add_argument("--eps-warmup", type=int, nargs="+", default=list(EPS_WARMUP),
                        help="epochs over which the attack's radius grows to eps (FinetuneConfig.eps_warmup_epochs)")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--n-train", type=int, default=N_TRAIN, help="training examples; 0: the whole fitting split")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--append", action="store_true",
                        help="add this grid's points to the runs already in --out (the same budget rule) and rechoose")
    parser.add_argument("--rechoose", action="store_true",
                        help="only choose again among the runs in --out with this budget (nothing is trained)")
    args = parser.parse_args()
    budget = {"epochs": args.epochs, "n_train": args.n_train or None, "batch_size": args.batch_size}
    if args.rechoose:
        summary = json.loads(args.out.read_text())
        write(args.out, summary["grids"], summary["runs"], budget)
        return
    earlier = json.loads(args.out.read_text()) if args.append else {"grids": [], "runs": []}
    validation, fitting = split()
    slf = fit_slf(None, load_foundation(args.foundation), fitting)
    starts = {"slf": slf}
    if "alf" in args.starts:
        starts["alf"] = fit_alf(slf, fitting.take(args.n_train or None), pgd(EPS, 3), epochs=1)[0]
    rows = []
    grid = itertools.product(args.methods, args.starts, args.lr, args.steps, args.eps_warmup)
    for method, start, lr, steps, warmup in grid:
        config = FinetuneConfig(method=method, eps=EPS, lr=lr, attack_steps=steps, eps_warmup_epochs=warmup,
                                epochs=args.epochs, n_train=args.n_train or None, batch_size=args.batch_size)
        run = finetune_robust(starts[start], fitting, config)
        (record,) = evaluate(run.pipeline, validation, [pgd(EPS, 10)], model_name=config.name)
        rows.append({"method": method, "start": start, "lr": lr, "attack_steps": steps, "config": asdict(config),
                     "recipe": RECIPE_VERSION,
                     "validation_clean": record["clean_accuracy"], "validation_pgd10": record["robust_accuracy"],
                     "validation_pgd10_interval": record["robust_interval"],
                     "history": [{k: v for k, v in h.items() if k.startswith("train_") or k == "epoch"}
                                 for h in run.history]})
        print(f"{config.name} from {start.upper()}, lr {lr:g} PGD-{steps}, warmup {warmup}: "
              f"clean {record['clean_accuracy']:.1%}, PGD-10 {record['robust_accuracy']:.1%}", flush=True)
    grid = {"start": args.starts, "lr": args.lr, "attack_steps": args.steps, "eps_warmup_epochs": args.eps_warmup,
            "epochs": args.epochs, "n_train": args.n_train or len(fitting), "batch_size": args.batch_size,
            "n_validation": N_VALIDATION, "eps": EPS, "foundation": args.foundation}
    write(args.out, earlier["grids"] + [grid], earlier["runs"] + rows, budget)


def write(out: Path, grids: list[dict], rows: list[dict], budget: dict) -> None:
    """Choose each method's recipe among `rows` run with `budget` (the module's rule) and write the search's file."""
    same_budget = [r for r in rows if all(r["config"][k] == v for k, v in budget.items()) and not superseded(r)]
    methods = sorted({r["method"] for r in same_budget}, key=list(METHODS).index)
    best = {m: max((r for r in same_budget if r["method"] == m),
                   key=lambda r: (r["validation_pgd10"], r["validation_clean"])) for m in methods}
    chosen = {m: recipe(r) for m, r in best.items()}
    summary = {"rule": __doc__.split("Budget rule")[1].split("\n\n")[0].strip(), "grids": grids, "runs": rows,
               "superseded": [i for i, r in enumerate(rows) if superseded(r)], "chosen": chosen, **provenance("cpu")}
    atomic_write_bytes(out, (json.dumps(summary, indent=1) + "\n").encode())

def superseded(row: dict) -> bool:
    """Whether `row` was trained before its method's loss last changed (`LOSS_CHANGED`)."""
    return row.get("recipe", FIRST_RECIPE) < LOSS_CHANGED.get(row["method"], 0)


if __name__ == "__main__":
    main()
