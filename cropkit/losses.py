"""CRoPD's training losses and the FGSM that makes its adversarial views.

- `reconstruction_loss`: mean squared error between f_de(f_en(x)) and x.
- `contrastive_loss` (L_con): InfoNCE on cosine similarities of pooled encoder latents. Anchor f_en(x_adv_i),
  positive f_en(x_i), negatives the clean latents of samples of *other classes* in the batch (the paper pulls
  clean and adversarial views together and pushes classes apart), or of every other sample when no labels are
  given (the label-free option). The positive is in the denominator; tau = 0.5 is the kit's default.
- `fgsm_rs`: FGSM with a random start inside the ball and a 1.25 * eps step (FGSM-RS, Wong et al. 2020), which
  avoids the catastrophic overfitting of plain FGSM. It maximises any loss of the input; CRoPD uses L_con
  through the encoder only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def reconstruction_loss(reconstruction: Tensor, x: Tensor) -> Tensor:
    return F.mse_loss(reconstruction, x)


def contrastive_loss(z_adv: Tensor, z: Tensor, labels: Tensor | None = None, tau: float = 0.5) -> Tensor:
    """L_con: -log( exp(s_ii / tau) / (exp(s_ii / tau) + sum_{j in negatives(i)} exp(s_ij / tau)) ), averaged.

    `s_ij` is the cosine similarity of `z_adv[i]` and `z[j]`. With `labels`, negatives(i) are the samples of
    other classes; without, every j != i.
    """
    if z_adv.shape != z.shape or z.ndim != 2:
        raise ValueError(f"expected two (N, D) latent batches, got {tuple(z_adv.shape)} and {tuple(z.shape)}")
    similarity = F.normalize(z_adv, dim=1) @ F.normalize(z, dim=1).T / tau
    same = torch.eye(len(z), dtype=torch.bool, device=z.device)
    negatives = ~same if labels is None else labels[:, None] != labels[None, :]
    logits = similarity.masked_fill(~(negatives | same), float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(z), device=z.device))


def fgsm_rs(loss_of_input: Callable[[Tensor], Tensor], x: Tensor, eps: float, step_factor: float = 1.25,
            generator: torch.Generator | None = None) -> Tensor:
    """One FGSM step from a uniform random start in the L-inf ball, maximising `loss_of_input`; in [0, 1].

    Only the input's gradient is taken (`torch.autograd.grad`), so no parameter gradient is accumulated.
    """
    if eps == 0:
        return x.detach()
    noise = torch.rand(x.shape, generator=generator, device="cpu" if generator is not None else x.device)
    delta = (noise.to(x.device) * 2 - 1) * eps
    start = (x + delta).clamp(0, 1).detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_of_input(start), start)
    delta = (start.detach() - x + step_factor * eps * grad.sign()).clamp(-eps, eps)
    return (x + delta).clamp(0, 1).detach()
