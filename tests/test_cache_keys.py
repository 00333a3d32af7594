"""No cache entry outlives what made it: every trained artifact is keyed by its config, its recipe and its data."""

from __future__ import annotations

import numpy as np
import pytest

from cropkit.acl import pretrain as acl
from cropkit.cropd import train
from cropkit.data import load_dataset
from cropkit.finetune import robust as finetune
from cropkit.finetune.robust import FinetuneConfig
from cropkit.foundation import pretrain


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
