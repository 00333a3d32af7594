"""Can the reference check fail for the reason it names? A faithful run with training seeds the reference never
used must pass `cropkit report --compare`; a run of a broken method must fail it on that method's numbers.

    python investigations/check_power.py [--seeds 3 4] [--out investigations/check_power]

Writes the records that `tests/test_check.py` judges against `reference/quick` with `cropkit.runs.check.moved`:
- `fresh/`: notebook 02 (the quick profile, papermill) with `--seeds` on the first foundation model and the second
  seed also on foundation model 1; notebook 06 with AFT alone and the same seeds.
- `broken-cropd/`: the fresh run of notebook 02 with CRoPD at lambda 0 in place of CRoPD at lambda 1: its
  reconstruction-only auto-encoder (which is CRoPD at lambda 0, `PreprocessorConfig.for_lambda(0)`) renamed to the
  lambda-1 model, whose own records are left out: what a bug that drops the contrastive term of the loss writes.
- `broken-aft/`: AFT with notebook 06's recipe fine-tuned at radius 0 (its attack never moves the images: clean
  fine-tuning under AFT's name), evaluated as notebook 06 evaluates AFT.
Every model is cached as the notebooks' are, so a rerun only re-reads them. About 25 minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import ast
import json
import tempfile
from pathlib import Path

import papermill

from cropkit.core.checkpoint import atomic_write_bytes
from cropkit.core.paths import project_root
from cropkit.data import load_dataset
from cropkit.eval.attacks import AttackSpec, pgd
from cropkit.eval.protocols import fit_slf
from cropkit.finetune.robust import FinetuneConfig, finetune_robust
from cropkit.foundation.pretrain import load_foundation
from cropkit.runs.notebook import NotebookRun
from cropkit.runs.profiles import notebook_parameters


def run_notebook(name: str, out: Path, **parameters: object) -> None:
    """Execute `notebooks/<name>.ipynb` with its quick defaults and `parameters`, its records into `out`."""
    with tempfile.TemporaryDirectory() as scratch:
        papermill.execute_notebook(project_root() / "notebooks" / f"{name}.ipynb", Path(scratch) / f"{name}.ipynb",
                                   parameters={**parameters, "results_dir": str(out), "figures_dir": scratch},
                                   kernel_name="cropkit", progress_bar=False, cwd=str(project_root()))


def substitute(source: Path, target: Path, old: str, new: str) -> None:
    """Write the records of `source` to `target` with those of the models named `new...` replaced by copies of
    those named `old...`, renamed: model `old` standing in for model `new`."""
    records = [json.loads(line) for line in source.read_text().splitlines()]
    kept = [r for r in records if not str(r.get("model", "")).startswith(new)]
    kept += [r | {"model": new + r["model"][len(old):]} for r in records if str(r.get("model", "")).startswith(old)]
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, "".join(json.dumps(r) + "\n" for r in kept).encode())


def broken_aft(out: Path, seeds: list[int]) -> None:
    """AFT with notebook 06's recipe at radius 0, evaluated and named as notebook 06 evaluates AFT."""
    p = {k: ast.literal_eval(v) for k, v in notebook_parameters(project_root() / "notebooks" /
                                                                "06_robust_finetuning.ipynb").items()}
    run = NotebookRun.start("06_robust_finetuning", out, tempfile.mkdtemp(), p["seed"])
    train, test = load_dataset(p["dataset"], "train"), load_dataset(p["dataset"], "test")
    start = fit_slf(None, load_foundation(p["foundation"], pooling=p["pooling"]), train, device=run.device)
    attacks = [pgd(p["eps"], 10), AttackSpec("apgd-ce", p["eps"], steps=p["strong_steps"]),
               AttackSpec(p["strong_attack"], p["eps"], steps=p["strong_steps"])]
    for s in seeds:
        config = FinetuneConfig(method="aft", eps=0.0, attack_steps=p["ft_steps"]["aft"], epochs=p["ft_epochs"],
                                eps_warmup_epochs=p["ft_eps_warmup"]["aft"], lr=p["ft_lr"]["aft"],
                                last_blocks=p["last_blocks"], n_train=p["n_ft_train"], batch_size=p["ft_batch_size"],
                                seed=s)
        tuned = finetune_robust(start, train, config, device=run.device)
        run.evaluate(tuned.pipeline, test.take(p["n_eval"], seed=p["seed"]), attacks, model_name="AFT (all blocks)",
                     setup={"method": "AFT (all blocks)", "foundation": start.foundation.name,
                            "head": "linear probe (SLF)", "training_seed": s, "broken": "fine-tuned at radius 0"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[3, 4])
    parser.add_argument("--out", type=Path, default=project_root() / "investigations" / "check_power")
    args = parser.parse_args()
    seeds, more = args.seeds, ["embedded@1"] if len(args.seeds) > 1 else []
    for folder in ("fresh", "broken-cropd", "broken-aft"):
        for stale in (args.out / folder).glob("*.jsonl"):
            stale.unlink()
    run_notebook("02_main_results", args.out / "fresh", seeds=seeds, more_foundations=more)
    run_notebook("06_robust_finetuning", args.out / "fresh", seeds=seeds, methods=["aft"])
    substitute(args.out / "fresh" / "02_main_results.jsonl", args.out / "broken-cropd" / "02_main_results.jsonl",
               "Recon AE", "CRoPD (lambda=1)")
    broken_aft(args.out / "broken-aft", seeds)
    for lock in args.out.rglob("*.lock"):  # the append locks: nothing to keep
        lock.unlink()
    for path in sorted(args.out.rglob("*.jsonl")):
        print(path.relative_to(project_root()), len(path.read_text().splitlines()), "records")


if __name__ == "__main__":
    main()
