"""Data parallelism under `torchrun`: the same training and evaluation functions, one process per device.

    torchrun --nproc_per_node 4 my_script.py          # or --nnodes / --rdzv-endpoint for several machines

`init()` reads torchrun's environment (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`), joins the process group (NCCL on
CUDA, gloo on the CPU) and returns this process's device. Without torchrun, or with one process, every helper
here is the identity and nothing is initialised, so single-process code pays nothing.

Batches are split into contiguous shards (`shard`), one per rank in rank order; `gather_rows` puts a batch's
rows back together with their gradient (CRoPD's L_con compares every anchor with the whole batch); `sum_across`
and `sum_gradients` add up per-rank sums. Rank 0 alone writes files (`is_main`), the others wait at `barrier`.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this process writes files and records (rank 0, or the only process)."""
    return rank() == 0


def init() -> torch.device:
    """Join the process group torchrun describes, if it describes more than one process; return this rank's device.

    CUDA ranks use GPU `LOCAL_RANK` and NCCL; CPU ranks use gloo. Safe to call twice.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    return device


def shard(n: int, of_rank: int | None = None) -> slice:
    """This rank's (or `of_rank`'s) contiguous share of `range(n)`; shares differ in length by at most one."""
    r, w = rank() if of_rank is None else of_rank, world_size()
    return slice(r * n // w, (r + 1) * n // w)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def close() -> None:
    """Wait for every rank, then leave the process group: the end of a torchrun script. A rank that exits while
    the group lives (e.g. before rank 0 has written its files) can be aborted by the backend's threads."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _comm_device(t: Tensor) -> torch.device:
    """Where a collective on `t` runs: NCCL needs the GPU, gloo takes tensors where they are."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else t.device


def sum_across(values: Tensor) -> Tensor:
    """`values` summed over the ranks, on `values`' device (a new tensor; `values` itself with one process)."""
    if not dist.is_initialized():
        return values
    total = values.detach().to(_comm_device(values), copy=True)
    dist.all_reduce(total)
    return total.to(values.device)


def min_across(value: int) -> int:
    """The smallest of the ranks' `value`s: a setting, such as a batch size, that every rank must share."""
    if not dist.is_initialized():
        return value
    smallest = torch.tensor([value], dtype=torch.int64)
    smallest = smallest.to(_comm_device(smallest))
    dist.all_reduce(smallest, op=dist.ReduceOp.MIN)
    return int(smallest.item())


def sum_gradients(model: nn.Module) -> None:
    """Replace every parameter gradient by its sum over the ranks, in one all-reduce of a flat buffer.

    Each rank's loss is its shard's share of the global batch mean, so the summed gradient is the gradient of the
    one-process loss.
    """
    if not dist.is_initialized():
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    for g, summed in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(summed.view_as(g))


def gather_rows(rows: Tensor, total: int) -> Tensor:
    """The whole batch of `total` rows from every rank's `shard`, in rank order, differentiable.

    The gradient that reaches `rows` is the sum, over ranks, of the gradients of their losses with respect to
    this rank's rows, as if one process had computed the whole batch.
    """
    if not dist.is_initialized():
        return rows
    if len(rows) != len(range(total)[shard(total)]):
        raise ValueError(f"rank {rank()} holds {len(rows)} rows, but its shard of {total} has "
                         f"{len(range(total)[shard(total)])}")
    return _GatherRows.apply(rows, total)


class _GatherRows(torch.autograd.Function):
    """all_gather of unequal shards (padded to the longest); backward: all-reduce, then this rank's slice."""

    @staticmethod
    def forward(ctx, rows: Tensor, total: int) -> Tensor:  # type: ignore[override]
        sizes = [len(range(total)[shard(total, r)]) for r in range(world_size())]
        padded = F.pad(rows, (0, 0) * (rows.ndim - 1) + (0, max(sizes) - len(rows))).to(_comm_device(rows))
        gathered = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(gathered, padded.contiguous())
        ctx.mine = shard(total)
        return torch.cat([g[:n] for g, n in zip(gathered, sizes)]).to(rows.device)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return sum_across(grad.contiguous())[ctx.mine], None
