"""Robust fine-tuning (AFT, TeCoA, PMG-AFT, TRADES) and the CLIP zero-shot setting, on tiny offline models."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cropkit.core.validate import InputError
from cropkit.finetune import robust as finetune
from cropkit.finetune.robust import FinetuneConfig, finetune_loss, finetune_robust, kl_divergence, method_pipeline
from cropkit.foundation import Pipeline
from cropkit.foundation.clip import TEMPLATE, load_clip
from cropkit.foundation.heads import CosineHead


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CROPKIT_CACHE", str(tmp_path))
    return tmp_path


def changed(before: torch.nn.Module, after: torch.nn.Module) -> set[str]:
    """Names of the parameters that differ between two copies of a pipeline (a cosine head compared by its head)."""
    if isinstance(after.head, CosineHead) and not isinstance(before.head, CosineHead):
        after = Pipeline(after.preprocessor, after.foundation, after.head.head)
    theirs = dict(after.named_parameters())
    return {name for name, p in before.named_parameters() if not torch.equal(p, theirs[name])}


def test_pmg_aft_kl_terms_vanish_at_the_original_model_without_attack(tiny_pipeline, mnist):
    x, y = mnist[1].take(32).tensors()
    guide = method_pipeline(tiny_pipeline, "pmg-aft")
    model = copy.deepcopy(guide)
    _, parts = finetune_loss(model, guide, FinetuneConfig(method="pmg-aft", eps=0.0), x, y)
    assert parts["kl_guide"] == pytest.approx(0, abs=1e-5) and parts["kl_clean"] == pytest.approx(0, abs=1e-5)
    _, parts = finetune_loss(model, guide, FinetuneConfig(method="pmg-aft", eps=0.1), x, y)
    assert parts["kl_clean"] > 1e-3  # an attack moves the prediction; the guide sees the same x_adv, so it agrees
    assert parts["kl_guide"] == pytest.approx(0, abs=1e-5)
    with torch.no_grad():
        model.head.head.linear.weight[0] *= -1  # one class vector turned round: the cosines change
    _, parts = finetune_loss(model, guide, FinetuneConfig(method="pmg-aft", eps=0.0), x, y)
    assert parts["kl_guide"] > 1e-3


def spy_on_attacks(monkeypatch) -> list[tuple[float, torch.Tensor]]:
    """Record, for every attack `finetune_loss` makes, its loss at the clean input and the examples it returns."""
    made, real = [], finetune.linf_ascent

    def attack(loss_of_input, x, eps, **kwargs):
        made.append((loss_of_input(x).item(), real(loss_of_input, x, eps, **kwargs)))
        return made[-1][1]

    monkeypatch.setattr(finetune, "linf_ascent", attack)
    return made


def test_pmg_aft_is_its_code_on_cosine_logits_for_clip(tiny_clip_dir, mnist, monkeypatch):
    clip = load_clip(tiny_clip_dir).pipeline([str(i) for i in range(10)])
    guide = method_pipeline(clip, "pmg-aft")
    model = copy.deepcopy(guide)
    with torch.no_grad():
        model.foundation.projection.weight.add_(0.5 * torch.randn_like(model.foundation.projection.weight))
    x, y = mnist[1].take(8).tensors()

    def cosine(pipeline: torch.nn.Module, v: torch.Tensor) -> torch.Tensor:  # PMG_AFT.py's logits: no logit scale
        return F.normalize(pipeline.foundation(v), dim=-1) @ clip.head.text.T

    assert torch.allclose(cosine(guide, x), clip(x) / clip.head.logit_scale, atol=1e-6)
    loss, parts = finetune_loss(model, guide, FinetuneConfig(method="pmg-aft", eps=0.0), x, y)
    ours, original = cosine(model, x), cosine(guide, x).softmax(dim=1)
    # nn.KLDivLoss(reduction="sum")(log_softmax(adversarial output), softmax(original output))
    kl_guide = (original * (original.log() - ours.log_softmax(dim=1))).sum()
    assert parts["adv_ce"] == pytest.approx(F.cross_entropy(ours, y).item(), rel=1e-4)
    assert parts["kl_guide"] == pytest.approx(kl_guide.item(), rel=1e-4) and parts["kl_clean"] == pytest.approx(0)
    assert loss.item() == pytest.approx(parts["adv_ce"] + parts["kl_guide"], rel=1e-4)
    made = spy_on_attacks(monkeypatch)
    finetune_loss(model, guide, FinetuneConfig(method="pmg-aft", eps=0.01, attack_steps=1), x, y)
    assert made[0][0] == pytest.approx(F.cross_entropy(ours, y).item(), rel=1e-4)  # its PGD: CE on cosine logits


def test_tecoa_and_pmg_aft_train_and_are_deployed_on_a_probes_cosine_logits(tiny_pipeline, mnist, cache):
    """PMG-AFT on a linear probe's logits / 100 collapsed to 20% clean accuracy (notebook 06): its code, and
    TeCoA's, work on CLIP's cosine logits, so the kit gives them the probe's cosines (PMG-AFT x 1, TeCoA x 100,
    as their code), and the fine-tuned pipeline keeps them."""
    x, y = mnist[1].take(16).tensors()
    features, head = tiny_pipeline.features(x), tiny_pipeline.head
    by_hand = F.normalize((features - head.shift) / head.scale, dim=1) @ F.normalize(head.linear.weight, dim=1).T
    assert torch.allclose(head.cosine(features), by_hand, atol=1e-6)  # the bias plays no part
    config = FinetuneConfig(method="pmg-aft", epochs=1, n_train=32, batch_size=16, attack_steps=1, lr=1e-3)
    result = finetune_robust(tiny_pipeline, mnist[0], config, progress=False)
    tuned = result.pipeline
    assert isinstance(tuned.head, CosineHead) and torch.equal(tuned.head.head.linear.weight, head.linear.weight)
    logits = tuned(x)
    assert logits.abs().max() <= 1 + 1e-6
    assert torch.allclose(logits, tuned.head.head.cosine(tuned.features(x)), atol=1e-6)
    _, parts = finetune_loss(copy.deepcopy(tuned), method_pipeline(tiny_pipeline, "pmg-aft"), replace(config, eps=0.0), x, y)
    assert parts["adv_ce"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-4)
    tecoa = method_pipeline(tiny_pipeline, "tecoa")
    assert torch.allclose(tecoa(x), 100 * head.cosine(features), atol=1e-5)  # TeCoA: CLIP's logit scale x cosines
    with pytest.raises(InputError, match="no cosine"):
        finetune_robust(Pipeline(None, tiny_pipeline.foundation, nn.Sequential(nn.Linear(32, 10))), mnist[0], config)


def test_trades_is_robustssl_trades_loss(mnist, monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))
    x, y = mnist[1].take(16).tensors()
    made = spy_on_attacks(monkeypatch)
    loss, parts = finetune_loss(model.train(), None, FinetuneConfig(method="trades", eps=0.1, attack_steps=2), x, y)
    assert model[2].num_batches_tracked == 2  # one clean and one adversarial forward in train mode, as trades_loss
    clean, adversarial = model(x), model(made[0][1])  # train mode: batch statistics, the same outputs again
    p = clean.softmax(dim=1)
    kl = (p * (p.log() - adversarial.log_softmax(dim=1))).sum() / len(x)  # KL(P(x) || P(x_adv)), batch mean
    assert parts["clean_ce"] == pytest.approx(F.cross_entropy(clean, y).item(), rel=1e-4)
    assert parts["kl"] == pytest.approx(kl.item(), rel=1e-4)
    assert loss.item() == pytest.approx(parts["clean_ce"] + 6 * parts["kl"], rel=1e-4)


def test_kl_divergence_is_a_true_kl():
    p, q = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    expected = (p.softmax(1) * (p.log_softmax(1) - q.log_softmax(1))).sum()
    assert kl_divergence(p, q, "sum") == pytest.approx(expected.item())
    assert kl_divergence(p, p, "sum") == pytest.approx(0, abs=1e-7)


@pytest.mark.parametrize("method, head_trains", [("aft", True), ("tecoa", False)])
def test_finetuning_changes_only_the_intended_parameters(tiny_pipeline, mnist, cache, method, head_trains):
    original = copy.deepcopy(tiny_pipeline)
    config = FinetuneConfig(method=method, last_blocks=1, epochs=1, n_train=64, batch_size=32, attack_steps=1,
                            lr=1e-3)
    result = finetune_robust(tiny_pipeline, mnist[0], config, progress=False)
    assert not changed(original, tiny_pipeline), "the pipeline passed in must be left as it is"
    moved = changed(original, result.pipeline)
    assert all(n.startswith(("foundation.encoder.layers.0.", "foundation.encoder.layernorm.", "head."))
               for n in moved), moved
    assert any(n.startswith("foundation.encoder.layers.0.") for n in moved)
    assert not any(n.startswith("foundation.encoder.embeddings.") for n in moved)
    assert any(n.startswith("head.") for n in moved) == head_trains
    entry = result.history[0]
    assert entry["examples"] == 64 and entry["flops"] > 0 and entry["trainable_parameters"] > 0
    assert 0 <= entry["train_adv_accuracy"] <= 1  # what notebook 06 draws to show whether robustness is rising
    assert not any(p.requires_grad for p in result.pipeline.parameters())


@pytest.mark.parametrize("method", ["aft", "tecoa", "pmg-aft", "trades"])
def test_every_method_reports_clean_accuracy_beside_its_robust_training_accuracy(tiny_pipeline, mnist, method):
    """Robust training accuracy alone hid label leaking in notebook 06 (35% on the training PGD examples, 17%
    clean): every method's step also reports the clean accuracy of the same batch."""
    x, y = mnist[0].tensors()
    x, y = x[:32], y[:32]
    model = copy.deepcopy(tiny_pipeline).requires_grad_(True)
    _, parts = finetune_loss(model, tiny_pipeline, FinetuneConfig(method=method, attack_steps=1), x, y,
                             torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert parts["clean_accuracy"] == (model(x).argmax(1) == y).float().mean().item()
    assert 0 <= parts["adv_accuracy"] <= 1


def test_eps_warmup_grows_the_attack_radius_to_eps_then_holds_it(tiny_pipeline, mnist, cache, monkeypatch):
    config = FinetuneConfig(eps=0.1, epochs=2, eps_warmup_epochs=1, n_train=64, batch_size=16, attack_steps=2)
    assert [config.radius(step, 4) for step in range(6)] == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])
    assert FinetuneConfig(eps=0.1).radius(0, 4) == 0.1  # no warmup: full eps from the first step
    seen = []
    real = finetune.linf_ascent

    def recorded(loss, x, eps, *, steps, step, generator=None):
        seen.append((eps, step))
        return real(loss, x, eps, steps=steps, step=step, generator=generator)

    monkeypatch.setattr(finetune, "linf_ascent", recorded)
    result = finetune_robust(tiny_pipeline, mnist[0], config, progress=False)
    assert [eps for eps, _ in seen] == pytest.approx([0.025, 0.05, 0.075, 0.1] + [0.1] * 4)
    assert all(step == pytest.approx(2.5 * eps / 2) for eps, step in seen)  # the step size scales with the radius
    assert [h["train_eps"] for h in result.history] == pytest.approx([0.0625, 0.1])
    with pytest.raises(ValueError, match="eps_warmup_epochs = 3"):
        FinetuneConfig(epochs=2, eps_warmup_epochs=3)


def test_notebooks_fine_tune_with_the_recipe_the_search_chose():
    """Notebooks 06 and 07 default to `investigations/finetune_recipe.json`'s choice for every method."""
    import ast
    import json

    from cropkit.core.paths import project_root
    from cropkit.runs.profiles import notebook_parameters, numbered_notebooks

    chosen = json.loads((project_root() / "investigations" / "finetune_recipe.json").read_text())["chosen"]
    for path in numbered_notebooks():
        p = {k: ast.literal_eval(v) for k, v in notebook_parameters(path).items()}
        if "ft_lr" not in p:
            continue
        for method, recipe in chosen.items():
            used = {"start": p["ft_start"][method], "lr": p["ft_lr"][method], "attack_steps": p["ft_steps"][method],
                    "eps_warmup_epochs": p["ft_eps_warmup"][method], "epochs": p["ft_epochs"],
                    "n_train": p["n_ft_train"], "batch_size": p["ft_batch_size"]}
            assert used == recipe, f"{path.name}: {method} runs {used}, the search chose {recipe}"


def test_finetuning_resumes_to_the_same_weights_and_is_cached(tiny_pipeline, mnist, cache,
                                                              interrupted_after_first_checkpoint):
    config = FinetuneConfig(method="pmg-aft", epochs=2, n_train=64, batch_size=32, attack_steps=1, lr=1e-3)
    with interrupted_after_first_checkpoint():
        finetune_robust(tiny_pipeline, mnist[0], config, progress=False)
    resumed = finetune_robust(tiny_pipeline, mnist[0], config, progress=False)
    straight = finetune_robust(tiny_pipeline, mnist[0], config, progress=False, force=True)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    assert not changed(resumed.pipeline, straight.pipeline)
    cached = finetune_robust(tiny_pipeline, mnist[0], config, progress=False)
    assert cached.path == straight.path and not changed(cached.pipeline, straight.pipeline)


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="Unknown fine-tuning method"):
        FinetuneConfig(method="sgd")
    with pytest.raises(ValueError, match="eps"):
        FinetuneConfig(eps=8)
    with pytest.raises(ValueError, match="last_blocks"):
        FinetuneConfig(last_blocks=0)


def test_clip_zero_shot_pipeline_offline_and_tecoa_keeps_the_text_head(tiny_clip_dir, mnist, cache):
    clip = load_clip(tiny_clip_dir)
    classes = [str(i) for i in range(10)]
    pipeline = clip.pipeline(classes)
    x, y = mnist[1].take(8).tensors()
    logits = pipeline(x)
    image = clip.encoder(x)
    assert logits.shape == (8, 10) and torch.allclose(image.norm(dim=1), torch.ones(8), atol=1e-5)
    assert torch.allclose(logits, clip.model.logit_scale.exp() * image @ pipeline.head.text.T, atol=1e-5)
    with pytest.raises(ValueError, match="template"):
        clip.head(classes, template="a photo")
    other = clip.head(["cat", "dog"], TEMPLATE)
    assert other.text.shape[0] == 2 and not torch.allclose(other.text[0], other.text[1])

    config = FinetuneConfig(method="tecoa", eps=4 / 255, last_blocks=1, epochs=1, n_train=32, batch_size=16,
                            attack_steps=1, lr=1e-3)
    tuned = finetune_robust(pipeline, mnist[0], config, progress=False).pipeline
    moved = changed(pipeline, tuned)
    assert moved and all(n.startswith(("foundation.vision.encoder.layers.1.", "foundation.vision.post_layernorm.",
                                       "foundation.projection.")) for n in moved), moved
    assert isinstance(tuned.head, CosineHead) and torch.equal(tuned.head.head.text, pipeline.head.text)
    assert torch.allclose(tuned.head(image), pipeline.head(image), atol=1e-5)  # TeCoA's logits are CLIP's
