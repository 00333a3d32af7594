"""The empirical check of the CRoPD bound: terms measured on a real pipeline, kappa fitted on known data."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cropkit.cropd.autoencoders import ConvAutoEncoder
from cropkit.cropd.bound import BoundTerms, bound_terms, cross_validate, fit_bound, holdout_slack, latent_similarity
from cropkit.cropd.losses import contrastive_terms
from cropkit.eval.ascent import fgsm_rs, linf_ascent
from cropkit.eval.protocols import fit_slf


def terms(name: str, quantity: list[float], ratio: float, clean: float = 0.3, floor: float = 2.0) -> BoundTerms:
    """Terms whose per-example gap is `ratio` x the increase of L_con, on top of a clean L_con `floor`."""
    increase = torch.tensor(quantity)
    return BoundTerms(name, torch.full_like(increase, clean), clean + ratio * increase,
                      {"fgsm": floor + increase / 2, "pgd": floor + increase}, torch.full_like(increase, floor))


def test_kappa_is_fitted_on_the_floor_free_increase_and_has_zero_slack_where_it_is_set():
    family = [terms("a", [1.0, 2.0, 3.0], 2.0), terms("b", [2.0, 3.0, 4.0], 1.5), terms("c", [3.0, 4.0, 5.0], 1.8)]
    fit = fit_bound(family, n_bootstrap=200)
    assert fit.kappa == pytest.approx(2.0) and fit.column == "increase (PGD)"
    assert fit.interval[0] <= 2.0 <= fit.interval[1] + 1e-9
    gaps, increases = torch.tensor([4.0, 4.5, 7.2]), torch.tensor([2.0, 3.0, 4.0])
    assert fit.slope == pytest.approx(float(gaps @ increases / (increases @ increases)))
    assert fit.spearman == pytest.approx(1.0)
    assert (fit.table["slack"] >= -1e-6).all() and fit.table["slack"].min() == pytest.approx(0.0, abs=1e-6)
    assert fit_bound(family, l_con_attack="fgsm").kappa == pytest.approx(4.0)  # the weaker attack's increase is half
    # On the raw L_con the floor (2.0) dominates: kappa is far smaller and says little about the gap.
    assert fit_bound(family, quantity="l_con").kappa == pytest.approx(7.2 / 6.0)
    assert "kappa" in fit.statement()


def test_the_check_reports_a_violation_out_of_sample():
    consistent = [terms(n, [1.0 + i, 2.0 + i, 1.5 + i] * 20, 1.0) for i, n in enumerate("abcd")]
    steep = terms("steep", [1.0, 2.0, 1.5] * 20, 3.0)  # its gap grows three times as fast as the others'
    table = cross_validate([*consistent, steep], n_bootstrap=300)
    verdicts = table.set_index("held_out")["verdict"]
    assert verdicts["steep"] == "violated"
    row = table.set_index("held_out").loc["steep"]
    assert row["slack_high"] < 0 and row["kappa"] == pytest.approx(1.0)
    assert (verdicts.drop("steep") != "violated").all()  # held out, the others are bounded by a kappa set by steep
    flat = terms("flat", [-0.5, 0.0, -0.2] * 20, 0.0, clean=0.3)
    moved = BoundTerms("moved without L_con", flat.clean_ce, flat.clean_ce + 1.0, flat.l_con, flat.l_con_clean)
    assert holdout_slack(consistent, moved, n_bootstrap=100)["verdict"] == "violated"  # no kappa can bound it


def test_fit_bound_rejects_too_few_models_or_unpaired_examples():
    with pytest.raises(ValueError, match="at least two"):
        fit_bound([terms("a", [1.0], 1.0)])
    with pytest.raises(ValueError, match="same examples"):
        fit_bound([terms("a", [1.0], 1.0), terms("b", [1.0], 1.0), terms("c", [1.0, 2.0], 1.0)])
    with pytest.raises(ValueError, match="at least three"):
        cross_validate([terms("a", [1.0], 1.0), terms("b", [1.0], 1.0)])


def test_multi_step_ascent_matches_fgsm_rs_at_one_step_and_beats_it_with_more(l_con_of_input):
    _, x, loss = l_con_of_input
    one = linf_ascent(loss, x, 0.1, generator=torch.Generator().manual_seed(3))
    assert torch.equal(one, fgsm_rs(loss, x, 0.1, generator=torch.Generator().manual_seed(3)))
    many = linf_ascent(loss, x, 0.1, steps=10, step=0.025, generator=torch.Generator().manual_seed(3))
    assert loss(many) > loss(one)
    assert (many - x).abs().max() <= 0.1 + 1e-6


def test_bound_terms_on_a_real_pipeline(tiny_foundation, mnist):
    train, test = mnist
    torch.manual_seed(0)
    pipeline = fit_slf(ConvAutoEncoder(1, 8, 16).eval(), tiny_foundation, train.take(1000))
    data = test.take(160)
    measured = bound_terms(pipeline, data, 0.1, name="untrained AE", ce_steps=5, restarts=2, con_steps=5,
                           batch_size=80)
    assert (measured.adversarial_ce >= measured.clean_ce).all() and measured.gap.mean() > 0.05
    assert measured.l_con["pgd"].mean() > measured.l_con["fgsm"].mean() > measured.l_con_clean.mean()
    assert all(torch.isfinite(t).all() for t in (measured.clean_ce, *measured.l_con.values()))
    at_zero = bound_terms(pipeline, data, 0.0, name="eps 0", ce_steps=2, restarts=1, con_steps=2, batch_size=80)
    assert torch.equal(at_zero.clean_ce, measured.clean_ce) and float(at_zero.gap.abs().max()) == 0.0
    assert torch.allclose(at_zero.quantity("fgsm", "increase"), torch.zeros(160), atol=1e-5)  # floor-free
    assert at_zero.l_con_clean.mean() > 1.0  # while the raw L_con sits on its floor
    with pytest.raises(ValueError, match="batches of 128"):
        bound_terms(pipeline, test.take(100), 0.1, name="too few")
    with pytest.raises(ValueError, match="encoder"):
        bound_terms(fit_slf(None, tiny_foundation, train.take(200)), data, 0.1, name="Identity")


def test_bound_terms_are_cached_by_weights_examples_and_settings(tiny_foundation, mnist, monkeypatch):
    """A second measurement of the same model on the same images replays the cached terms without attacking; other
    weights, other settings or `cache=False` measure again, and a damaged cache file is named, not decoded."""
    from cropkit.core.validate import CorruptFileError
    from cropkit.cropd import bound as theory

    train, test = mnist
    torch.manual_seed(0)
    pipeline = fit_slf(ConvAutoEncoder(1, 8, 16).eval(), tiny_foundation, train.take(500))
    data = test.take(128)
    settings = dict(name="AE", ce_steps=2, restarts=1, con_steps=2, batch_size=128)
    measured = bound_terms(pipeline, data, 0.1, **settings)
    assert len(list(theory.terms_dir().iterdir())) == 1
    calls = []
    monkeypatch.setattr(theory, "contrastive_terms", lambda *a, **k: calls.append(1) or contrastive_terms(*a, **k))
    replayed = bound_terms(pipeline, data, 0.1, **settings)
    assert calls == [] and replayed.name == "AE"
    for a, b in zip((measured.clean_ce, measured.adversarial_ce, measured.l_con_clean, *measured.l_con.values()),
                    (replayed.clean_ce, replayed.adversarial_ce, replayed.l_con_clean, *replayed.l_con.values())):
        assert torch.equal(a, b)
    bound_terms(pipeline, data, 0.1, **settings, cache=False)
    bound_terms(pipeline, data, 0.05, **settings)
    with torch.no_grad():
        next(pipeline.head.parameters()).add_(1.0)
    bound_terms(pipeline, data, 0.1, **settings)
    assert len(calls) == 3 * 2 and len(list(theory.terms_dir().iterdir())) == 3  # FGSM and PGD per measurement
    for path in theory.terms_dir().iterdir():
        path.write_bytes(b"not safetensors")
    with pytest.raises(CorruptFileError, match="rm "):
        bound_terms(pipeline, data, 0.1, **settings)


def test_latent_similarity_is_one_for_a_collapsed_encoder_and_low_for_a_spread_one():
    """A collapsed latent (every image to one direction) is what makes L_con unattackable: the notebook 11 flag."""
    class Encoder(nn.Module):
        def __init__(self, collapsed: bool) -> None:
            super().__init__()
            self.collapsed = collapsed
            self.w = nn.Parameter(torch.randn(16, 8, generator=torch.Generator().manual_seed(0)))

        def latent(self, x: torch.Tensor) -> torch.Tensor:
            z = x.flatten(1) @ self.w
            return torch.ones_like(z) + 0 * z if self.collapsed else z

    images = torch.randn(40, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    assert latent_similarity(Encoder(True), images, batch_size=16) == pytest.approx(1.0)
    assert abs(latent_similarity(Encoder(False), images, batch_size=16)) < 0.2
    with pytest.raises(ValueError, match="at least 2"):
        latent_similarity(Encoder(False), images[:1])
