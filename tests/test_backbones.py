"""Any Hugging Face vision backbone plugs in as the frozen foundation model (ViT, DINOv2, ConvNeXt here, each a
tiny model built from its config and saved to a folder, as a hub checkpoint would be), and the refactor that gave
every foundation model one input path left the embedded ViT-MAE's features bit-identical."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    ConvNextConfig,
    ConvNextImageProcessor,
    ConvNextModel,
    Dinov2Config,
    Dinov2Model,
    ViTConfig,
    ViTImageProcessor,
    ViTModel,
)

from cropkit.core.validate import InputError
from cropkit.foundation import Pipeline, load_foundation
from cropkit.foundation.backbone import HubBackbone
from cropkit.foundation.heads import LinearHead

MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


def _vit(pooler: bool = True) -> torch.nn.Module:
    return ViTModel(ViTConfig(image_size=28, patch_size=7, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                              intermediate_size=64), add_pooling_layer=pooler)


BUILDERS = {
    "vit": (_vit, lambda: ViTImageProcessor(size={"height": 28, "width": 28}, image_mean=MEAN, image_std=STD), 32),
    "dinov2": (lambda: Dinov2Model(Dinov2Config(image_size=28, patch_size=7, hidden_size=24, num_hidden_layers=1,
                                                num_attention_heads=2, mlp_ratio=2)),
               lambda: ViTImageProcessor(size={"height": 28, "width": 28}, image_mean=MEAN, image_std=STD), 24),
    "convnext": (lambda: ConvNextModel(ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1])),
                 lambda: ConvNextImageProcessor(size={"shortest_edge": 32}, image_mean=MEAN, image_std=STD), 16),
}


def _save(folder, model, processor):
    torch.manual_seed(0)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def backbone(request, tmp_path_factory):
    build, processor, width = BUILDERS[request.param]
    torch.manual_seed(0)
    folder = _save(tmp_path_factory.mktemp(request.param), build(), processor())
    return load_foundation(folder), width


def test_a_backbone_from_a_folder_is_a_frozen_differentiable_feature_extractor(backbone, mnist):
    model, width = backbone
    assert isinstance(model, HubBackbone) and model.feature_dim == width
    assert not any(p.requires_grad for p in model.parameters()) and not model.train().training
    x = mnist[1].take(4).tensors()[0].requires_grad_(True)  # grey-scale 28x28: repeated to RGB, resized inside
    features = model(x)
    assert features.shape == (4, width) and torch.equal(features, model(x))
    (gradient,) = torch.autograd.grad(features.sum(), x)
    assert torch.isfinite(gradient).all() and gradient.abs().sum() > 0  # attacks reach the pixels
    logits = Pipeline(None, model, LinearHead(width, 10))(x)
    assert logits.shape == (4, 10)


def test_missing_weights_are_refused_unless_only_the_unused_pooler_is_missing(tmp_path):
    folder = _save(tmp_path, _vit(pooler=False), BUILDERS["vit"][1]())
    with pytest.raises(InputError, match=r"pooler"):
        load_foundation(folder)
    assert load_foundation(folder, pooling="cls").pooling == "cls"


def test_a_cls_token_is_refused_for_a_model_of_feature_maps(tmp_path, mnist):
    build, processor, _ = BUILDERS["convnext"]
    model = load_foundation(_save(tmp_path, build(), processor()), pooling="cls")
    with pytest.raises(InputError, match="feature maps"):
        model(mnist[1].take(2).tensors()[0])
