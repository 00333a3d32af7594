"""Where the kit's models run and in what precision: the GPU if there is one; bf16 autocast on CUDA, fp32 on a CPU.

Evaluation, attacks, feature extraction and training all enter `autocast(device)` through this module (called
as `precision.autocast`), so one switch here, or one monkeypatch in a test, changes every one of them together.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor, nn


def default_device() -> torch.device:
    """The first CUDA GPU if there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: torch.device | str | None) -> torch.device:
    """`device` as a `torch.device`, or `default_device()` when None."""
    return torch.device(device) if device is not None else default_device()


def autocast(device: torch.device) -> AbstractContextManager[None]:
    """bf16 autocast on CUDA (matrix products in bf16, reductions and losses in fp32); fp32 elsewhere."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def describe(device: torch.device) -> str:
    """How `autocast` runs models on `device`, as the records state it."""
    return "bf16 autocast" if device.type == "cuda" else "fp32"


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
