"""The frozen foundation model, its from-scratch pre-training, and the pipeline the attacks see."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import pytest
import torch
from transformers import ViTImageProcessor

from cropkit.core import checkpoint
from cropkit.core.paths import project_root
from cropkit.foundation import FoundationModel, Pipeline, pretrain
from cropkit.foundation.pretrain import build_mae, foundation_dir, pretrain_mae


def test_features_are_bit_identical_across_calls(tiny_foundation, mnist):
    x, _ = mnist[1].tensors()
    assert torch.equal(tiny_foundation(x[:64]), tiny_foundation(x[:64]))
    # also with a different batch composition: no state leaks between samples
    assert torch.equal(tiny_foundation(x[:64])[:8], tiny_foundation(x[:8]))


def test_from_pretrained_round_trips(tmp_path, tiny_config, mnist):
    model = build_mae(tiny_config, num_channels=1)
    model.save_pretrained(tmp_path)
    ViTImageProcessor(image_mean=[0.1], image_std=[0.3], size={"height": 28, "width": 28}).save_pretrained(tmp_path)
    direct = FoundationModel(model.vit, [0.1], [0.3], pooling="cls")
    loaded = FoundationModel.from_pretrained(tmp_path, pooling="cls")
    x, _ = mnist[1].tensors()
    assert torch.equal(direct(x[:16]), loaded(x[:16]))
    assert loaded.image_size == 28 and loaded.feature_dim == tiny_config.hidden_size


def test_incomplete_checkpoint_is_refused(tmp_path, tiny_config):
    from safetensors.torch import load_file, save_file

    build_mae(tiny_config, num_channels=1).save_pretrained(tmp_path)
    ViTImageProcessor(image_mean=[0.1], image_std=[0.3]).save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    save_file({k: v for k, v in weights.items() if ".intermediate." not in k or k.startswith("decoder")},
              tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="complete ViT-MAE encoder"):
        FoundationModel.from_pretrained(tmp_path)


def test_attention_runs_through_sdpa(tiny_foundation):
    """PyTorch's fused attention (flash or memory-efficient kernels on a GPU), the default a checkpoint loads with."""
    assert tiny_foundation.encoder.config._attn_implementation == "sdpa"


def test_frozen_but_differentiable(tiny_foundation, mnist):
    tiny_foundation.train()  # a caller asking for train mode must not unfreeze it
    assert not tiny_foundation.training and not any(m.training for m in tiny_foundation.modules())
    assert not any(p.requires_grad for p in tiny_foundation.parameters())
    x = mnist[1].tensors()[0][:8].requires_grad_(True)
    tiny_foundation(x).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_resizes_and_adapts_channels(tiny_foundation):
    assert tiny_foundation(torch.rand(2, 1, 32, 32)).shape == (2, 32)
    with pytest.raises(ValueError, match="channels"):
        tiny_foundation(torch.rand(2, 3, 28, 28))  # an RGB image into a grey-scale model


@pytest.mark.parametrize("bad", [torch.rand(1, 28, 28), torch.zeros(1, 1, 28, 28, dtype=torch.uint8), "image"])
def test_wrong_input_is_a_clear_error(tiny_pipeline, bad):
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        tiny_pipeline(bad)


def test_pipeline_is_head_of_foundation_of_preprocessor(tiny_pipeline, mnist):
    x, _ = mnist[1].tensors()
    halve = Pipeline(lambda_module(lambda v: v * 0.5), tiny_pipeline.foundation, tiny_pipeline.head)
    assert torch.equal(halve(x[:4]), tiny_pipeline.head(tiny_pipeline.foundation(x[:4] * 0.5)))


def lambda_module(fn):
    class Lambda(torch.nn.Module):
        def forward(self, x):
            return fn(x)

    return Lambda()


def test_initialisation_traps_are_repaired(tiny_config, mnist):
    model = build_mae(tiny_config, num_channels=1)
    for table in (model.vit.embeddings.position_embeddings, model.decoder.decoder_pos_embed):
        rows = table[0, 1:]
        assert rows.abs().sum() > 0 and torch.unique(rows, dim=0).shape[0] == rows.shape[0]
    assert model.vit.embeddings.cls_token.abs().sum() > 0 and model.decoder.mask_token.abs().sum() > 0
    x, _ = mnist[0].tensors()
    loss = model(pixel_values=(x[:64] - 0.13) / 0.31).loss  # MNIST has blank patches
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_pretraining_learns_caches_and_is_deterministic(tiny_foundation_dir, tiny_cache, monkeypatch):
    monkeypatch.setenv("CROPKIT_CACHE", tiny_cache)
    history = checkpoint.read_json(tiny_foundation_dir / "cropkit_pretraining.json")["history"]
    assert history[-1]["loss"] < history[0]["loss"]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    saved = (tiny_foundation_dir / "model.safetensors").stat().st_mtime_ns
    config = pretrain.MAEConfig(**checkpoint.read_json(tiny_foundation_dir / "cropkit_pretraining.json")["config"])
    assert pretrain_mae(config, progress=False) == tiny_foundation_dir
    assert (tiny_foundation_dir / "model.safetensors").stat().st_mtime_ns == saved  # served from the cache


def test_interrupted_pretraining_resumes_to_the_same_model(tmp_path, tiny_config, monkeypatch,
                                                           interrupted_after_first_checkpoint):
    monkeypatch.setenv("CROPKIT_CACHE", str(tmp_path / "a"))
    uninterrupted = pretrain_mae(tiny_config, progress=False)

    monkeypatch.setenv("CROPKIT_CACHE", str(tmp_path / "b"))
    with interrupted_after_first_checkpoint():
        pretrain_mae(tiny_config, progress=False)
    partial = foundation_dir(tiny_config).with_name(foundation_dir(tiny_config).name + ".partial")
    assert checkpoint.read_json(partial / "trainer.json")["epoch"] == 1
    resumed = pretrain_mae(tiny_config, progress=False)

    a = FoundationModel.from_pretrained(uninterrupted).encoder.state_dict()
    b = FoundationModel.from_pretrained(resumed).encoder.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not partial.exists()  # the partial checkpoint is cleaned up once the model is saved


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path, tiny_config, monkeypatch):
    monkeypatch.setenv("CROPKIT_CACHE", str(tmp_path))
    model = build_mae(tiny_config, 1)
    optimizer = torch.optim.AdamW(model.parameters())
    directory = tmp_path / "ckpt"
    checkpoint.save_training_state(directory, model=model, optimizer=optimizer, scheduler=None, epoch=1,
                                   history=[], config={"epochs": 2})
    with pytest.raises(ValueError, match="another configuration"):
        checkpoint.load_training_state(directory, model=model, optimizer=optimizer, scheduler=None,
                                       config={"epochs": 3})


def test_unknown_embedded_foundation_is_a_clear_error():
    with pytest.raises(ValueError, match="presets exist"):
        pretrain.load_foundation("embedded:svhn")
    assert foundation_dir(replace(pretrain.MAEConfig(), epochs=1)) != foundation_dir(pretrain.MAEConfig())


def test_the_embedded_models_pretraining_budget_is_the_one_its_investigation_chose():
    """The preset's epochs are the smallest budget whose linear probe is not resolved below the longest's, in the
    committed run of `investigations/pretraining_budget.py` on this very config: change one, rerun the other."""
    found = json.loads((project_root() / "investigations" / "pretraining_budget.json").read_text())
    preset = asdict(pretrain.PRESETS["mnist5k"])
    assert found["rule_chooses_epochs"] == preset["epochs"]
    assert found["config"] == preset
