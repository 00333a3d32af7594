"""The attacked object: pre-processor -> frozen foundation model -> head, one module from [0, 1] pixels to logits.

Robustness is only measured on this whole pipeline, white-box, end to end (METHOD.md section 4). Nothing in
its forward stops gradients; frozen parts are frozen by `requires_grad_(False)` and `eval()`, and a pipeline
starts in eval mode: it is built to be attacked and evaluated, and only its head is ever trained.
"""

from __future__ import annotations

from torch import Tensor, nn

from cropkit.models.foundation import check_images


class Pipeline(nn.Module):
    """`head(foundation(preprocessor(x)))` for images `x` in [0, 1]; `preprocessor=None` means Identity."""

    def __init__(self, preprocessor: nn.Module | None, foundation: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.preprocessor = preprocessor if preprocessor is not None else nn.Identity()
        self.foundation = foundation
        self.head = head
        self.eval()

    def features(self, x: Tensor) -> Tensor:
        """The foundation model's pooled features of the pre-processed images (what the head sees)."""
        check_images(x)
        return self.foundation(self.preprocessor(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))
