"""Trained pre-processors that travel: save_pretrained / from_pretrained with a model card, refused in front of
another foundation model than the one they were trained for unless asked."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from conftest import TINY
from cropkit.cropd.autoencoders import build_autoencoder
from cropkit.cropd.config import PreprocessorConfig
from cropkit.cropd.pretrained import FoundationMismatchError, TrainedPreprocessor, from_pretrained, load_records
from cropkit.foundation import FoundationModel
from cropkit.foundation.pretrain import build_mae


def _foundation(seed: int) -> FoundationModel:
    model = FoundationModel(build_mae(replace(TINY, seed=seed), num_channels=1).vit, [0.5], [0.5])
    model.name = f"tiny-vit-mae-seed{seed}"
    return model


@pytest.fixture(scope="module")
def trained() -> TrainedPreprocessor:
    """A CRoPD conv pre-processor as `train_preprocessor` returns it (random weights, a one-epoch history)."""
    config = PreprocessorConfig(dataset="digits", width=4, latent_channels=8, epochs=1)
    model = build_autoencoder("conv", 1, 28, width=4, latent_channels=8, seed=3).requires_grad_(False).eval()
    history = [{"epoch": 1, "train_recon": 0.05, "train_l_con": 3.2, "test_psnr": 18.5, "test_l_con": 3.3,
                "seconds": 1.5, "flops": 2.0e11, "examples": 1437}]
    return TrainedPreprocessor(model, config, history, Path("unused"))


RECORDS = [{"model": "CRoPD (lambda=1) · SLF", "dataset": "digits", "n_examples": 50, "attack": "PGD-10",
            "eps": 0.1, "clean_accuracy": 0.8, "robust_accuracy": 0.4}]


def test_a_saved_preprocessor_comes_back_identical_with_its_card(trained, tmp_path):
    fm = _foundation(0)
    folder = trained.save_pretrained(tmp_path / "cropd-digits", foundation=fm, records=RECORDS)
    loaded = TrainedPreprocessor.from_pretrained(folder, foundation=fm)
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(loaded.model(x), trained.model(x))
    assert loaded.config == trained.config and loaded.history == trained.history
    assert not any(p.requires_grad for p in loaded.model.parameters()) and not loaded.model.training
    card = json.loads((folder / "config.json").read_text())
    assert card["foundation"]["name"] == "tiny-vit-mae-seed0" and card["history"][0]["epoch"] == 1
    assert load_records(folder) == RECORDS
    readme = (folder / "README.md").read_text()
    for text in ("CRoPD (lambda=1) pre-processor for tiny-vit-mae-seed0", "| lam | 1.0 |", "| PGD-10 |",
                 "## Training history", card["foundation"]["weights_digest"]):
        assert text in readme


def test_loading_in_front_of_another_foundation_model_is_refused_unless_asked(trained, tmp_path):
    folder = trained.save_pretrained(tmp_path / "cropd", foundation=_foundation(0))
    with pytest.raises(FoundationMismatchError, match="trained for the foundation model 'tiny-vit-mae-seed0'.*"
                                                      "'tiny-vit-mae-seed1'.*allow_other_foundation=True"):
        from_pretrained(folder, foundation=_foundation(1))
    assert from_pretrained(folder, foundation=_foundation(1), allow_other_foundation=True).config == trained.config
    renamed = _foundation(0)
    renamed.name = "/elsewhere/the-same-weights"
    from_pretrained(folder, foundation=renamed)  # the weights decide, not the path they were loaded from
    from_pretrained(folder, foundation=None)  # the pre-processor alone, on purpose


def test_a_vit_preprocessor_travels_and_a_hub_id_resolves_through_the_hub(tmp_path, monkeypatch):
    config = PreprocessorConfig(dataset="cifar10", architecture="vit", width=4, eps=8 / 255)
    model = build_autoencoder("vit", 3, 32, width=4).requires_grad_(False).eval()
    folder = TrainedPreprocessor(model, config, [{"epoch": 1}], tmp_path).save_pretrained(
        tmp_path / "vit-cropd", foundation=_foundation(0))
    asked = []

    def snapshot_download(repo_id, revision=None):
        asked.append((repo_id, revision))
        return str(folder)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    loaded = from_pretrained("someone/cropd-cifar10", foundation=_foundation(0))
    assert asked == [("someone/cropd-cifar10", None)]
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(loaded.model(x), model(x)) and loaded.model.image_size == 32
    with pytest.raises(FileNotFoundError, match="not a hub id"):
        from_pretrained(tmp_path / "missing" / "folder", foundation=None)
