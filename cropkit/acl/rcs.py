"""RCS (Xu et al. 2023): robustness-aware coreset selection, which makes ACL cheaper by training on a subset.

Selection is greedy and batch-wise on the projection head's gradients only (docs/methods.md section 2): each candidate
batch's gradient of the training loss is taken once; then, until the budget is filled, the batch whose gradient
has the largest inner product with the gradient of the validation loss (the representational divergence RD of
PGD examples, `rd_validation_loss`) is picked, the head takes one SGD step along that batch's gradient, and the
validation gradient is recomputed. The head's parameters are restored afterwards, bit for bit.

As in the official code (`ACL_RCS/small_scale_datasets/RCS.py`, `RCS.update_subset_indice`): the gradients are
those of the head's linear layers only (parameters named 'fc', not the BatchNorms), and the inner product is taken
between their summaries `grad.mean(dim=0)` per parameter (for a weight, its mean over output units), while the
step uses the full gradients. Kit choice: the last pick is cut to fill the budget exactly (the code picks
`int(budget / batch_size)` whole batches).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from cropkit.acl.losses import representational_divergence
from cropkit.eval.ascent import linf_ascent


def greedy_batch_selection(
    head: nn.Module, batches: Sequence[Tensor], batch_loss: Callable[[Tensor], Tensor],
    validation_loss: Callable[[], Tensor], budget: int, lr: float = 0.02,
) -> Tensor:
    """Exactly `budget` indices, taken from the `batches` (index tensors) in the order they were picked.

    `batch_loss(batch)` and `validation_loss()` are losses whose gradients are taken with respect to the parameters
    of `head`'s `nn.Linear` layers only. The last pick is cut to fill the budget exactly. `head` is unchanged on
    return.
    """
    available = sum(len(b) for b in batches)
    if not 0 < budget <= available:
        raise ValueError(f"budget must lie in 1..{available} (the candidates' size), got {budget}")
    params = [p for m in head.modules() if isinstance(m, nn.Linear) for p in m.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the head has no trainable linear layer to take gradients of")

    def gradients(loss: Tensor) -> tuple[Tensor, ...]:
        return torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)  # a BN branch may be unused

    def summary(grads: Sequence[Tensor]) -> Tensor:
        return torch.cat([g.mean(dim=0).flatten() for g in grads])

    saved = [p.detach().clone() for p in params]
    try:
        full = [gradients(batch_loss(batch)) for batch in batches]
        candidates = torch.stack([summary(g) for g in full])
        open_ = torch.ones(len(batches), dtype=torch.bool, device=candidates.device)
        chosen: list[Tensor] = []
        remaining = budget
        while remaining > 0:
            scores = (candidates @ summary(gradients(validation_loss()))).masked_fill(~open_, float("-inf"))
            best = int(scores.argmax())
            open_[best] = False
            chosen.append(batches[best][:remaining])
            remaining -= len(chosen[-1])
            if remaining > 0:
                with torch.no_grad():  # one SGD step of the head along the picked batch's gradient
                    for p, g in zip(params, full[best]):
                        p.sub_(lr * g)
    finally:
        with torch.no_grad():
            for p, original in zip(params, saved):
                p.copy_(original)
    return torch.cat(chosen)


def rd_validation_loss(clean: Callable[[Tensor], Tensor], adversarial: Callable[[Tensor], Tensor], x: Tensor,
                       eps: float, *, steps: int = 3, step: float | None = None,
                       normalise: Literal["minmax", "softmax"] = "minmax",
                       generator: torch.Generator | None = None) -> Tensor:
    """RD between `adversarial`'s outputs on PGD examples (`steps` steps maximising RD) and `clean`'s on `x`.

    The official code passes clean images through the `normal` BatchNorm branch and adversarial ones through
    `pgd`; its step is 10/255 / steps at eps 8/255, i.e. the default 1.25 * eps / steps here.
    """
    h = clean(x)
    target = h.detach()
    x_adv = linf_ascent(lambda v: representational_divergence(adversarial(v), target, normalise), x, eps, steps=steps,
                        step=1.25 * eps / steps if step is None else step, generator=generator)
    return representational_divergence(adversarial(x_adv), h, normalise)
