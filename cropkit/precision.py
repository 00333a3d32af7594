"""Where the kit's models run and in what precision: the GPU if there is one; bf16 autocast on CUDA, fp32 on a CPU.

Evaluation, attacks, feature extraction and training all enter `autocast(device)` through this module (called
as `precision.autocast`), so one switch here, or one monkeypatch in a test, changes every one of them together.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from cropkit.validate import InputError, require


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
    """bf16 autocast on CUDA (matrix products in bf16, reductions and losses in fp32); fp32 elsewhere."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def describe(device: torch.device) -> str:
    """How `autocast` runs models on `device`, as the records state it."""
    return "bf16 autocast" if device.type == "cuda" else "fp32"
