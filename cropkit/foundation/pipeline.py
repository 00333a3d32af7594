"""The attacked object: pre-processor -> frozen foundation model -> head, one module from [0, 1] pixels to logits.

Robustness is only measured on this whole pipeline, white-box, end to end (docs/methods.md section 4). Nothing in
its forward stops gradients; frozen parts are frozen by `requires_grad_(False)` and `eval()`, and a pipeline
starts in eval mode: it is built to be attacked and evaluated, and only its head is ever trained. Its parts are
checked when it is built (modules; a linear head as wide as the foundation model's features) and its input on
every eager forward (finite pixels in [0, 1]: images in [0, 255] would otherwise be classified as they are).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cropkit.core.validate import Summary, pixels, require
from cropkit.foundation.model import check_images


class Pipeline(nn.Module):
    """`head(foundation(preprocessor(x)))` for images `x` in [0, 1]; `preprocessor=None` means Identity."""

    def __init__(self, preprocessor: nn.Module | None, foundation: nn.Module, head: nn.Module) -> None:
        for name, part in (("preprocessor", preprocessor), ("foundation", foundation), ("head", head)):
            require(isinstance(part, nn.Module) or (name == "preprocessor" and part is None), name, part,
                    "not a torch module", "pass a module" + (" (load_foundation(...) builds a foundation model from "
                    "its name)" if name == "foundation" else ""))
        features, expected = getattr(foundation, "feature_dim", None), _input_width(head)
        require(features is None or expected is None or features == expected, "head",
                Summary(f"{type(head).__name__} taking {expected} features"),
                f"takes {expected} features but the foundation model gives {features}",
                "fit the head on this foundation model's features (cropkit.eval.protocols.fit_slf)")
        super().__init__()
        self.preprocessor = preprocessor if preprocessor is not None else nn.Identity()
        self.foundation = foundation
        self.head = head
        self.eval()

    def features(self, x: Tensor) -> Tensor:
        """The foundation model's pooled features of the pre-processed images (what the head sees)."""
        check_images(x)
        if not torch.compiler.is_compiling():  # one host sync per eager forward; left out of compiled graphs
            pixels("x", x)
        return self.foundation(self.preprocessor(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def _input_width(head: nn.Module) -> int | None:
    """The number of features a linear head (or a module whose first layer is linear) takes, if it says."""
    linear = head if isinstance(head, nn.Linear) else getattr(head, "linear", None)
    return linear.in_features if isinstance(linear, nn.Linear) else None
