"""The training-time attack steps every method family takes: maximise any loss of the input over the L-inf ball.

`linf_ascent` starts uniformly at random in the ball and takes signed-gradient steps, each projected back to the
ball and to [0, 1]; one step of 1.25 * eps is `fgsm_rs`, FGSM with a random start (FGSM-RS, Wong et al. 2020),
which avoids the catastrophic overfitting of plain FGSM. Evaluation attacks are torchattacks' (`attacks`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def linf_ascent(loss_of_input: Callable[[Tensor], Tensor], x: Tensor, eps: float, *, steps: int = 1,
                step: float | None = None, generator: torch.Generator | None = None,
                noise: Tensor | None = None) -> Tensor:
    """Maximise `loss_of_input` in the L-inf ball around `x`: uniform random start, then `steps` signed-gradient
    steps of size `step` (default 1.25 * eps), each projected back to the ball and to [0, 1].

    The start is `x + (2 * noise - 1) * eps`, `noise` uniform in [0, 1) drawn from `generator` unless given (a
    data-parallel rank passes its rows of the whole batch's draw). Only the input's gradient is taken
    (`torch.autograd.grad`), so no parameter gradient is accumulated.
    """
    if eps == 0:
        return x.detach()
    step = 1.25 * eps if step is None else step
    if noise is None:
        noise = torch.rand(x.shape, generator=generator, device="cpu" if generator is not None else x.device)
    elif noise.shape != x.shape:
        raise ValueError(f"noise of shape {tuple(noise.shape)} for inputs of shape {tuple(x.shape)}")
    x_adv = (x + (noise.to(x.device) * 2 - 1) * eps).clamp(0, 1).detach()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_of_input(x_adv), x_adv)
        delta = (x_adv.detach() - x + step * grad.sign()).clamp(-eps, eps)
        x_adv = (x + delta).clamp(0, 1).detach()
    return x_adv


def fgsm_rs(loss_of_input: Callable[[Tensor], Tensor], x: Tensor, eps: float, step_factor: float = 1.25,
            generator: torch.Generator | None = None, noise: Tensor | None = None) -> Tensor:
    """FGSM-RS: one step of `step_factor * eps` from a uniform random start in the L-inf ball; in [0, 1]."""
    return linf_ascent(loss_of_input, x, eps, steps=1, step=step_factor * eps, generator=generator, noise=noise)
