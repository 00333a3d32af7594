"""CRoPD's training losses: reconstruction and the adversarial contrastive loss L_con.

- `reconstruction_loss`: mean squared error between f_de(f_en(x)) and x.
- `contrastive_loss` (L_con): InfoNCE on cosine similarities of pooled encoder latents. Anchor f_en(x_adv_i),
  positive f_en(x_i), negatives the clean latents of samples of *other classes* in the batch (the paper pulls
  clean and adversarial views together and pushes classes apart), or of every other sample when no labels are
  given (the label-free option). The positive is in the denominator; tau = 0.5 is the kit's default.
- The adversarial view is `cropkit.eval.ascent.fgsm_rs` on L_con through the encoder only; the bound
  (`cropkit.cropd.bound`) measures L_con under more steps of the same ascent.
- `contrastive_terms`: the one way the kit *measures* L_con (training monitor, notebooks, the bound): per example,
  under attack and clean, in fixed batches of `L_CON_BATCH`. InfoNCE's value depends on the batch size (its
  floor, reached by a perfectly invariant encoder, is about log(1 + negatives * exp(-1/tau))), so values are only
  comparable at one batch size; the clean term (each latent against itself) has that floor, and the adversarial
  increase `adversarial - clean` does not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from cropkit.eval.ascent import linf_ascent


def reconstruction_loss(reconstruction: Tensor, x: Tensor) -> Tensor:
    return F.mse_loss(reconstruction, x)


def contrastive_loss(z_adv: Tensor, z: Tensor, labels: Tensor | None = None, tau: float = 0.5,
                     reduction: Literal["mean", "none"] = "mean", first: int | None = None) -> Tensor:
    """L_con: -log( exp(s_ii / tau) / (exp(s_ii / tau) + sum_{j in negatives(i)} exp(s_ij / tau)) ), averaged.

    `s_ij` is the cosine similarity of `z_adv[i]` and `z[j]`. With `labels` (those of `z`), negatives(i) are the
    samples of other classes; without, every j != i. `reduction="none"` gives each anchor's term. With `first`,
    the anchors are a slice of the batch (a data-parallel rank's shard): `z_adv[i]` is the view of `z[first + i]`.
    """
    if z.ndim != 2 or (z_adv.shape != z.shape if first is None else
                       z_adv.ndim != 2 or z_adv.shape[1] != z.shape[1] or not 0 <= first <= len(z) - len(z_adv)):
        raise ValueError(f"expected two (N, D) latent batches, got {tuple(z_adv.shape)} and {tuple(z.shape)}"
                         + ("" if first is None else f" with anchors from row {first}"))
    anchors = torch.arange(len(z_adv), device=z.device) + (first or 0)
    similarity = F.normalize(z_adv, dim=1) @ F.normalize(z, dim=1).T / tau
    same = anchors[:, None] == torch.arange(len(z), device=z.device)[None, :]
    negatives = ~same if labels is None else labels[anchors, None] != labels[None, :]
    logits = similarity.masked_fill(~(negatives | same), float("-inf"))
    return F.cross_entropy(logits, anchors, reduction=reduction)


# The batch size at which the kit measures L_con everywhere (training's default batch, so the monitored values
# are on the scale of the training loss).
L_CON_BATCH = 128
# Mean cosine between different images' pooled latents (`bound.latent_similarity`) at which an encoder has
# collapsed: every image maps to about one direction and L_con sits at log(1 + negatives) whatever the input.
COLLAPSED = 0.95


def contrastive_terms(encoder: Callable[[Tensor], Tensor], images: Tensor, labels: Tensor | None, eps: float, *,
                      tau: float = 0.5, steps: int = 1, step: float | None = None, batch_size: int = L_CON_BATCH,
                      seed: int = 0, restarts: int = 1) -> tuple[Tensor, Tensor]:
    """Per-example L_con of `encoder` on `images`, (under attack, clean), measured in batches of exactly `batch_size`.

    The attack maximises each batch's L_con by `linf_ascent` (`steps=1`: FGSM-RS, the training attack; more: PGD
    with `step`, default 2.5 * eps / steps), `restarts` times from new random starts on the same batch, keeping each
    anchor's worst (an anchor's term depends only on its own view: the negatives are clean latents); negatives are
    the batch's clean latents of other classes (all others when `labels` is None). The clean term scores each clean
    latent against itself. The examples are batched in a seeded random order; when `batch_size` does not divide
    their number, the last batch is the last `batch_size` examples of that order and scores only those not yet
    scored, so every term is measured at the same batch size. Returned on the CPU, in the order of `images`.
    """
    n = len(images)
    if n < batch_size:
        raise ValueError(f"L_con is measured in batches of {batch_size} (its value depends on the batch size); got "
                         f"{n} images: pass at least {batch_size}")
    device = images.device
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    generator = torch.Generator().manual_seed(seed)
    step = step if step is not None or steps == 1 else 2.5 * eps / steps
    adversarial, clean = torch.empty(n), torch.empty(n)
    for start in range(0, n, batch_size):
        first = min(start, n - batch_size)
        index = order[first:first + batch_size].to(device)
        x = images[index]
        y = labels[index] if labels is not None else None
        with torch.no_grad():
            z = encoder(x)
        worst = None
        for _ in range(restarts):  # each restart draws a new random start from the same generator
            x_adv = linf_ascent(lambda v: contrastive_loss(encoder(v), z, y, tau), x, eps, steps=steps, step=step,
                                generator=generator)
            with torch.inference_mode():
                terms = contrastive_loss(encoder(x_adv), z, y, tau, reduction="none")
            worst = terms if worst is None else torch.maximum(worst, terms)
        with torch.inference_mode():
            new = slice(start - first, batch_size)
            adversarial[index[new].cpu()] = worst[new].cpu()
            clean[index[new].cpu()] = contrastive_loss(z, z, y, tau, reduction="none")[new].cpu()
    return adversarial, clean
