"""A training seed reaches every source of training randomness: one seed gives identical models and draws on one
machine, and another seed changes the initialisation, the batch order and the attacks' random starts (and, for
fine-tuning, which starts from a given pipeline, the training subset, batches and starts). This is what makes
training seeds a unit of replication for the kit's verdicts."""

from __future__ import annotations

import copy
from typing import Any, Callable

import pytest
import torch

from cropkit.acl import pretrain as acl_pretrain
from cropkit.acl.pretrain import pretrain_acl
from cropkit.cropd import train as cropd_train
from cropkit.cropd.config import PreprocessorConfig
from cropkit.cropd.train import train_preprocessor
from cropkit.finetune import robust as finetune_module
from cropkit.finetune.robust import FinetuneConfig, finetune_robust


def _record_first(monkeypatch: pytest.MonkeyPatch, module: Any, name: str, seen: dict[str, Any], key: str,
                  what: Callable[..., Any]) -> None:
    """Wrap `module.name` so that `seen[key]` holds `what(result, *args, **kwargs)` of its first call."""
    original = getattr(module, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        seen.setdefault(key, what(result, *args, **kwargs))
        return result

    monkeypatch.setattr(module, name, wrapper)


def _batches(monkeypatch: pytest.MonkeyPatch, module: Any, seen: dict[str, Any]) -> None:
    original = module.shuffled_batches

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        batches = list(original(*args, **kwargs))
        seen.setdefault("batch order", batches[0].clone())
        return iter(batches)

    monkeypatch.setattr(module, "shuffled_batches", wrapper)


def _state(model: torch.nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for t in model.state_dict().values()]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, list):
        return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))
    return torch.equal(a, b)


def _cropd(seed: int, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    _record_first(monkeypatch, cropd_train, "build_autoencoder", seen, "initialisation", lambda m, *a, **k: _state(m))
    _batches(monkeypatch, cropd_train, seen)
    _record_first(monkeypatch, cropd_train, "fgsm_rs", seen, "attack start", lambda r, *a, **k: k["noise"].clone())
    config = PreprocessorConfig(dataset="digits", width=4, latent_channels=8, epochs=1, batch_size=64, seed=seed)
    seen["trained"] = _state(train_preprocessor(config, progress=False, force=True).model)
    return seen


def _acl(seed: int, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    _record_first(monkeypatch, acl_pretrain, "build_model", seen, "initialisation", lambda m, *a, **k: _state(m))
    _batches(monkeypatch, acl_pretrain, seen)
    _record_first(monkeypatch, acl_pretrain, "linf_ascent", seen, "attack start",
                  lambda x_adv, loss, x, *a, **k: (x_adv - x).detach().clone())
    trained = pretrain_acl("acl", dataset="digits", width=2, blocks_per_stage=1, batch_size=16, n_train=32, epochs=1,
                           attack_steps=1, warmup_epochs=0, seed=seed, progress=False)
    seen["trained"] = _state(trained.model)
    return seen


def _finetune(seed: int, monkeypatch: pytest.MonkeyPatch, pipeline: torch.nn.Module, train: Any) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    _batches(monkeypatch, finetune_module, seen)
    _record_first(monkeypatch, finetune_module, "linf_ascent", seen, "attack start",
                  lambda x_adv, loss, x, *a, **k: (x_adv - x).detach().clone())
    config = FinetuneConfig(method="aft", last_blocks=1, epochs=1, n_train=32, batch_size=16, attack_steps=1,
                            seed=seed)
    seen["trained"] = _state(finetune_robust(copy.deepcopy(pipeline), train, config, progress=False).pipeline)
    return seen


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """Each call of a trainer in these tests gets an empty cache, so it trains instead of loading."""
    count = iter(range(100))
    return lambda: monkeypatch.setenv("CROPKIT_CACHE", str(tmp_path / str(next(count))))


@pytest.mark.parametrize("family", ["cropd", "acl", "finetune"])
def test_one_seed_reproduces_a_run_and_another_changes_every_random_draw(family, fresh_cache, tiny_pipeline, mnist):
    def run(seed: int) -> dict[str, Any]:
        fresh_cache()
        with pytest.MonkeyPatch.context() as patch:
            if family == "cropd":
                return _cropd(seed, patch)
            if family == "acl":
                return _acl(seed, patch)
            return _finetune(seed, patch, tiny_pipeline, mnist[0])

    first, again, other = run(0), run(0), run(1)
    draws = [key for key in first if key != "trained"]
    assert draws == (["batch order", "attack start"] if family == "finetune" else
                     ["initialisation", "batch order", "attack start"])
    for key in first:
        assert _same(first[key], again[key]), f"{family}: seed 0 twice gave a different {key}"
    for key in first:
        assert not _same(first[key], other[key]), f"{family}: seeds 0 and 1 gave the same {key}"
