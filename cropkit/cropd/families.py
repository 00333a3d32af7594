"""A family of pre-processors measured for the bound: each trained (or loaded from the cache), given an SLF head on
the frozen foundation model and measured by `cropkit.cropd.bound.bound_terms` on the same held-out images
(notebook 01 measures its fit family and its test family this way)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from cropkit.cropd.bound import BoundTerms, bound_terms
from cropkit.cropd.config import PreprocessorConfig
from cropkit.cropd.train import train_preprocessor
from cropkit.data import ImageData
from cropkit.eval.protocols import fit_slf


def family_terms(configs: Sequence[PreprocessorConfig], foundation: nn.Module, train: ImageData, held_out: ImageData,
                 eps: float, **settings: object) -> list[BoundTerms]:
    """The bound's terms at radius `eps` of each pre-processor in `configs`, in order; `settings` go to
    `bound_terms` (attack steps, restarts, seed). A model trained at another radius is named with it."""
    device = next(foundation.parameters()).device
    family = []
    for config in configs:
        trained = train_preprocessor(config)
        pipeline = fit_slf(trained.model, foundation, train, device=device)
        name = f"{config.name}, {config.epochs} ep" + ("" if config.eps == eps else f", trained at eps {config.eps:g}")
        family.append(bound_terms(pipeline, held_out, eps, name=name, tau=config.tau,
                                  label_negatives=not config.label_free, **settings))
        shown = family[-1].summary()
        print(f"{shown['model']}: gap {shown['gap']:.3f}, L_con (PGD) {shown['L_con (PGD)']:.3f} of which clean "
              f"{shown['L_con clean']:.3f}, increase {shown['increase (PGD)']:.3f}")
    return family


__all__ = ["family_terms"]
