"""RCS (Xu et al. 2023): robustness-aware coreset selection, which makes ACL cheaper by training on a subset.

Selection is greedy and batch-wise on the projection head's gradients only (METHOD.md section 2): each candidate
batch's gradient of the training loss is taken once; then, until the budget is filled, the batch whose gradient
has the largest inner product with the gradient of the validation loss (the representational divergence RD of
PGD examples, `rd_validation_loss`) is picked, the head takes one SGD step along that batch's gradient, and the
validation gradient is recomputed. The head's parameters are restored afterwards, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from cropkit.contrastive import representational_divergence
from cropkit.losses import linf_ascent


def greedy_batch_selection(
    head: nn.Module, batches: Sequence[Tensor], batch_loss: Callable[[Tensor], Tensor],
    validation_loss: Callable[[], Tensor], budget: int, lr: float = 0.01,
) -> Tensor:
    """Exactly `budget` indices, taken from the `batches` (index tensors) in the order they were picked.

    `batch_loss(batch)` and `validation_loss()` are losses whose gradients are taken with respect to `head`'s
    parameters only. The last pick is cut to fill the budget exactly. `head` is unchanged on return.
    """
    available = sum(len(b) for b in batches)
    if not 0 < budget <= available:
        raise ValueError(f"budget must lie in 1..{available} (the candidates' size), got {budget}")
    params = [p for p in head.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the head has no trainable parameters to take gradients of")

    def gradient(loss: Tensor) -> Tensor:
        grads = torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)  # a BN branch may be unused
        return torch.cat([g.flatten() for g in grads])

    saved = [p.detach().clone() for p in params]
    try:
        candidates = torch.stack([gradient(batch_loss(batch)) for batch in batches])
        open_ = torch.ones(len(batches), dtype=torch.bool, device=candidates.device)
        chosen: list[Tensor] = []
        remaining = budget
        while remaining > 0:
            scores = (candidates @ gradient(validation_loss())).masked_fill(~open_, float("-inf"))
            best = int(scores.argmax())
            open_[best] = False
            chosen.append(batches[best][:remaining])
            remaining -= len(chosen[-1])
            if remaining > 0:
                with torch.no_grad():  # one SGD step of the head along the picked batch's gradient
                    for p, g in zip(params, candidates[best].split([p.numel() for p in params])):
                        p.sub_(lr * g.view_as(p))
    finally:
        with torch.no_grad():
            for p, original in zip(params, saved):
                p.copy_(original)
    return torch.cat(chosen)


def rd_validation_loss(model: Callable[[Tensor], Tensor], x: Tensor, eps: float, *, steps: int = 3,
                       step: float | None = None, normalise: Literal["minmax", "softmax"] = "minmax",
                       generator: torch.Generator | None = None) -> Tensor:
    """RD between `model`'s outputs on PGD examples (`steps` steps maximising RD) and on `x` itself."""
    h = model(x)
    target = h.detach()
    x_adv = linf_ascent(lambda v: representational_divergence(model(v), target, normalise), x, eps, steps=steps,
                        step=step, generator=generator)
    return representational_divergence(model(x_adv), h, normalise)
