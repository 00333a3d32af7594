"""What a training or evaluation call costs: wall-clock, examples, FLOPs, trainable parameters, peak memory.

`measure` wraps any call; FLOPs are counted by `torch.utils.flop_counter` on the operations actually run
(forward and backward, attack steps included), so a method that runs ten PGD steps per example pays for them.
The counter slows every operation it sees by about half again (measured on fine-tuning), so the training loops,
whose every batch runs the same operations, count their first batch of each epoch and scale it by the examples
(`measure(count_flops="first-batch")`, `Cost.batch`); the record says which way its FLOPs were counted.
Peak memory is the CUDA allocator's peak when the work runs on a GPU; on a CPU it is the process's resident-set
high-water mark, which never goes down within a process (so it bounds, rather than isolates, one call's use).

`vit_forward_flops` is the closed-form count for a ViT encoder at any size, for the cost-vs-model-size argument
at scales this machine cannot run (checked against the counter in the tests).
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

FIRST_BATCH = "first batch of each call, scaled by its examples"


@dataclass
class Cost:
    """The cost of one measured call; `examples` is set by the caller (what counts as one depends on the call)."""

    seconds: float = 0.0
    examples: int = 0
    flops: float = 0.0
    trainable_parameters: int = 0
    peak_memory_mb: float = 0.0
    memory: str = "cpu-rss-high-water"
    flops_counted: str = "every operation"
    _sample: list[float] = field(default_factory=list, repr=False)  # FLOPs and examples of the counted batch

    def fields(self) -> dict[str, Any]:
        """As a dict, for a history entry or a results record."""
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}

    @contextmanager
    def batch(self, examples: int) -> Iterator[None]:
        """Wrap one training step on `examples` examples. Under `measure(count_flops="first-batch")` the first
        such step is counted, and `measure` scales its FLOPs to all the examples; otherwise it does nothing."""
        if self.flops_counted != FIRST_BATCH or self._sample:
            yield
            return
        counter = FlopCounter()
        with counter:
            yield
        self._sample[:] = [float(counter.get_total_flops()), float(examples)]


class _GlobalOnly:
    """Stands in for FlopCounterMode's module tracker: every count goes to the global total."""

    parents = frozenset({"Global"})

    def __enter__(self) -> _GlobalOnly:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class FlopCounter(FlopCounterMode):
    """`torch.utils.flop_counter.FlopCounterMode` (its formulas, forward and backward) without per-module
    attribution: the module tracker's backward hooks make `torch.autograd.grad` on an input tensor fail, and
    that call is every attack step."""

    def __init__(self) -> None:
        super().__init__(display=False)
        self.mod_tracker = _GlobalOnly()


def trainable_parameters(modules: nn.Module | Iterable[nn.Module]) -> int:
    """Number of parameters with `requires_grad` (each counted once even if shared)."""
    modules = [modules] if isinstance(modules, nn.Module) else list(modules)
    seen = {id(p): p for m in modules for p in m.parameters() if p.requires_grad}
    return sum(p.numel() for p in seen.values())


def _rss_high_water_mb() -> float:
    kilobytes_or_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kilobytes_or_bytes / (2**20 if sys.platform == "darwin" else 2**10)


@contextmanager
def measure(trainable: nn.Module | Iterable[nn.Module] | None = None, *, examples: int = 0,
            device: torch.device | str | None = None,
            count_flops: bool | Literal["first-batch"] = True) -> Iterator[Cost]:
    """Measure the body of a `with` block; the yielded `Cost` is filled in when the block ends.

    `trainable` is what the call trains (its parameters with `requires_grad` are counted at entry); set
    `cost.examples` inside the block, or pass `examples` up front. `count_flops="first-batch"` counts only the
    step wrapped first in `cost.batch(n)` and scales it to `examples` (module docstring).
    """
    device = torch.device(device) if device is not None else None
    on_cuda = device is not None and device.type == "cuda"
    sampled = count_flops == "first-batch"
    cost = Cost(examples=examples, trainable_parameters=trainable_parameters(trainable) if trainable is not None else 0,
                memory="cuda-peak-allocated" if on_cuda else "cpu-rss-high-water",
                flops_counted=FIRST_BATCH if sampled else "every operation" if count_flops else "not counted")
    if on_cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    counter = FlopCounter() if count_flops is True else None
    started = time.perf_counter()
    try:
        if counter is None:
            yield cost
        else:
            with counter:
                yield cost
    finally:
        if on_cuda:
            torch.cuda.synchronize(device)
        cost.seconds = time.perf_counter() - started
        if counter is not None:
            cost.flops = float(counter.get_total_flops())
        elif sampled and cost._sample:
            flops, counted = cost._sample
            cost.flops = flops / counted * cost.examples
        else:
            cost.flops = float("nan")
        cost.peak_memory_mb = (torch.cuda.max_memory_allocated(device) / 2**20 if on_cuda else _rss_high_water_mb())


def total(history: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Sum a training history's per-epoch costs: seconds, examples and FLOPs add up, peak memory is the max."""
    rows = list(history)
    if not rows or "flops" not in rows[0]:
        raise ValueError("this history has no cost fields; it was written before the kit recorded costs — retrain it")
    return {
        "seconds": sum(r["seconds"] for r in rows),
        "examples": sum(r["examples"] for r in rows),
        "flops": sum(r["flops"] for r in rows),
        "trainable_parameters": max(r["trainable_parameters"] for r in rows),
        "peak_memory_mb": max(r["peak_memory_mb"] for r in rows),
        "epochs": len(rows),
    }


def vit_forward_flops(*, image_size: int, patch_size: int, hidden_size: int, num_layers: int,
                      intermediate_size: int, num_channels: int = 3, cls_token: bool = True) -> float:
    """FLOPs (2 per multiply-add) of one image through a ViT encoder: patch embedding, then per layer the QKV and
    output projections, the two attention matrix products and the MLP. Norms, softmax and biases are left out,
    as `torch.utils.flop_counter` leaves them out."""
    patches = (image_size // patch_size) ** 2
    tokens = patches + int(cls_token)
    d = hidden_size
    embedding = 2 * patches * num_channels * patch_size**2 * d
    per_layer = 2 * tokens * d * (4 * d) + 2 * 2 * tokens**2 * d + 2 * 2 * tokens * d * intermediate_size
    return float(embedding + num_layers * per_layer)
