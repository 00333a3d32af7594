"""No cache entry outlives what made it: every trained artifact is keyed by its config, its recipe and its data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cropkit.acl import pretrain as acl
from cropkit.core.checkpoint import module_digest, module_key
from cropkit.cropd import train
from cropkit.data import load_dataset
from cropkit.eval.attacks import AttackSpec
from cropkit.eval.evaluate import evaluate
from cropkit.finetune import robust as finetune
from cropkit.finetune.robust import FinetuneConfig
from cropkit.foundation import pretrain
from cropkit.foundation.heads import CosineHead, LinearHead


def write_npz(path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    np.savez(path, x_train=rng.integers(0, 256, (16, 8, 8, 1), dtype=np.uint8), y_train=np.arange(16) % 2,
             x_test=rng.integers(0, 256, (4, 8, 8, 1), dtype=np.uint8), y_test=np.arange(4) % 2,
             classes=np.array(["a", "b"]))


def artifact_dirs(path):
    """The cache folder of each kind of trained artifact, all trained on the npz at `path`."""
    data = load_dataset(str(path), "train")
    return {
        "foundation": pretrain.foundation_dir(pretrain.MAEConfig(dataset=str(path), image_size=8)),
        "preprocessor": train.preprocessor_dir(train.PreprocessorConfig(dataset=str(path))),
        "acl": acl.acl_dir(acl.ACLConfig(dataset=str(path)), data),
        "finetuned": finetune.finetune_dir(FinetuneConfig(), "start-digest", data),
    }


def test_a_rewritten_dataset_file_gets_new_cache_entries(tmp_path, monkeypatch):
    monkeypatch.setenv("CROPKIT_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "data.npz"
    write_npz(path, seed=0)
    before = artifact_dirs(path)
    assert artifact_dirs(path) == before  # the same content: the same entries
    write_npz(path, seed=1)  # same path, new images
    after = artifact_dirs(path)
    assert all(before[kind] != after[kind] for kind in before), (before, after)


@pytest.mark.parametrize("module", [pretrain, train, acl, finetune])
def test_a_new_recipe_version_gets_new_cache_entries(tmp_path, monkeypatch, module):
    monkeypatch.setenv("CROPKIT_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "data.npz"
    write_npz(path, seed=0)
    kind = {pretrain: "foundation", train: "preprocessor", acl: "acl", finetune: "finetuned"}[module]
    before = artifact_dirs(path)[kind]
    monkeypatch.setattr(module, "RECIPE_VERSION", module.RECIPE_VERSION + 1)
    assert artifact_dirs(path)[kind] != before


def cosine_model(scale: float, seed: int = 0) -> nn.Module:
    """A linear classifier on raw pixels read through its cosine logits at `scale`: same weights for every scale."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), CosineHead(LinearHead(28 * 28, 10), scale=scale))


def test_module_key_sees_a_setting_that_is_not_a_tensor():
    """A head's scale is a plain attribute: `module_digest` (tensors only) cannot tell the two heads apart, the
    cache key must, and must not change for the same settings."""
    small, large = cosine_model(1.0), cosine_model(100.0)
    assert module_digest(small) == module_digest(large)
    assert module_key(small) != module_key(large)
    assert module_key(small) == module_key(cosine_model(1.0))
    assert module_key(small) != module_key(cosine_model(1.0, seed=1))


def test_attack_outcomes_are_not_shared_by_pipelines_that_differ_in_a_setting(tmp_path, monkeypatch):
    """Two pipelines with the same weights and different head scales give different logits, so the second
    evaluation attacks instead of replaying the first one's cached outcomes."""
    monkeypatch.setenv("CROPKIT_CACHE", str(tmp_path / "cache"))
    data = load_dataset("digits", "test").take(24, seed=0)
    attack = [AttackSpec("pgd", 0.1, steps=2)]
    first = evaluate(cosine_model(1.0), data, attack, model_name="scale 1", device="cpu")
    replay = evaluate(cosine_model(1.0), data, attack, model_name="scale 1", device="cpu")
    other = evaluate(cosine_model(100.0), data, attack, model_name="scale 100", device="cpu")
    assert [r["cached"] for r in (*first, *replay, *other)] == [False, True, False]


def test_module_key_does_not_depend_on_where_the_model_was_loaded_from(tmp_path):
    """The shipped foundation model loaded from two copies of its folder (another clone of the repository) has one
    key: Hugging Face records the folder as `name_or_path`, which is no setting of the model."""
    import shutil

    from cropkit.foundation.pretrain import embedded_config, load_foundation, shipped_model

    source = shipped_model(embedded_config("embedded"))
    copies = [shutil.copytree(source, tmp_path / f"clone{i}" / source.name) for i in (1, 2)]
    models = [load_foundation(folder) for folder in copies]
    assert models[0].encoder.name_or_path != models[1].encoder.name_or_path
    assert module_key(models[0]) == module_key(models[1])
