"""The two-process half of tests/test_distributed.py, run as `torchrun --nproc_per_node 2 distributed_worker.py OUT`.

Each rank makes exactly the calls one process would make: train CONFIG from scratch (cache OUT/fresh), train it
again where a one-process run was interrupted after its first epoch (cache OUT/resumed), and evaluate the
pipeline saved in OUT/pipeline (safetensors, into `random_architecture`). Rank 0 writes what the test compares
to OUT/two-process.pt; every rank writes how many checkpoints it saved to OUT/saves-<rank>.json.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from conftest import random_architecture  # this script's folder, tests/, is on the path
from cropkit.core import checkpoint, distributed
from cropkit.core.checkpoint import load_weights
from cropkit.cropd.config import PreprocessorConfig
from cropkit.cropd.train import train_preprocessor
from cropkit.data import load_dataset
from cropkit.eval.attacks import AttackSpec, pgd
from cropkit.eval.evaluate import evaluate

# 1437 digits in batches of 128: the last batch of 29 splits 14 / 15, so the shards are uneven.
CONFIG = PreprocessorConfig(dataset="digits", width=8, latent_channels=16, epochs=2, batch_size=128, lam=1.0)
ATTACKS = [pgd(0.002, steps=3), AttackSpec("apgd-ce", 0.002, steps=3)]
EVAL_IMAGES, EVAL_BATCH = 160, 24


def eval_data():
    return load_dataset("digits", "test").take(EVAL_IMAGES)


def main(out: Path) -> None:
    torch.set_num_threads(1)
    distributed.init()
    saves = 0
    real_save = checkpoint.save_training_state

    def counted_save(*args, **kwargs):
        nonlocal saves
        saves += 1
        real_save(*args, **kwargs)

    checkpoint.save_training_state = counted_save
    trained = {}
    for name in ("fresh", "resumed"):
        os.environ["CROPKIT_CACHE"] = str(out / name)
        trained[name] = train_preprocessor(CONFIG, progress=False)
    pipeline = random_architecture()
    load_weights(pipeline, out / "pipeline")
    records = evaluate(pipeline, eval_data(), ATTACKS, model_name="tiny", batch_size=EVAL_BATCH, device="cpu",
                       results=out / "records.jsonl")
    (out / f"saves-{distributed.rank()}.json").write_text(json.dumps(saves))
    smallest = distributed.min_across(distributed.rank() + 3)  # every rank learns the smallest rank's value
    if distributed.is_main():
        torch.save({name: {"weights": t.model.state_dict(), "history": t.history} for name, t in trained.items()}
                   | {"records": records, "smallest": smallest}, out / "two-process.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    distributed.close()
