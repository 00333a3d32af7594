"""Shared fixtures: tiny ViT-MAE foundation models trained in seconds, kept in a per-session cache."""

from __future__ import annotations

import contextlib
import os
from dataclasses import replace

import pytest

os.environ.setdefault("TQDM_DISABLE", "1")  # keep test logs readable

from cropkit.foundation.pretrain import MAEConfig  # noqa: E402

# A tiny model: 16 patches of 7x7, one layer; one epoch on MNIST-5k takes about a second.
TINY = MAEConfig(patch_size=7, hidden_size=32, num_layers=1, num_heads=2, decoder_hidden_size=16,
                 decoder_layers=1, decoder_heads=2, epochs=2, batch_size=256, warmup_epochs=1)


@pytest.fixture(autouse=True)
def no_cached_measurements(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every unit test starts without cached attack outcomes or bound terms, so each `evaluate` and `bound_terms`
    in it measures (and none writes into the user's cache)."""
    from cropkit.cropd import bound as theory
    from cropkit.eval import evaluate

    outcomes, terms = tmp_path_factory.mktemp("evaluations"), tmp_path_factory.mktemp("bound-terms")
    monkeypatch.setattr(evaluate, "outcomes_dir", lambda: outcomes)
    monkeypatch.setattr(theory, "terms_dir", lambda: terms)


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("cropkit-cache"))


@pytest.fixture
def tiny_config() -> MAEConfig:
    return TINY


@pytest.fixture(scope="session")
def tiny_foundation_dir(tiny_cache: str):
    """A tiny ViT-MAE pre-trained for two epochs with the kit's own pre-training, saved with save_pretrained."""
    from cropkit.foundation.pretrain import pretrain_mae

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CROPKIT_CACHE", tiny_cache)
        return pretrain_mae(replace(TINY, epochs=3), progress=False)


@pytest.fixture(scope="session")
def tiny_foundation(tiny_foundation_dir):
    from cropkit.foundation import FoundationModel

    return FoundationModel.from_pretrained(tiny_foundation_dir, pooling="mean")


@pytest.fixture(scope="session")
def mnist():
    from cropkit.data import load_dataset

    return load_dataset("mnist5k", "train"), load_dataset("mnist5k", "test")


@pytest.fixture
def l_con_of_input(mnist):
    """(encoder model, 64 test images, L_con of perturbed images against their clean latents): a loss to attack."""
    import torch

    from cropkit.cropd.autoencoders import ConvAutoEncoder
    from cropkit.cropd.losses import contrastive_loss

    torch.manual_seed(0)
    model = ConvAutoEncoder(1, 8, 16)
    x, y = mnist[1].take(64).tensors()
    z = model.latent(x).detach()
    return model, x, lambda v: contrastive_loss(model.latent(v), z, y)


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_foundation, mnist):
    """Identity pre-processor + tiny foundation model + linear head fitted on MNIST-5k features."""
    from cropkit.foundation import Pipeline
    from cropkit.foundation.heads import extract_features, train_linear_head

    train, _ = mnist
    x, y = train.tensors()
    head = train_linear_head(extract_features(tiny_foundation, x), y, train.num_classes)
    return Pipeline(None, tiny_foundation, head)


def random_architecture():
    """Identity, the tiny ViT-MAE with its seeded random weights, and an unfitted 10-class linear head."""
    from cropkit.foundation import FoundationModel, Pipeline
    from cropkit.foundation.heads import LinearHead
    from cropkit.foundation.pretrain import build_mae

    foundation = FoundationModel(build_mae(TINY, num_channels=1).vit, [0.5], [0.5])
    return Pipeline(None, foundation, LinearHead(foundation.feature_dim, 10))


@pytest.fixture(scope="session")
def random_pipeline():
    """`random_architecture` with its head fitted on the digits (seconds, no pre-training)."""
    from cropkit.data import load_dataset
    from cropkit.foundation.heads import extract_features, train_linear_head

    pipeline = random_architecture()
    x, y = load_dataset("digits", "train").tensors()
    pipeline.head = train_linear_head(extract_features(pipeline.foundation, x), y, 10, weight_decay=1e-3)
    return pipeline


@pytest.fixture
def interrupted_after_first_checkpoint(monkeypatch):
    """A context manager in which training dies (KeyboardInterrupt) right after writing its first checkpoint."""
    from cropkit.core import checkpoint

    real_save = checkpoint.save_training_state

    def save_then_crash(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt  # the machine went away after the first epoch's checkpoint

    @contextlib.contextmanager
    def interrupted():
        monkeypatch.setattr(checkpoint, "save_training_state", save_then_crash)
        try:
            with pytest.raises(KeyboardInterrupt):
                yield
        finally:
            monkeypatch.setattr(checkpoint, "save_training_state", real_save)

    return interrupted


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory):
    """A randomly initialised two-layer CLIP with a byte-level tokenizer (no merges), saved like a hub checkpoint."""
    import torch
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    path = tmp_path_factory.mktemp("tiny-clip")
    chars = sorted(ByteLevel.alphabet())
    specials = ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(chars + [c + "</w>" for c in chars] + specials)}
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=40, bos_token_id=vocab[specials[0]],
                         eos_token_id=vocab[specials[1]]),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=28, patch_size=7),
        projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(path)
    CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def paper_data(tmp_path_factory: pytest.TempPathFactory):
    """Miniature CIFAR-10, CIFAR-100, SVHN, Imagenette and Tiny-ImageNet in their real formats (tests/miniature.py)."""
    from miniature import write_all

    return write_all(tmp_path_factory.mktemp("paper-data"))


@pytest.fixture(scope="session")
def vit_mae_large_standin(tmp_path_factory: pytest.TempPathFactory):
    """A save_pretrained folder with facebook/vit-mae-large's shapes (224x224, patch 16) at tiny widths."""
    from miniature import write_standin_vit_mae_large

    return write_standin_vit_mae_large(tmp_path_factory.mktemp("vit-mae-large-standin"))
