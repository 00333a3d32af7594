"""Why TeCoA and PMG-AFT train on the fixed head's cosine logits (`cropkit.finetune.robust`, fine-tuning recipe 6): the
ports to a linear probe that do not work, and what breaks them, at a small budget.

    python investigations/pmg_aft_port.py [--n-train 640] [--epochs 2] [--out investigations/pmg_aft_port.json]

PMG-AFT's code trains, attacks and validates CLIP on cosine logits (`PMG_AFT.py`, `multiGPU_CLIP`), TeCoA's on CLIP's
logit scale times them. Each variant below fine-tunes the same start (the SLF probe on the embedded ViT-MAE, kept
fixed) with the quick profile's recipe (lr 3e-4, PGD-3 at eps 0.1, an eps-warmup of one epoch, batch 32) on
`--n-train` training images for `--epochs` epochs, and is scored on the recipe search's 300 held-out training
images (clean, PGD-10 at eps 0.1) through the head it was trained on:
- `tecoa-logits`: TeCoA on the probe's logits (the kit's port before recipe 6);
- `pmg-logits-no-kl`: PMG-AFT on the probe's logits with both KL weights 0, which must reproduce `tecoa-logits`;
- `pmg-logits-kl-clean`, `pmg-logits-kl-guide`: one batch-summed KL term at a time, on the probe's logits;
- `pmg-logits`, `pmg-logits/100`: both KLs, on the probe's logits and on them divided by 100 (recipe 5's port);
- `tecoa-cosine`, `pmg-cosine`: the kit's ports, 100 x and 1 x the probe's cosine logits (`heads.CosineHead`).
The variants' heads are not the kit's choice for every name: the script swaps `finetune.method_pipeline` for one
that puts the variant's head on the pipeline, under a scratch cache, apart from the kit's runs.
The small budget shows what breaks the logit ports (the loop itself is exact: `pmg-logits-no-kl` reproduces
`tecoa-logits`), not what the cosine ports reach: at 640 images and 2 epochs they have barely started to learn,
their cross-entropy nearly flat on cosines; at the recipe's budget (3,700 images, 3 epochs) they reach what the
recipe-6 rows of `finetune_recipe.json` record.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from unittest import mock

from finetune_recipe import EPS, N_VALIDATION, split  # this folder is on the path when run as a script
from torch import Tensor, nn

from cropkit.core.checkpoint import atomic_write_bytes
from cropkit.eval.attacks import pgd
from cropkit.eval.evaluate import evaluate
from cropkit.eval.protocols import fit_slf
from cropkit.eval.records import provenance
from cropkit.finetune import robust as finetune
from cropkit.finetune.robust import CLIP_LOGIT_SCALE, FinetuneConfig, finetune_robust
from cropkit.foundation import Pipeline
from cropkit.foundation.heads import CosineHead
from cropkit.foundation.pretrain import load_foundation


class Scaled(nn.Module):
    """A head's logits times `factor` (recipe 5's PMG-AFT port: a probe's logits / 100)."""

    def __init__(self, head: nn.Module, factor: float) -> None:
        super().__init__()
        self.head, self.factor = head, factor

    def forward(self, features: Tensor) -> Tensor:
        return self.factor * self.head(features)


# name: (method, KL weights alpha and beta, the head the variant trains through, given the probe)
VARIANTS: dict[str, tuple[str, float, float, Callable[[nn.Module], nn.Module]]] = {
    "tecoa-logits": ("tecoa", 1.0, 1.0, lambda head: head),
    "pmg-logits-no-kl": ("pmg-aft", 0.0, 0.0, lambda head: head),
    "pmg-logits-kl-clean": ("pmg-aft", 0.0, 1.0, lambda head: head),
    "pmg-logits-kl-guide": ("pmg-aft", 1.0, 0.0, lambda head: head),
    "pmg-logits": ("pmg-aft", 1.0, 1.0, lambda head: head),
    "pmg-logits/100": ("pmg-aft", 1.0, 1.0, lambda head: Scaled(head, 0.01)),
    "tecoa-cosine": ("tecoa", 1.0, 1.0, lambda head: CosineHead(head, CLIP_LOGIT_SCALE)),
    "pmg-cosine": ("pmg-aft", 1.0, 1.0, lambda head: CosineHead(head, 1.0)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--n-train", type=int, default=640)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    validation, fitting = split()  # the recipe search's
    start = fit_slf(None, load_foundation("embedded"), fitting)
    rows = []
    for name in args.variants:
        method, alpha, beta, head = VARIANTS[name]
        config = FinetuneConfig(method=method, eps=EPS, attack_steps=3, epochs=args.epochs, eps_warmup_epochs=1,
                                lr=3e-4, batch_size=32, n_train=args.n_train, alpha=alpha, beta=beta)
        with tempfile.TemporaryDirectory() as scratch, mock.patch.dict(os.environ, {"CROPKIT_CACHE": scratch}), \
                mock.patch.object(finetune, "method_pipeline",
                                  lambda p, _method: Pipeline(p.preprocessor, p.foundation, head(p.head))):
            run = finetune_robust(start, fitting, config)
            (record,) = evaluate(run.pipeline, validation, [pgd(EPS, 10)], model_name=name)
        last = {k: v for k, v in run.history[-1].items() if k.startswith("train_")}
        rows.append({"variant": name, "method": method, "alpha": alpha, "beta": beta,
                     "validation_clean": record["clean_accuracy"],
                     "validation_clean_interval": record["clean_interval"],
                     "validation_pgd10": record["robust_accuracy"],
                     "validation_pgd10_interval": record["robust_interval"], "last_epoch": last})
        print(f"{name}: clean {record['clean_accuracy']:.1%}, PGD-10 {record['robust_accuracy']:.1%}; last epoch "
              + ", ".join(f"{k[6:]} {v:.3g}" for k, v in last.items() if k != "train_eps"), flush=True)
    summary = {"doc": __doc__.strip(), "n_train": args.n_train, "epochs": args.epochs, "n_validation": N_VALIDATION,
               "runs": rows, **provenance("cpu")}
    atomic_write_bytes(args.out, (json.dumps(summary, indent=1) + "\n").encode())


if __name__ == "__main__":
    main()
