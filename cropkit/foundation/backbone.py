"""Any Hugging Face vision backbone as a frozen foundation model: ViT, DINOv2, ConvNeXt, Swin, ... — whatever
`transformers.AutoModel` loads and whose output has a pooled vector (`pooler_output`) or a CLS token.

The pipeline needs images in and features out, nothing else: `HubBackbone` puts the model's own image processor
(its mean, standard deviation and resolution) inside the module, in torch, so attacks differentiate through the
whole thing from [0, 1] pixels. `load_foundation` picks it for every checkpoint that is not a ViT-MAE.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from torch import Tensor, nn
from transformers import AutoImageProcessor, AutoModel

from cropkit.core.validate import choice, require
from cropkit.foundation.model import FrozenImageEncoder, pretrained_source, quiet_transformers

BackbonePooling = Literal["pooler", "cls"]


def processor_size(processor: Any) -> int:
    """The square resolution an image processor feeds its model: its crop when it crops, else its size (height,
    or the shortest edge); transformers gives sizes as dicts or as `SizeDict`s."""
    size = processor.crop_size if getattr(processor, "do_center_crop", False) else processor.size
    if isinstance(size, int):
        return size
    get = size.get if isinstance(size, dict) else lambda key: getattr(size, key, None)
    return int(get("height") or get("shortest_edge"))


def feature_width(config: Any) -> int:
    """The width of a backbone's pooled output: `hidden_size`, or the last stage's for hierarchical models."""
    sizes = getattr(config, "hidden_sizes", None)
    return int(sizes[-1]) if sizes else int(config.hidden_size)


class HubBackbone(FrozenImageEncoder):
    """A frozen transformers vision backbone: [0, 1] images in, its pooled output (or CLS token) out."""

    def __init__(self, model: nn.Module, image_mean: list[float], image_std: list[float], image_size: int,
                 pooling: BackbonePooling = "pooler", name: str = "backbone") -> None:
        choice(("pooler", "cls"), "pooling")("pooling", pooling)
        config = model.config
        super().__init__(image_mean, image_std, image_size=image_size, num_channels=config.num_channels,
                         feature_dim=feature_width(config), name=name)
        self.model = model.requires_grad_(False).eval()
        self.pooling = pooling

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike[str], pooling: BackbonePooling = "pooler",
                        **kwargs: object) -> HubBackbone:
        """Load a backbone (hub id or `save_pretrained` folder) with its image processor, and freeze it. Weights the
        checkpoint lacks are refused (a randomly initialised layer would pass for a trained one), except an unused
        pooler when `pooling="cls"`."""
        with quiet_transformers(), pretrained_source(name_or_path):
            model, info = AutoModel.from_pretrained(name_or_path, output_loading_info=True, **kwargs)
            processor = AutoImageProcessor.from_pretrained(name_or_path)
        missing = [k for k in info["missing_keys"] if not (pooling == "cls" and k.startswith("pooler."))]
        require(not missing and not info["mismatched_keys"], "name_or_path", os.fspath(name_or_path),
                f"does not hold every weight of its {type(model).__name__}: missing {sorted(missing)[:5]}",
                "load a complete checkpoint, or pass pooling='cls' when only the pooler is missing")
        return cls(model, list(processor.image_mean), list(processor.image_std), processor_size(processor), pooling,
                   name=os.fspath(name_or_path))

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(pixel_values=self.pixels(x).to(self.model.dtype))
        pooled = getattr(out, "pooler_output", None) if self.pooling == "pooler" else None
        if pooled is None:
            hidden = out.last_hidden_state
            require(hidden.ndim == 3, "pooling", self.pooling, f"{type(self.model).__name__} returns feature maps, "
                    "not a token sequence with a CLS token", "use pooling='pooler'")
            pooled = hidden[:, 0]
        return pooled.flatten(1).float()
