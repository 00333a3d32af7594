"""CLIP for the zero-shot setting of TeCoA and PMG-AFT: the image tower as a frozen foundation model, and a
zero-shot head built from class-name prompts ("This is a photo of a {}").

The head is a fixed linear map (normalised text embeddings times CLIP's logit scale), so `Pipeline(None,
encoder, head)` is attacked, evaluated and fine-tuned like every other pipeline in the kit, and a robustly
fine-tuned image tower is evaluated zero-shot on another dataset by building that dataset's head.
`load_clip("openai/clip-vit-base-patch32")` downloads; any folder written by `save_pretrained` (model,
tokenizer, image processor) loads offline — the tests use a tiny randomly initialised one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel, PreTrainedTokenizerBase

from cropkit.foundation.model import FrozenImageEncoder, pretrained_source
from cropkit.foundation.pipeline import Pipeline

TEMPLATE = "This is a photo of a {}"


class ClipImageEncoder(FrozenImageEncoder):
    """CLIP's frozen image tower and projection: [0, 1] images in, unit-norm embeddings out (grey-scale repeated to
    RGB, resized bicubically and normalised inside, so attacks work in pixel space)."""

    def __init__(self, clip: CLIPModel, image_mean: Sequence[float], image_std: Sequence[float],
                 name: str = "clip") -> None:
        super().__init__(image_mean, image_std, image_size=clip.config.vision_config.image_size, num_channels=3,
                         feature_dim=clip.config.projection_dim, name=name, resize="bicubic")
        self.vision = clip.vision_model
        self.projection = clip.visual_projection
        self.requires_grad_(False).eval()

    def last_blocks(self, n: int) -> list[nn.Module]:
        """The last `n` transformer layers and what follows them (final norm, projection)."""
        layers = self.vision.encoder.layers
        if not 1 <= n <= len(layers):
            raise ValueError(f"last_blocks must be between 1 and {len(layers)} for this model, got {n}")
        return [*layers[-n:], self.vision.post_layernorm, self.projection]

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.vision(pixel_values=self.pixels(x)).pooler_output
        return F.normalize(self.projection(pooled), dim=-1)


class ZeroShotHead(nn.Module):
    """`logit_scale * <image embedding, text embedding of class c>`: CLIP's zero-shot classifier, kept fixed."""

    def __init__(self, text_embeddings: Tensor, logit_scale: float, class_names: Sequence[str]) -> None:
        super().__init__()
        self.register_buffer("text", F.normalize(text_embeddings.detach().float(), dim=-1))
        self.logit_scale = float(logit_scale)
        self.class_names = list(class_names)

    def forward(self, features: Tensor) -> Tensor:
        return self.logit_scale * self.cosine(features)

    def cosine(self, features: Tensor) -> Tensor:
        """The cosine between each image embedding and each class's text embedding (the logits / logit_scale)."""
        return F.normalize(features, dim=-1) @ self.text.T


@dataclass
class ZeroShotClip:
    """A CLIP checkpoint split into what the kit attacks (the image encoder) and what builds heads (text tower)."""

    encoder: ClipImageEncoder
    model: CLIPModel
    tokenizer: PreTrainedTokenizerBase

    @torch.no_grad()
    def head(self, class_names: Sequence[str], template: str = TEMPLATE) -> ZeroShotHead:
        """The zero-shot head for `class_names`, one prompt per class."""
        if "{}" not in template:
            raise ValueError(f"the prompt template needs a '{{}}' for the class name, got {template!r}")
        tokens = self.tokenizer([template.format(c) for c in class_names], padding=True, return_tensors="pt")
        text = self.model.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        embeddings = self.model.text_projection(text.pooler_output)
        return ZeroShotHead(embeddings, self.model.logit_scale.exp().item(), class_names)

    def pipeline(self, class_names: Sequence[str], template: str = TEMPLATE) -> Pipeline:
        """Image encoder + zero-shot head for `class_names`: a classifier with no training at all."""
        return Pipeline(None, self.encoder, self.head(class_names, template))


def load_clip(name_or_path: str | os.PathLike[str] = "openai/clip-vit-base-patch32") -> ZeroShotClip:
    """Load a CLIP checkpoint (hub id or local folder with model, tokenizer and image processor), frozen."""
    with pretrained_source(name_or_path):
        model = CLIPModel.from_pretrained(name_or_path).requires_grad_(False).eval()
        processor = AutoImageProcessor.from_pretrained(name_or_path)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    encoder = ClipImageEncoder(model, processor.image_mean, processor.image_std, name=str(name_or_path))
    return ZeroShotClip(encoder, model, tokenizer)
