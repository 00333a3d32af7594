"""Losses of the adversarial contrastive learning family (docs/methods.md section 2).

- `nt_xent`: SimCLR's NT-Xent over the 2N views of a batch (the positive of view i is its other view; the other
  2N - 2 views are negatives), tau = 0.5.
- `acl_loss`: `((1 - w) L_nat + (1 + w) L_adv) / 2`; w = 0 is ACL, w = (2/3)(1 - s) is DynACL (`dynacl_weight`).
- `air_objective`: AIR's total as its code has it (`AIR.py`, `AIR_Loss.forward`, the returned loss):
  `(1 - w) L_nat + (1 + w) L_adv + lambda1 SIR + lambda2 AIR`, the contrastive part *not* halved, i.e. twice
  `acl_loss` (the paper's lambda1 = lambda2 = 0.5 thus weigh twice as much against it as against `acl_loss`).
- `sir`, `air`: AIR's regularisers. p(y^R | x) is a softmax *across the batch* of matched-pair cosine
  similarities over tau; SIR compares p(x_i) and p(x_j) between two augmentations i and j of the batch, AIR the
  product `softmax(sim(z_i_adv, z_o)) * softmax(sim(z_i_adv, z_i))`. Two forms (`AIR_FORMS`):
  "published" (the default) is what AIR.py computes, `F.kl_div(p_i, log p_j, log_target=True, reduction="sum")`
  = sum p_j (log p_j - p_i): probabilities where log-probabilities belong, mostly p_j's negative entropy rather
  than a divergence, and the product left unnormalised; "kl" is the paper's formula, the true KL(p_i || p_j) of
  normalised distributions (the product renormalised: a kit choice).
- `representational_divergence`: RCS's RD, KL(normalise(h_adv) || normalise(h)) row by row, with row-wise
  min-max normalisation (CIFAR in the paper) or softmax (ImageNet). Kit choice: each min-max row is rescaled to
  sum to 1 and the KL is summed per row, then averaged over rows (a true KL); the official `kl_loss` (RCS.py)
  feeds the min-max rows (maximum 1, not distributions) to `nn.KLDivLoss(reduction='mean')`, a mean over entries.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

AIRForm = Literal["published", "kl"]
AIR_FORMS: tuple[str, ...] = get_args(AIRForm)


def nt_xent(z1: Tensor, z2: Tensor, tau: float = 0.5) -> Tensor:
    """NT-Xent of the pairs (z1[i], z2[i]) against every other view of the batch, averaged over the 2N views."""
    if z1.shape != z2.shape or z1.ndim != 2 or len(z1) < 2:
        raise ValueError(f"expected two (N, D) batches with N >= 2, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    similarity = (z @ z.T / tau).fill_diagonal_(float("-inf"))
    n = len(z1)
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(similarity, positives)


def dynacl_weight(strength: float) -> float:
    """DynACL's weight on the adversarial term at augmentation strength s: w = (2/3)(1 - s)."""
    return 2 / 3 * (1 - strength)


def acl_loss(natural: Tensor, adversarial: Tensor, weight: float = 0.0) -> Tensor:
    """`((1 - w) * natural + (1 + w) * adversarial) / 2`: ACL at w = 0, DynACL at `dynacl_weight(s)`."""
    return ((1 - weight) * natural + (1 + weight) * adversarial) / 2


def air_objective(natural: Tensor, adversarial: Tensor, weight: float, standard: Tensor, invariant: Tensor,
                  lambda1: float = 0.5, lambda2: float = 0.5) -> Tensor:
    """AIR's training loss as in its official code: `(1-w) L_nat + (1+w) L_adv + lambda1 SIR + lambda2 AIR`."""
    return 2 * acl_loss(natural, adversarial, weight) + lambda1 * standard + lambda2 * invariant


def _log_pair_distribution(a: Tensor, b: Tensor, tau: float) -> Tensor:
    """log softmax across the batch of cos(a[k], b[k]) / tau: AIR's log p(y^R | x) over the N samples."""
    return F.log_softmax(F.cosine_similarity(a, b, dim=1) / tau, dim=0)


def kl_divergence(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p || q) = sum p (log p - log q) of two distributions given as log-probabilities (last dimension)."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


def _divergence(log_p: Tensor, log_q: Tensor, form: AIRForm) -> Tensor:
    """AIR's comparison of p (view i) and q (view j), given as log-probabilities: KL(p || q) for "kl"; for
    "published", AIR.py's `F.kl_div(p, log q, log_target=True, reduction="sum")` = sum q (log q - p)."""
    if form == "kl":
        return kl_divergence(log_p, log_q)
    if form != "published":
        raise ValueError(f"Unknown AIR form {form!r}; choose one of {AIR_FORMS}")
    return (log_q.exp() * (log_q - log_p.exp())).sum(dim=-1)


def sir(z_i: Tensor, z_j: Tensor, z_o: Tensor, tau: float = 0.5, form: AIRForm = "published") -> Tensor:
    """Standard invariant regularisation between p(y^R | x_i) and p(y^R | x_j), p against the un-augmented `z_o`."""
    return _divergence(_log_pair_distribution(z_i, z_o, tau), _log_pair_distribution(z_j, z_o, tau), form)


def air(adv_i: Tensor, adv_j: Tensor, z_i: Tensor, z_j: Tensor, z_o: Tensor, tau: float = 0.5,
        form: AIRForm = "published") -> Tensor:
    """Adversarial invariant regularisation between augmentations i and j of the product
    p(y^R | x_adv, z_o) * p(y^R | x_adv, x_nat) (renormalised for the true KL, as published otherwise)."""
    def log_q(adv: Tensor, natural: Tensor) -> Tensor:
        product = _log_pair_distribution(adv, z_o, tau) + _log_pair_distribution(adv, natural, tau)
        return F.log_softmax(product, dim=0) if form == "kl" else product

    return _divergence(log_q(adv_i, z_i), log_q(adv_j, z_j), form)


def _log_normalise(h: Tensor, mode: Literal["minmax", "softmax"]) -> Tensor:
    if mode == "softmax":
        return F.log_softmax(h, dim=1)
    if mode != "minmax":
        raise ValueError(f"Unknown normalisation {mode!r}; choose 'minmax' or 'softmax'")
    low, high = h.min(dim=1, keepdim=True).values, h.max(dim=1, keepdim=True).values
    scaled = (h - low) / (high - low).clamp_min(1e-12)
    # Kit choice: a floor of 1e-8 before taking logs, so a zero entry of the second argument stays finite.
    return (scaled / scaled.sum(dim=1, keepdim=True)).clamp_min(1e-8).log()


def representational_divergence(h_adv: Tensor, h: Tensor, normalise: Literal["minmax", "softmax"] = "minmax") -> Tensor:
    """RCS's RD: mean over rows of KL(normalise(h_adv) || normalise(h))."""
    if h_adv.shape != h.shape or h.ndim != 2:
        raise ValueError(f"expected two (N, D) batches, got {tuple(h_adv.shape)} and {tuple(h.shape)}")
    return kl_divergence(_log_normalise(h_adv, normalise), _log_normalise(h, normalise)).mean()
