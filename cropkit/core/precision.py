"""Where the kit's models run and in what precision: the GPU if there is one; bf16 autocast on CUDA, fp32 on a CPU.

Evaluation, attacks, feature extraction and training all enter `autocast(device)` through this module (called
as `precision.autocast`), so one switch here, or one monkeypatch in a test, changes every one of them together.
`fp32()` is that switch: inside it every forward pass runs in fp32, on CUDA too (`evaluate(precision="fp32")`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from typing import Literal

import torch
from torch import Tensor, nn

from cropkit.core.validate import InputError, require

Precision = Literal["auto", "fp32"]
PRECISIONS = ("auto", "fp32")
_forced_fp32: ContextVar[bool] = ContextVar("cropkit_forced_fp32", default=False)


def default_device() -> torch.device:
    """The first CUDA GPU if there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: torch.device | str | None) -> torch.device:
    """`device` as a `torch.device`, or `default_device()` when None; a device this machine lacks is refused."""
    if device is None:
        return default_device()
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise InputError("device", device, f"not a torch device ({error})", "pass 'cpu', 'cuda', 'cuda:1' or None "
                         "(the GPU when there is one)") from None
    require(resolved.type != "cuda" or torch.cuda.is_available(), "device", device, "CUDA is not available here",
            "pass device='cpu', or None to take the GPU when there is one")
    return resolved


def autocast(device: torch.device) -> AbstractContextManager[None]:
    """bf16 autocast on CUDA (matrix products in bf16, reductions and losses in fp32); fp32 elsewhere and inside
    `fp32()`."""
    if device.type == "cuda" and not _forced_fp32.get():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


@contextmanager
def fp32(enabled: bool = True) -> Iterator[None]:
    """Run every forward pass inside the block in fp32, on CUDA too (for headline numbers; see the README)."""
    token = _forced_fp32.set(enabled or _forced_fp32.get())
    try:
        yield
    finally:
        _forced_fp32.reset(token)


def describe(device: torch.device) -> str:
    """How `autocast` runs models on `device`, as the records state it."""
    return "bf16 autocast" if device.type == "cuda" and not _forced_fp32.get() else "fp32"


class Fp32Logits(nn.Module):
    """`model` under `autocast`, its logits cast to fp32: what the attacks see. On CUDA the forward and backward
    through the model run in bf16 while the attack's own arithmetic (loss, step, projection) stays in fp32. The
    identity on the CPU."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.training = model.training  # torchattacks restores the mode it finds here after every attack

    def forward(self, x: Tensor) -> Tensor:
        with autocast(x.device):
            return self.model(x).float()
