"""Trained pre-processors that travel: save_pretrained / from_pretrained with a model card, refused in front of
another foundation model than the one they were trained for unless asked."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from conftest import TINY
from cropkit.core.validate import InputError
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


def test_the_card_is_a_hugging_face_model_card_with_license_and_model_index(trained, tmp_path):
    from huggingface_hub import ModelCard

    folder = trained.save_pretrained(tmp_path / "card", foundation=_foundation(0), records=RECORDS)
    card = ModelCard.load(folder / "README.md")
    assert card.data.license == "mit" and card.data.library_name == "cropkit"
    metrics = {m["name"]: m["value"] for entry in card.data.to_dict()["model-index"] for result in entry["results"]
               for m in result["metrics"]}
    assert metrics == {"clean accuracy": 80.0, "robust accuracy, PGD-10 at Linf eps 0.1": 40.0}


def test_the_foundation_model_comes_from_the_card_unless_given(trained, tmp_path):
    """Saved in front of the shipped embedded model (loaded by its spec), reloaded without naming it."""
    from cropkit.foundation.pretrain import load_foundation

    fm = load_foundation("embedded")
    folder = trained.save_pretrained(tmp_path / "for-embedded", foundation=fm)
    assert json.loads((folder / "config.json").read_text())["foundation"]["spec"] == "embedded"
    loaded = from_pretrained(folder)
    assert loaded.foundation is not None and loaded.foundation.name == fm.name
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(loaded.foundation(x), fm(x))
    unnamed = trained.save_pretrained(tmp_path / "unnamed", foundation=_foundation(0))  # built by hand: no spec
    with pytest.raises(InputError, match="names no loadable foundation model"):
        from_pretrained(unnamed)


def test_push_to_hub_uploads_the_saved_folder(trained, tmp_path, monkeypatch):
    """Offline: the hub client is replaced by one that records what it is asked to upload."""
    import huggingface_hub

    uploaded = {}

    class Api:
        def __init__(self, token=None):
            uploaded["token"] = token

        def create_repo(self, repo_id, private=None, exist_ok=False):
            uploaded["repo"] = (repo_id, private, exist_ok)

        def upload_folder(self, repo_id, folder_path, commit_message):
            uploaded["files"] = sorted(p.name for p in Path(folder_path).iterdir())
            return f"https://huggingface.co/{repo_id}/commit/0"

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    url = trained.push_to_hub("someone/cropd-digits", foundation=_foundation(0), records=RECORDS, token="t")
    assert url.endswith("someone/cropd-digits/commit/0") and uploaded["repo"] == ("someone/cropd-digits", None, True)
    assert uploaded["files"] == ["README.md", "config.json", "model.safetensors", "records.jsonl"]
