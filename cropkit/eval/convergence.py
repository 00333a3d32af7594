"""Did a trained model converge? One rule for every notebook: a model that did not is flagged, and left out of the
comparisons (a baseline that did not converge is not a baseline).

`training_fit(pipeline, trained_on, start=...)` measures the finished model on the images it was trained on:
- its mean clean cross-entropy against log K, the loss of the uniform predictor (a zero head). Every objective the
  kit trains a classifier with (clean CE, adversarial CE, TRADES, TeCoA, PMG-AFT) is at most its CE part plus
  terms that are zero for a constant prediction, so the uniform predictor is always within reach: a model that ends
  above it fits its own training images worse than knowing nothing, and its training has diverged or stalled;
- with `start` (the model it was trained from, e.g. the SLF pipeline an ALF head or an AFF run starts from),
  whether training changed any prediction at all: a run that changed none did not train, and its results are its
  start's under another name.
The result goes into every evaluation record of the model (`training`); `not_converged` reads it back, and
`cropkit.runs.verdicts.verdict` refuses to compare a model that did not converge. SLF heads are not checked: the
optimum of their convex, L2-regularised fit is at most the zero head's loss.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch.nn.functional as F
from torch import nn

from cropkit.data import ImageData
from cropkit.foundation.heads import extract_features

Record = dict[str, Any]


def training_fit(pipeline: nn.Module, trained_on: ImageData, *, start: nn.Module | None = None,
                 batch_size: int = 256) -> dict[str, Any]:
    """The convergence check of `pipeline` on `trained_on` (module docstring): a JSON-able dict with `converged`,
    `why` (empty when converged), the clean cross-entropy, log K, the training images' count and, with `start`, the
    fraction of their predictions that training changed."""
    images, labels = trained_on.tensors()
    logits = extract_features(pipeline, images, batch_size=batch_size, desc="convergence check")
    ce, chance = float(F.cross_entropy(logits.double(), labels)), math.log(trained_on.num_classes)
    fit: dict[str, Any] = {"clean_ce": ce, "chance_ce": chance, "n_trained_on": len(labels)}
    reasons = []
    if not ce <= chance:  # a NaN loss fails too
        reasons.append(f"its clean cross-entropy on its {len(labels)} training images is {ce:.3g}, above the "
                       f"uniform predictor's log {trained_on.num_classes} = {chance:.3g}")
    if start is not None:
        before = extract_features(start, images, batch_size=batch_size, desc="convergence check")
        changed = float((before.argmax(1) != logits.argmax(1)).float().mean())
        fit["predictions_changed"] = changed
        if changed == 0:
            reasons.append(f"training changed none of its start's predictions on its {len(labels)} training images")
    return fit | {"converged": not reasons, "why": "; ".join(reasons)}


def not_converged(records: Iterable[Record]) -> list[Record]:
    """The records whose model was checked and did not converge (records without a check count as converged)."""
    return [r for r in records if not r.get("training", {}).get("converged", True)]


__all__ = ["not_converged", "training_fit"]
