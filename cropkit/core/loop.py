"""What every training loop in the kit shares: seeded batches, the learning-rate schedule, one guarded optimiser
step, per-epoch means of the batch statistics, and the resumable epoch loop that checkpoints after each epoch.

The loops themselves (`train`, `finetune`, `pretrain`, `acl`, `protocols.fit_alf`) keep only what differs: the
model, the loss and what they record.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cropkit.core import checkpoint, distributed
from cropkit.core.progress import bar as progress_bar


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Index batches of a random permutation of range(n)."""
    return iter(torch.randperm(n, generator=generator).split(batch_size))


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int,
                    warmup_steps: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `warmup_steps`, then cosine decay to zero at `total_steps`."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, total_steps - warmup_steps)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def descend(loss: Tensor, optimizer: torch.optim.Optimizer,
            scheduler: torch.optim.lr_scheduler.LRScheduler | None = None, *, name: str, epoch: int,
            sharded_model: nn.Module | None = None) -> None:
    """One optimiser step on `loss` (and one scheduler step, if given), after checking that the loss is finite: a
    NaN names the run and the epoch instead of silently corrupting the weights.

    `sharded_model` is the model when `loss` covers this torchrun rank's share of the batch alone: the check then
    looks at the whole batch's loss (so every rank stops together) and its gradients are summed across ranks.
    """
    whole = distributed.sum_across(loss.detach()) if sharded_model is not None else loss.detach()
    if not torch.isfinite(whole):
        raise FloatingPointError(f"{name}: loss became {whole.item()} at epoch {epoch + 1}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if sharded_model is not None:
        distributed.sum_gradients(sharded_model)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()


class RunningMeans:
    """Example-weighted means of per-batch statistics over one epoch (a batch's mean counts `n` times)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, stats: dict[str, float], n: int) -> None:
        """Count the batch statistics `stats`, means over `n` examples."""
        for key, value in stats.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value) * n
        self.count += n

    def means(self, prefix: str = "", across_ranks: bool = False) -> dict[str, float]:
        """The means, keys prefixed; `across_ranks` pools the sums of every torchrun rank first."""
        sums, count = list(self.sums.values()), self.count
        if across_ranks:
            totals = distributed.sum_across(torch.tensor([*sums, count], dtype=torch.float64)).tolist()
            sums, count = totals[:-1], totals[-1]
        return {f"{prefix}{key}": total / count for key, total in zip(self.sums, sums)}


def resumable_training(
    directory: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    config: dict[str, Any],
    epochs: int,
    run_epoch: Callable[[int], dict[str, float]],
    desc: str,
    progress: bool = True,
    restart: bool = False,
    snapshots: Path | None = None,
) -> list[dict[str, Any]]:
    """Run `run_epoch(epoch)` for each epoch not yet done, checkpointing to `directory` after every one.

    An interrupted run called again with the same config resumes after its last checkpoint (`restart` ignores
    it). Returns the per-epoch history: the stats `run_epoch` returned, plus the epoch number and the epoch's
    wall-clock `seconds` (unless `run_epoch` returns its own, e.g. a `cropkit.core.cost` measure of training alone).
    Under torchrun rank 0 alone writes the checkpoint, and every rank waits for it before the next epoch. With
    `snapshots`, the model's weights after every epoch are also kept there (`checkpoint.save_snapshot`): a run's
    budgets along the way, at no extra training.
    """
    # `checkpoint.` looked up at call time: the interruption tests replace `save_training_state` there.
    resumed = None if restart else checkpoint.load_training_state(
        directory, model=model, optimizer=optimizer, scheduler=scheduler, config=config)
    start, history = resumed or (0, [])
    bar = progress_bar(range(start, epochs), desc=desc, disable=not progress, initial=start, total=epochs)
    for epoch in bar:
        started = time.perf_counter()
        stats = run_epoch(epoch)
        history.append({"epoch": epoch + 1, "seconds": time.perf_counter() - started, **stats})
        bar.set_postfix({k: f"{v:.4g}" for k, v in stats.items() if isinstance(v, float)})
        if distributed.is_main():
            checkpoint.save_training_state(directory, model=model, optimizer=optimizer, scheduler=scheduler,
                                           epoch=epoch + 1, history=history, config=config)
            if snapshots is not None:
                checkpoint.save_snapshot(model, snapshots, epoch + 1)
        distributed.barrier()
    return history
