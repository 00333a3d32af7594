"""CRoPD's pieces: auto-encoders, L_con, FGSM-RS, pre-processor training (without the foundation model), ALF."""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, replace

import pytest
import torch

from cropkit.core.checkpoint import cache_key
from cropkit.cropd import train as train_module
from cropkit.cropd.autoencoders import ConvAutoEncoder, ViTAutoEncoder, build_autoencoder, parameter_fraction
from cropkit.cropd.config import RECIPE_VERSION, PreprocessorConfig
from cropkit.cropd.losses import contrastive_loss, reconstruction_loss
from cropkit.cropd.train import (
    epochs_for_steps,
    preprocessor_dir,
    psnr,
    train_preprocessor,
    training_split,
    warn_if_collapsed,
)
from cropkit.data import load_dataset
from cropkit.eval.ascent import fgsm_rs
from cropkit.eval.attacks import AttackSpec, pgd
from cropkit.eval.protocols import fit_alf, fit_slf
from cropkit.foundation import FoundationModel

TINY_AE = PreprocessorConfig(dataset="digits", width=8, latent_channels=16, epochs=2, batch_size=32, lam=1.0)


def test_contrastive_loss_minimum_and_growth():
    z = torch.eye(8) * 5  # well-separated latents, all different classes
    labels = torch.arange(8)
    tau = 0.5
    at_minimum = contrastive_loss(z, z, labels, tau)
    # cosine 1 with the positive, 0 with each of the 7 negatives
    assert at_minimum == pytest.approx(math.log(1 + 7 * math.exp(-1 / tau)), rel=1e-5)
    apart = contrastive_loss(z.roll(1, dims=0), z, labels, tau)  # each positive now matches a negative
    assert apart > at_minimum + 1
    halfway = contrastive_loss(z + 0.8 * z.roll(1, dims=0), z, labels, tau)
    assert at_minimum < halfway < apart


def test_same_class_samples_are_not_negatives():
    z = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    with_labels = contrastive_loss(z, z, labels)
    label_free = contrastive_loss(z, z)  # the near-duplicate of the same class now counts as a negative
    assert with_labels < label_free


def test_contrastive_loss_rejects_mismatched_batches():
    with pytest.raises(ValueError, match="latent"):
        contrastive_loss(torch.zeros(4, 3), torch.zeros(5, 3))


def test_fgsm_rs_raises_l_con_stays_in_the_ball_and_leaves_no_parameter_gradient(l_con_of_input):
    model, x, loss = l_con_of_input
    eps = 0.1
    x_adv = fgsm_rs(loss, x, eps, generator=torch.Generator().manual_seed(0))
    x_rand = (x + (torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1) * eps).clamp(0, 1)
    assert loss(x_adv) > loss(x_rand) > loss(x)
    assert (x_adv - x).abs().max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("architecture", ["conv", "vit"])
def test_autoencoders_map_images_to_images(architecture, mnist):
    model = build_autoencoder(architecture, channels=1, image_size=28, width=16)
    x, _ = mnist[1].take(4).tensors()
    out = model(x)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert model.latent(x).ndim == 2 and model.latent(x).shape[0] == 4
    assert reconstruction_loss(out, x) > 0
    with pytest.raises(ValueError):
        model(torch.rand(4, 1, 30, 30))


def test_vit_autoencoder_is_deterministic(mnist):
    model = ViTAutoEncoder(1, 28, hidden_size=32, num_layers=1, decoder_hidden_size=32, decoder_layers=1).eval()
    x, _ = mnist[1].take(4).tensors()
    assert torch.equal(model(x), model(x))


def test_parameter_fraction(tiny_foundation):
    ae = ConvAutoEncoder(1, 8, 16)
    n_ae = sum(p.numel() for p in ae.parameters())
    n_fm = sum(p.numel() for p in tiny_foundation.parameters())
    assert parameter_fraction(ae, tiny_foundation) == pytest.approx(n_ae / n_fm)


def test_config_validation():
    with pytest.raises(ValueError, match="lam"):
        PreprocessorConfig(kind="cropd", lam=0.0)
    with pytest.raises(ValueError, match="lam"):
        PreprocessorConfig(kind="recon", lam=1.0)
    with pytest.raises(ValueError, match="eps"):
        PreprocessorConfig(eps=8)
    assert PreprocessorConfig.for_lambda(0.0).kind == "recon"
    assert PreprocessorConfig.for_lambda(0.1).name == "CRoPD (lambda=0.1)"


@pytest.mark.parametrize("kind", ["cropd", "adv-recon"])
def test_training_never_touches_the_foundation_model(kind, tiny_foundation, tmp_path, monkeypatch):
    monkeypatch.setenv("CROPKIT_CACHE", str(tmp_path))
    before = {k: v.clone() for k, v in tiny_foundation.state_dict().items()}
    calls = []
    handle = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda module, args: calls.append(module) if isinstance(module, FoundationModel) else None)
    try:
        config = replace(TINY_AE, kind=kind, lam=1.0 if kind == "cropd" else 0.0, epochs=1)
        trained = train_preprocessor(config, progress=False)
    finally:
        handle.remove()
    assert calls == []
    assert all(torch.equal(before[k], v) for k, v in tiny_foundation.state_dict().items())
    assert all(p.grad is None for p in tiny_foundation.parameters())
    assert trained.history[0]["train_recon"] > 0 and "test_psnr" in trained.history[0]


def test_cropd_training_learns_and_is_cached(tmp_path, monkeypatch, mnist):
    monkeypatch.setenv("CROPKIT_CACHE", str(tmp_path))
    trained = train_preprocessor(TINY_AE, progress=False)
    history = trained.history
    assert history[-1]["train_recon"] < history[0]["train_recon"] and history[-1]["test_psnr"] > 10
    assert {"train_l_con", "test_l_con", "seconds", "flops", "examples", "peak_memory_mb"} <= history[0].keys()
    again = train_preprocessor(TINY_AE, progress=False)  # served from the cache
    assert again.path == trained.path == preprocessor_dir(TINY_AE)
    x, _ = mnist[1].take(32).tensors()
    assert torch.equal(again.model(x), trained.model(x))
    assert psnr(again.model, x) == pytest.approx(psnr(trained.model, x))


def test_a_collapsed_latent_is_named_when_trained_and_when_loaded(tmp_path, monkeypatch):
    """The suite's tiny CRoPD model collapses in its 2 epochs on the digits (every test image's pooled latent points
    the same way, its monitored L_con sits at log(1 + negatives)); with a wider latent it does not."""
    monkeypatch.setenv("CROPKIT_CACHE", str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        wide = train_preprocessor(replace(TINY_AE, width=16, latent_channels=64), progress=False)
    named = (r"CRoPD \(lambda=1\) \(conv, width=8, latent_channels=16, eps=0\.1, 2 epochs on digits; .+\) has a "
             r"collapsed latent: .* is (0\.9[5-9]\d|1\.000) >= 0\.95")
    with pytest.warns(RuntimeWarning, match=named):
        collapsed = train_preprocessor(TINY_AE, progress=False)
    assert collapsed.history[-1]["test_latent_similarity"] >= 0.95 > wide.history[-1]["test_latent_similarity"]
    def unread(config):
        raise AssertionError("a cache hit whose history holds the similarity loads no monitor images")

    with monkeypatch.context() as patch, pytest.warns(RuntimeWarning, match=named):
        patch.setattr(train_module, "monitor_split", unread)
        assert train_preprocessor(TINY_AE, progress=False).path == collapsed.path  # served from the cache
    with pytest.warns(RuntimeWarning, match=named):  # cached before the similarity was monitored: measured
        warn_if_collapsed(replace(collapsed, history=[{}]))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        warn_if_collapsed(replace(wide, history=[{}]))
        warn_if_collapsed(replace(collapsed, config=replace(TINY_AE, kind="recon", lam=0.0)))  # not L_con's latent


def test_interrupted_preprocessor_training_resumes_identically(tmp_path, monkeypatch,
                                                               interrupted_after_first_checkpoint):
    monkeypatch.setenv("CROPKIT_CACHE", str(tmp_path / "a"))
    uninterrupted = train_preprocessor(TINY_AE, progress=False)

    monkeypatch.setenv("CROPKIT_CACHE", str(tmp_path / "b"))
    with interrupted_after_first_checkpoint():
        train_preprocessor(TINY_AE, progress=False)
    resumed = train_preprocessor(TINY_AE, progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2]  # at most one epoch lost
    a, b = uninterrupted.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["epoch"] for h in resumed.history] == [1, 2]


def test_slf_and_alf_change_only_the_head(tiny_foundation, mnist):
    train = mnist[0].take(256)
    preprocessor = ConvAutoEncoder(1, 8, 16).requires_grad_(False).eval()
    slf = fit_slf(preprocessor, tiny_foundation, train)
    x, y = train.tensors()
    assert (slf(x).argmax(1) == y).float().mean() > 0.3  # a working head on the stack's features
    frozen = {k: v.clone() for k, v in slf.state_dict().items() if not k.startswith("head.")}
    slf_head = {k: v.clone() for k, v in slf.head.state_dict().items()}
    alf, history = fit_alf(slf, train.take(128), pgd(0.1, steps=2), epochs=1, progress=False)
    assert not torch.equal(alf.head.linear.weight, slf.head.linear.weight)
    assert all(torch.equal(slf_head[k], v) for k, v in slf.head.state_dict().items())  # SLF left as it was
    assert all(torch.equal(frozen[k], v) for k, v in alf.state_dict().items() if k in frozen)
    assert not any(p.requires_grad for p in alf.parameters()) and history[0]["adv_loss"] > 0
    assert history[0]["examples"] == 128 and history[0]["flops"] > 0
    assert history[0]["trainable_parameters"] == sum(p.numel() for p in slf.head.parameters())


def test_alf_heads_are_cached_by_start_data_and_attack(tiny_pipeline, mnist, monkeypatch, tmp_path):
    from cropkit.eval import protocols

    monkeypatch.setenv("CROPKIT_CACHE", str(tmp_path))
    train = mnist[0].take(64)
    alf, history = fit_alf(tiny_pipeline, train, pgd(0.1, steps=2), epochs=1, progress=False)
    monkeypatch.setattr(protocols, "descend", lambda *a, **k: pytest.fail("trained although cached"))
    again, replayed = fit_alf(tiny_pipeline, train, pgd(0.1, steps=2), epochs=1, progress=False)
    assert torch.equal(again.head.linear.weight, alf.head.linear.weight) and replayed == history
    assert not any(p.requires_grad for p in again.parameters())
    for changed in ({"attack": pgd(0.1, steps=3)}, {"train": mnist[0].take(64, seed=1)}, {"seed": 1}):
        arguments = {"train": train, "attack": pgd(0.1, steps=2), "seed": 0} | changed
        with pytest.raises(pytest.fail.Exception, match="trained although cached"):
            fit_alf(tiny_pipeline, epochs=1, progress=False, **arguments)


@pytest.mark.parametrize("attack", [AttackSpec("apgd-ce", 1e-4, steps=2), AttackSpec("apgd", 1e-4, steps=2),
                                    pgd(1e-4, steps=2, restarts=2)])
def test_alf_refuses_attacks_that_return_clean_inputs_where_they_fail(tiny_pipeline, mnist, attack):
    x, y = mnist[1].take(16).tensors()
    keep = tiny_pipeline(x).argmax(1) == y
    x_adv = attack.build(tiny_pipeline, n_classes=10, seed=0)(x[keep], y[keep])
    assert torch.equal(x_adv, x[keep])  # nothing flips at this eps, and the attack hands back the clean images
    assert not torch.equal(pgd(1e-4, steps=2).build(tiny_pipeline, n_classes=10, seed=0)(x, y), x)
    with pytest.raises(ValueError, match="perturbed point"):
        fit_alf(tiny_pipeline, mnist[0].take(32), attack, epochs=1, progress=False)


def test_vit_autoencoder_depth_sets_its_encoder_layers():
    shallow, deep = (build_autoencoder("vit", channels=1, image_size=28, width=8, depth=d) for d in (1, 4))
    assert len(shallow.encoder.layers) == 1 and len(deep.encoder.layers) == 4
    assert sum(p.numel() for p in deep.parameters()) > sum(p.numel() for p in shallow.parameters())
    assert len(build_autoencoder("vit", channels=1, image_size=28, width=8).encoder.layers) == 3
    with pytest.raises(ValueError, match="depth=2"):
        build_autoencoder("conv", channels=1, image_size=28, depth=2)
    with pytest.raises(ValueError, match="PreprocessorConfig.depth = 2"):
        PreprocessorConfig(architecture="conv", depth=2)
    with pytest.raises(ValueError, match="PreprocessorConfig.per_class = 0"):
        PreprocessorConfig(per_class=0)


def test_configs_without_the_new_fields_keep_their_cache_keys():
    """`depth` and `per_class` came after trained models were cached: left at None they must not move any key."""
    def key_before_the_fields(config: PreprocessorConfig) -> str:
        fields = {k: v for k, v in asdict(config).items() if k not in ("depth", "per_class")}
        return cache_key(fields, recipe=RECIPE_VERSION, data=load_dataset(config.dataset, "train").digest())

    vit = PreprocessorConfig(dataset="digits", architecture="vit", label_free=True, epochs=2)
    for config in (PreprocessorConfig(dataset="digits"), vit):
        assert preprocessor_dir(config).name == f"{config.kind}-digits-{key_before_the_fields(config)}"
    assert preprocessor_dir(replace(vit, depth=3)) != preprocessor_dir(vit)


def test_epochs_for_steps_gives_every_training_set_the_same_step_budget():
    assert epochs_for_steps(32, 4000, 128) == 1 and epochs_for_steps(64, 4000, 128) == 2
    assert epochs_for_steps(64, 500, 128) == 16  # 4 batches per epoch
    assert epochs_for_steps(10, 300, 128) == 4  # 3 batches per epoch: at least the budget
    with pytest.raises(ValueError, match="steps"):
        epochs_for_steps(0, 100, 10)


def test_per_class_training_uses_the_balanced_subset(tmp_path, monkeypatch):
    monkeypatch.setenv("CROPKIT_CACHE", str(tmp_path))
    config = replace(TINY_AE, per_class=6, epochs=1)
    subset = training_split(config)
    assert subset.class_counts() == {str(d): 6 for d in range(10)}
    trained = train_preprocessor(config, progress=False)
    assert trained.history[0]["examples"] == 60
    assert trained.path == preprocessor_dir(config) != preprocessor_dir(replace(config, per_class=None))
    assert torch.equal(training_split(config).images, subset.images)  # drawn with the config's seed
    assert not torch.equal(training_split(replace(config, seed=1)).images, subset.images)
