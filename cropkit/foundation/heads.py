"""Linear heads on frozen features: extract the features once, then fit the head on the cached tensor.

The frozen stack (pre-processor + foundation model) runs once over the data under `inference_mode`; the head
is then fitted on the cached features, so fitting costs nothing like a pass through the foundation model per
epoch. The fit is full-batch L-BFGS on the L2-regularised cross-entropy, a convex problem, so it converges to
the same optimum whatever the seed; the regularisation strength is chosen on held-out training data.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cropkit.core import precision
from cropkit.core.progress import bar as progress_bar


class LinearHead(nn.Module):
    """Standardise features with fixed training-set statistics, then one linear layer (an affine map overall)."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("shift", torch.zeros(in_features))
        self.register_buffer("scale", torch.ones(in_features))
        self.linear = nn.Linear(in_features, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        return self.linear((features.flatten(1) - self.shift) / self.scale)

    def cosine(self, features: Tensor) -> Tensor:
        """The cosine between the standardised features and each class's weight row (the bias left out): what a
        CLIP zero-shot head computes between image and text embeddings, for this head's class vectors."""
        standardised = (features.flatten(1) - self.shift) / self.scale
        return F.normalize(standardised, dim=-1) @ F.normalize(self.linear.weight, dim=-1).T


class CosineHead(nn.Module):
    """`scale` times a head's cosine logits (`head.cosine`) as the classifier: how CLIP classifies, and what TeCoA's
    (scale 100) and PMG-AFT's (scale 1) code train, attack and evaluate on (`cropkit.finetune.robust`). The wrapped head
    is kept, frozen, for its class vectors."""

    def __init__(self, head: nn.Module, scale: float = 1.0) -> None:
        super().__init__()
        if not callable(getattr(head, "cosine", None)):
            raise TypeError(f"{type(head).__name__} has no cosine(features): use a LinearHead or CLIP's ZeroShotHead")
        self.head, self.scale = head, float(scale)

    def forward(self, features: Tensor) -> Tensor:
        return self.scale * self.head.cosine(features)


@torch.inference_mode()
def extract_features(
    model: nn.Module, images: Tensor, *, batch_size: int = 256, device: torch.device | str | None = None,
    desc: str = "features",
) -> Tensor:
    """Run a frozen `model` over `images` in batches and return its outputs on the CPU (fp32).

    The model runs under `precision.autocast` (bf16 on CUDA), as in `evaluate`, so a head is fitted on the same
    features that `evaluate` will score it on.
    """
    device = torch.device(device) if device is not None else next(model.parameters(), torch.empty(0)).device
    model.eval()
    with precision.autocast(device):
        chunks = [model(batch.to(device)).float().cpu()
                  for batch in progress_bar(images.split(batch_size), desc=desc, leave=False)]
    return torch.cat(chunks)


WEIGHT_DECAYS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def _fit(features: Tensor, labels: Tensor, num_classes: int, weight_decay: float, max_iter: int) -> LinearHead:
    head = LinearHead(features.shape[1], num_classes)
    head.shift.copy_(features.mean(dim=0))
    head.scale.copy_(features.std(dim=0).clamp_min(1e-6))
    nn.init.zeros_(head.linear.weight)
    nn.init.zeros_(head.linear.bias)
    optimizer = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(head(features), labels) + 0.5 * weight_decay * head.linear.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return head.requires_grad_(False).eval()


def train_linear_head(
    features: Tensor, labels: Tensor, num_classes: int, *,
    weight_decay: float | Sequence[float] = WEIGHT_DECAYS, val_fraction: float = 0.2, seed: int = 0,
    max_iter: int = 500,
) -> LinearHead:
    """Fit a `LinearHead` by full-batch L-BFGS on cross-entropy + weight_decay * ||W||^2 / 2.

    Given several weight decays, pick the one with the best accuracy on a held-out `val_fraction` of the
    training data, then refit on all of it; the test split is never looked at. The choice and the validation
    accuracies are kept on the head (`head.weight_decay`, `head.validation`).
    """
    features = features.flatten(1).float()
    candidates = [weight_decay] if isinstance(weight_decay, (int, float)) else list(weight_decay)
    validation: dict[float, float] = {}
    if len(candidates) > 1:
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
        n_val = int(len(labels) * val_fraction)
        val, fit = order[:n_val], order[n_val:]
        for wd in candidates:
            head = _fit(features[fit], labels[fit], num_classes, wd, max_iter)
            validation[wd] = accuracy(head, features[val], labels[val])
    chosen = max(validation, key=validation.__getitem__) if validation else candidates[0]
    head = _fit(features, labels, num_classes, chosen, max_iter)
    head.weight_decay, head.validation = chosen, validation
    return head


@torch.inference_mode()
def accuracy(model: nn.Module, inputs: Tensor, labels: Tensor, batch_size: int = 1024) -> float:
    """Top-1 accuracy of `model` on `inputs` (images or features), in batches."""
    model.eval()
    correct = sum(int((model(x).argmax(dim=1) == y).sum()) for x, y in zip(inputs.split(batch_size), labels.split(batch_size)))
    return correct / len(labels)
