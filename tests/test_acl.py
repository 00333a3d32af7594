"""The ACL family: dual-BN backbone, augmentations, contrastive losses, RCS selection and the training loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cropkit.acl import pretrain as acl
from cropkit.acl import rcs
from cropkit.acl.augment import augment, dynacl_strength
from cropkit.acl.losses import acl_loss, air, air_objective, dynacl_weight, nt_xent, representational_divergence, sir
from cropkit.acl.pretrain import (
    ACLConfig,
    RCSConfig,
    build_model,
    pretrain_acl,
    select_coreset,
    training_loss,
    untrained_encoder,
)
from cropkit.acl.rcs import greedy_batch_selection
from cropkit.acl.resnet import ACLModel, DualBatchNorm, ResNet
from cropkit.eval.ascent import linf_ascent
from cropkit.foundation import Pipeline

TINY = dict(dataset="mnist5k", width=2, blocks_per_stage=1, batch_size=16, eps=0.1, warmup_epochs=0, seed=0)


@pytest.fixture
def digit_data(mnist):
    return mnist[0].take(48, seed=0)


@pytest.fixture
def digits(digit_data):
    return digit_data.tensors()[0]


def test_nt_xent_is_lower_for_identical_views_than_for_random_ones():
    z = torch.randn(32, 16, generator=torch.Generator().manual_seed(0))
    unrelated = torch.randn(32, 16, generator=torch.Generator().manual_seed(1))
    assert nt_xent(z, z) < nt_xent(z, unrelated) - 1.0
    with pytest.raises(ValueError, match="N >= 2"):
        nt_xent(z[:1], z[:1])


def test_pgd_raises_the_contrastive_loss(digits):
    torch.manual_seed(0)
    model = ACLModel(ResNet(1, width=2, blocks_per_stage=1)).train()  # batch statistics, as in training
    generator = torch.Generator().manual_seed(0)
    views = torch.cat([augment(digits[:8], 1.0, generator), augment(digits[:8], 1.0, generator)])

    def loss(v: torch.Tensor) -> torch.Tensor:
        return nt_xent(*model(v, bn="pgd").chunk(2))

    adversarial = linf_ascent(loss, views, 0.1, steps=5, step=0.025, generator=generator)
    assert (adversarial - views).abs().max() <= 0.1 + 1e-6
    assert loss(adversarial) > loss(views) + 0.01


def test_acl_and_dynacl_weights():
    natural, adversarial = torch.tensor(2.0), torch.tensor(4.0)
    assert acl_loss(natural, adversarial) == 3.0
    assert dynacl_weight(1.0) == 0.0 and dynacl_weight(0.25) == pytest.approx(0.5)
    assert acl_loss(natural, adversarial, dynacl_weight(0.25)) == pytest.approx((0.5 * 2 + 1.5 * 4) / 2)


def test_sir_and_air_true_kl_variant_is_zero_for_identical_augmentations_and_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    z_i, z_j, z_o, adv_i, adv_j = (torch.randn(8, 5, generator=g) for _ in range(5))
    assert sir(z_i, z_i, z_o, form="kl") == 0 and air(adv_i, adv_i, z_i, z_i, z_o, form="kl") == 0
    assert sir(z_i, z_j, z_o, form="kl") > 0 and air(adv_i, adv_j, z_i, z_j, z_o, form="kl") > 0
    # a true KL: equal to the divergence computed by hand from the two normalised distributions
    p = torch.softmax(torch.cosine_similarity(z_i, z_o) / 0.5, dim=0)
    q = torch.softmax(torch.cosine_similarity(z_j, z_o) / 0.5, dim=0)
    assert sir(z_i, z_j, z_o, form="kl") == pytest.approx(float((p * (p / q).log()).sum()), rel=1e-5)


def test_air_as_published_is_the_authors_kl_div_call_and_the_default():
    """AIR.py's `AIR_Loss.forward`, step by step with its own calls: F.kl_div(p_i, log p_j, log_target=True,
    reduction="sum") on the diagonal softmaxes, the AIR product left unnormalised. Not a KL: it is not zero for
    identical augmentations."""
    g = torch.Generator().manual_seed(0)
    z_i, z_j, z_o, adv_i, adv_j = (torch.randn(8, 5, generator=g) for _ in range(5))
    n = [nn.functional.normalize(z, dim=-1) for z in (z_i, z_j, z_o, adv_i, adv_j)]
    zi, zj, zo, ai, aj = n

    def diagonal_softmax(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return nn.functional.softmax(torch.diagonal(a @ b.T / 0.5), -1)

    sir_authors = nn.functional.kl_div(diagonal_softmax(zi, zo), torch.log(diagonal_softmax(zj, zo)), log_target=True,
                                       reduction="sum")
    product_i = diagonal_softmax(ai, zo) * diagonal_softmax(ai, zi)
    product_j = diagonal_softmax(aj, zo) * diagonal_softmax(aj, zj)
    air_authors = nn.functional.kl_div(product_i, torch.log(product_j), log_target=True, reduction="sum")
    assert sir(z_i, z_j, z_o) == pytest.approx(float(sir_authors), rel=1e-5)
    assert air(adv_i, adv_j, z_i, z_j, z_o) == pytest.approx(float(air_authors), rel=1e-5)
    assert sir(z_i, z_i, z_o) != 0
    assert ACLConfig(air=True).air_form == "published"
    assert ACLConfig(air=True, air_form="kl").name == "ACL-AIR (true KL)"


def test_representational_divergence():
    h = torch.randn(6, 10, generator=torch.Generator().manual_seed(0))
    for mode in ("minmax", "softmax"):
        assert representational_divergence(h, h, mode) == pytest.approx(0.0, abs=1e-6)
        assert representational_divergence(h + torch.randn_like(h), h, mode) > 0
    with pytest.raises(ValueError, match="normalisation"):
        representational_divergence(h, h, "l2")


def test_dual_batchnorm_keeps_separate_running_statistics():
    torch.manual_seed(0)
    model = ResNet(1, width=2, blocks_per_stage=1).train()
    stem_bn = model.stem[1]
    low, high = torch.rand(8, 1, 12, 12) * 0.1, 0.9 + torch.rand(8, 1, 12, 12) * 0.1
    model(low, bn="normal")
    model(high, bn="pgd")
    normal, pgd = stem_bn.normal, stem_bn.pgd
    assert normal.num_batches_tracked == 1 and pgd.num_batches_tracked == 1
    assert not torch.allclose(normal.running_mean, pgd.running_mean)
    conv = model.stem[0]
    for bn, x in ((normal, low), (pgd, high)):  # each branch's statistics are those of the batch it saw
        expected = 0.1 * conv((x - model.mean) / model.std).mean(dim=(0, 2, 3))  # from 0, momentum 0.1
        torch.testing.assert_close(bn.running_mean, expected.detach())
    with pytest.raises(ValueError, match="Unknown BatchNorm branch"):
        model(low, bn="adv")


def test_augment_draws_per_sample_views_in_range(digits):
    rgb = digits[:8].repeat(1, 3, 1, 1) * torch.tensor([1.0, 0.5, 0.2]).view(1, 3, 1, 1)
    for x in (digits[:8], rgb):
        view = augment(x, 1.0, torch.Generator().manual_seed(0))
        assert view.shape == x.shape and view.min() >= 0 and view.max() <= 1
        assert torch.equal(view, augment(x, 1.0, torch.Generator().manual_seed(0)))
        twice = augment(x[:1].expand(8, -1, -1, -1), 1.0, torch.Generator().manual_seed(1))
        assert len({tuple(v.flatten().tolist()) for v in twice}) == 8  # one random draw per sample
    # strength 0: no crop, no jitter, only the flip
    plain = augment(rgb, 0.0, torch.Generator().manual_seed(0))
    for v, x in zip(plain, rgb):
        assert torch.allclose(v, x, atol=1e-5) or torch.allclose(v, x.flip(-1), atol=1e-5)


def test_dynacl_strength_follows_the_schedule():
    assert [dynacl_strength(e, 200) for e in (1, 50, 51, 101, 200)] == [1.0, 1.0, 0.75, 0.5, 0.25]
    assert [dynacl_strength(e, 4, interval=1) for e in (1, 2, 3, 4)] == [1.0, 0.75, 0.5, 0.25]
    with pytest.raises(ValueError):
        dynacl_strength(0, 10)


def test_rcs_picks_the_batch_aligned_with_the_validation_gradient_and_restores_the_head():
    head = nn.Linear(4, 3, bias=False)
    original = head.weight.detach().clone()
    target = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    directions = {0: -target, 1: torch.randn(3, 4) * 5, 2: target}  # batch 2's gradient is the validation one's
    batches = [torch.arange(0, 4), torch.arange(4, 8), torch.arange(8, 12)]

    def batch_loss(batch: torch.Tensor) -> torch.Tensor:
        return (head.weight * directions[int(batch[0]) // 4]).sum()  # gradient: the batch's direction

    def validation_loss() -> torch.Tensor:
        return (head.weight * target).sum() + 0.5 * head.weight.pow(2).sum()

    picked = greedy_batch_selection(head, batches, batch_loss, validation_loss, budget=6, lr=0.1)
    assert picked[:4].tolist() == [8, 9, 10, 11]  # the aligned batch first
    assert len(picked) == 6  # the second pick is cut to the budget
    assert torch.equal(head.weight, original)
    with pytest.raises(ValueError, match="budget"):
        greedy_batch_selection(head, batches, batch_loss, validation_loss, budget=13)


def test_rcs_selects_the_exact_budget_and_leaves_the_model_untouched(digit_data, digits):
    config = ACLConfig(rcs=RCSConfig(warmup=0, interval=1), epochs=1, attack_steps=1, **TINY)
    model = build_model(config, digit_data)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    candidates = torch.arange(4, 44)
    selected = select_coreset(model, digits, candidates, digits[:4], 21, config, 1.0, torch.Generator().manual_seed(0))
    assert len(selected) == 21 and len(set(selected.tolist())) == 21 and set(selected.tolist()) <= set(range(4, 44))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="Unknown ACL method"):
        ACLConfig(method="simclr")
    with pytest.raises(ValueError, match=r"fraction = 0.0: must be in \(0, 1\]"):
        RCSConfig(fraction=0.0)
    with pytest.raises(ValueError, match="fraction"):
        RCSConfig(fraction=1.5)
    with pytest.raises(ValueError, match="warm-up"):
        ACLConfig(rcs=RCSConfig(warmup=5), epochs=5)
    with pytest.raises(ValueError, match="eps"):
        ACLConfig(eps=8)


def test_pretrain_records_history_caches_and_plugs_into_the_downstream_protocols(tmp_path, monkeypatch, mnist):
    monkeypatch.setenv("CROPKIT_CACHE", str(tmp_path))
    settings = dict(n_train=40, epochs=3, attack_steps=1, **TINY)
    rcs = RCSConfig(fraction=0.25, warmup=1, interval=2, validation_fraction=0.1)
    trained = pretrain_acl("dynacl", air=True, rcs=rcs, anneal_interval=1, progress=False, **settings)
    history = trained.history
    assert [h["examples"] for h in history] == [36, 9, 9]  # 4 held out for validation; 25% of 36 after warm-up
    assert history[0]["selection_seconds"] == 0 and history[1]["selection_seconds"] > 0
    assert history[2]["selection_seconds"] == 0  # the next selection would be at epoch 4
    assert [h["strength"] for h in history] == pytest.approx([1.0, 2 / 3, 1 / 3])
    assert all(h["seconds"] >= h["selection_seconds"] for h in history) and {"sir", "air"} <= set(history[0])
    assert history[1]["flops"] > history[2]["flops"] > 0  # the selection's FLOPs count towards RCS's cost
    assert trained.examples_trained == 54 and trained.config.name == "DynACL-AIR-RCS (k=0.25)"

    cached = pretrain_acl("dynacl", air=True, rcs=rcs, anneal_interval=1, progress=False, **settings)
    assert cached.history == history
    assert all(torch.equal(a, b) for a, b in zip(cached.model.state_dict().values(), trained.model.state_dict().values()))

    encoder = trained.encoder()
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())
    x = mnist[1].take(8).tensors()[0].requires_grad_(True)
    features = encoder(x)
    torch.testing.assert_close(features, trained.model.backbone.eval()(x, bn="pgd"))
    pipeline = Pipeline(None, encoder, nn.Linear(encoder.feature_dim, 10))
    pipeline(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # attacks reach the input through the encoder


def test_untrained_encoder_is_the_frozen_seeded_start_of_pre_training(mnist):
    settings = dict(n_train=40, **TINY)
    encoder = untrained_encoder(**settings)
    assert encoder.name == "random init" and encoder.feature_dim == 8 * TINY["width"]
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())
    start = build_model(ACLConfig(**settings), mnist[0].take(40, seed=0)).backbone
    assert all(torch.equal(a, b) for a, b in zip(encoder.parameters(), start.parameters()))
    first = encoder.backbone.stem[1]  # its BatchNorm: the `pgd` branch measured on the images, `normal` untouched
    assert first.pgd.num_batches_tracked == 1 and first.pgd.running_mean.abs().sum() > 0
    assert torch.equal(first.normal.running_mean, start.stem[1].normal.running_mean)
    other_seed = untrained_encoder(**(settings | {"seed": 1}))
    assert not torch.equal(encoder.backbone.stem[0].weight, other_seed.backbone.stem[0].weight)


def test_pretrain_resumes_after_an_interruption(tmp_path, monkeypatch, interrupted_after_first_checkpoint):
    monkeypatch.setenv("CROPKIT_CACHE", str(tmp_path / "resumed"))
    settings = dict(n_train=16, epochs=2, attack_steps=1, progress=False, **TINY)
    with interrupted_after_first_checkpoint():
        pretrain_acl("acl", **settings)
    resumed = pretrain_acl("acl", **settings)
    monkeypatch.setenv("CROPKIT_CACHE", str(tmp_path / "straight"))
    straight = pretrain_acl("acl", **settings)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    assert all(torch.equal(a, b) for a, b in zip(resumed.model.state_dict().values(),
                                                  straight.model.state_dict().values()))


@pytest.mark.parametrize("method, strength", [("acl", 1.0), ("dynacl", 0.25)])
def test_air_total_is_the_official_unhalved_sum(digit_data, digits, method, strength):
    config = ACLConfig(method=method, air=True, epochs=1, attack_steps=1, **TINY)
    model = build_model(config, digit_data).train()
    w = dynacl_weight(strength) if method == "dynacl" else 0.0  # AIR.py: (1-w) L_nat + (1+w) L_adv + 0.5 SIR + 0.5 AIR
    loss, parts = training_loss(model, digits[:8], config, strength, w, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and set(parts) == {"l_nat", "l_adv", "sir", "air"}
    expected = (1 - w) * parts["l_nat"] + (1 + w) * parts["l_adv"] + 0.5 * parts["sir"] + 0.5 * parts["air"]
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    two, four, one, three = (torch.tensor(v) for v in (2.0, 4.0, 1.0, 3.0))
    assert air_objective(two, four, 0.5, one, three) == 0.5 * 2 + 1.5 * 4 + 0.5 * 1 + 0.5 * 3
    plain, plain_parts = training_loss(model, digits[:8], ACLConfig(method=method, epochs=1, attack_steps=1, **TINY),
                                       strength, w, torch.Generator().manual_seed(0))
    halved = ((1 - w) * plain_parts["l_nat"] + (1 + w) * plain_parts["l_adv"]) / 2  # DynACL without AIR: halved
    assert plain.item() == pytest.approx(halved, rel=1e-5)


def test_adversarial_views_leave_the_pgd_running_statistics_alone(digit_data, digits):
    config = ACLConfig(method="acl", epochs=1, attack_steps=3, **TINY)
    model = build_model(config, digit_data).train()
    norms = [m for m in model.modules() if isinstance(m, DualBatchNorm)]
    before = [m.pgd.running_mean.clone() for m in norms]
    training_loss(model, digits[:8], config, 1.0, 0.0, torch.Generator().manual_seed(0))
    assert model.training
    # the 3 attack steps ran in eval mode; the one training forward of the adversarial views updated `pgd` once
    assert all(m.pgd.num_batches_tracked == 1 and m.normal.num_batches_tracked == 1 for m in norms)
    assert all(not torch.equal(m.pgd.running_mean, b) for m, b in zip(norms, before))


def test_rcs_scores_batches_by_the_linear_layers_mean_gradients_as_the_official_code():
    head = nn.Sequential(nn.Linear(2, 2, bias=False), nn.BatchNorm1d(2))
    validation = torch.tensor([[2.0, 0.0], [0.0, 0.0]])  # column means (1, 0)
    directions = {0: torch.tensor([[1.0, 0.0], [1.0, 0.0]]),  # full inner product 2, column means' 1
                  1: torch.tensor([[0.0, 0.0], [3.0, 0.0]])}  # full inner product 0, column means' 1.5
    batches = [torch.arange(0, 2), torch.arange(2, 4)]

    def batch_loss(batch: torch.Tensor) -> torch.Tensor:  # the BatchNorm's gradient must not count
        return (head[0].weight * directions[int(batch[0]) // 2]).sum() + 100 * head[1].weight.sum()

    def validation_loss() -> torch.Tensor:
        return (head[0].weight * validation).sum() + head[1].weight.sum()

    assert greedy_batch_selection(head, batches, batch_loss, validation_loss, budget=2).tolist() == [2, 3]


def test_rcs_selection_uses_the_official_branches_loss_and_validation_attack(digit_data, digits, monkeypatch):
    config = ACLConfig(method="dynacl", air=True, rcs=RCSConfig(warmup=0, interval=1), epochs=1, attack_steps=1, **TINY)
    model = build_model(config, digit_data)
    validation = digits[:4]
    clean_branches, regularisers, validation_attacks = [], [], []
    forward = model.forward

    def spy(x: torch.Tensor, bn: str, swap: bool = False) -> torch.Tensor:
        if x.data_ptr() == validation.data_ptr():
            clean_branches.append(bn)
        return forward(x, bn, swap)

    def attack(*args, **kwargs):
        validation_attacks.append((kwargs["steps"], kwargs["step"]))
        return linf_ascent(*args, **kwargs)

    monkeypatch.setattr(model, "forward", spy)
    monkeypatch.setattr(acl, "sir", lambda *args, **kwargs: regularisers.append("sir") or sir(*args, **kwargs))
    monkeypatch.setattr(rcs, "linf_ascent", attack)
    select_coreset(model, digits, torch.arange(4, 44), validation, 21, config, 1.0, torch.Generator().manual_seed(0))
    assert clean_branches and set(clean_branches) == {"normal"}  # RD's clean side through `normal`, never `pgd`
    assert not regularisers  # a candidate batch's gradient is that of ACL's loss, not AIR's objective
    assert validation_attacks and all(steps == 3 and step == pytest.approx(1.25 * 0.1 / 3)  # 10/255 / 3 at 8/255
                                      for steps, step in validation_attacks)


def test_dynacl_trains_with_the_authors_momentum_encoder(digit_data, digits):
    """train_DynACL.py: the second view of each pair (the attack's too) goes through a key encoder with no gradient,
    updated as key = 0.99 key + 0.01 query before each step, and the key encoder is the one used downstream. ACL and
    DynACL-AIR (AIR's code) have none."""
    assert ACLConfig(method="dynacl").momentum == 0.99
    assert ACLConfig(method="acl").momentum is None and ACLConfig(method="dynacl", air=True).momentum is None
    assert ACLConfig(method="dynacl", momentum=None).name == "DynACL (no momentum encoder)"
    config = ACLConfig(method="dynacl", epochs=1, attack_steps=2, **TINY)
    model = build_model(config, digit_data).train()
    assert model.key is not None and not any(p.requires_grad for p in model.key.parameters())
    assert model.backbone is model.key.backbone  # downstream takes the key encoder
    through_key = []
    model.key.register_forward_hook(lambda module, args, out: through_key.append(len(args[0])))
    loss, _ = training_loss(model, digits[:8], config, 1.0, 0.0, torch.Generator().manual_seed(0))
    assert through_key == [8, 8, 8, 8]  # two attack steps, the natural and the adversarial views: 8 second views each
    loss.backward()
    assert all(p.grad is None for p in model.key.parameters())
    with torch.no_grad():
        for p in model.query.parameters():
            p.add_(1.0)
    before = [(k.clone(), q.clone()) for k, q in zip(model.key.parameters(), model.query.parameters())]
    model.update_key()
    for (k, q), now in zip(before, model.key.parameters()):
        torch.testing.assert_close(now, 0.99 * k + 0.01 * q)


def test_dynacl_weight_steps_one_epoch_before_its_strength():
    """train_DynACL.py steps the weight at epoch // 50 (epoch 50) and the augmentation at epoch 51; AIR's
    pretraining.py weights DynACL-AIR by the strength, so both step at 51."""
    dyn, dyn_air = ACLConfig(method="dynacl", epochs=200), ACLConfig(method="dynacl", air=True, epochs=200)
    assert acl.adversarial_weight(dyn, 49) == 0 and dynacl_strength(50, 200) == 1.0
    assert acl.adversarial_weight(dyn, 50) == pytest.approx(2 / 3 * 0.25) and dynacl_strength(51, 200) == 0.75
    assert acl.adversarial_weight(dyn_air, 50) == 0
    assert acl.adversarial_weight(dyn_air, 51) == pytest.approx(2 / 3 * 0.25)
    assert acl.adversarial_weight(ACLConfig(method="acl", epochs=200), 150) == 0


def test_projection_head_is_the_authors_proj_head():
    """`proj_head` of their models/resnet_multi_bn.py: fc1 with a bias, fc2 and fc3 without, each followed by a dual
    BatchNorm (the last one too), ReLU between."""
    layers = list(ACLModel(ResNet(1, width=2, blocks_per_stage=1)).head.layers)
    linears = [m for m in layers if isinstance(m, nn.Linear)]
    assert [m.bias is not None for m in linears] == [True, False, False]
    assert isinstance(layers[-1], DualBatchNorm)
    assert [type(m).__name__ for m in layers] == ["Linear", "DualBatchNorm", "ReLU"] * 2 + ["Linear", "DualBatchNorm"]
