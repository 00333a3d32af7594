"""The empirical check of the CRoPD bound: terms measured on a real pipeline, kappa fitted on known data."""

from __future__ import annotations

import pytest
import torch

from cropkit.losses import fgsm_rs, linf_ascent
from cropkit.models.autoencoder import ConvAutoEncoder
from cropkit.protocols import fit_slf
from cropkit.theory import BoundTerms, bound_terms, fit_bound


def terms(name: str, l_con: list[float], ratio: float, clean: float = 0.3) -> BoundTerms:
    """Terms whose per-example gap is `ratio` x L_con."""
    con = torch.tensor(l_con)
    return BoundTerms(name, torch.full_like(con, clean), clean + ratio * con, {"fgsm": con / 2, "pgd": con})


def test_kappa_is_the_largest_gap_to_l_con_ratio_and_the_bound_holds_with_it():
    family = [terms("a", [1.0, 2.0, 3.0], 2.0), terms("b", [2.0, 3.0, 4.0], 1.5), terms("c", [3.0, 4.0, 5.0], 1.8)]
    fit = fit_bound(family, n_bootstrap=200)
    assert fit.kappa == pytest.approx(2.0)
    assert fit.interval[0] <= 2.0 <= fit.interval[1] + 1e-9
    gaps, cons = torch.tensor([4.0, 4.5, 7.2]), torch.tensor([2.0, 3.0, 4.0])
    assert fit.slope == pytest.approx(float(gaps @ cons / (cons @ cons)))
    assert fit.spearman == pytest.approx(1.0)
    assert (fit.table["slack"] >= -1e-6).all() and fit.table["slack"].min() == pytest.approx(0.0, abs=1e-6)
    assert fit_bound(family, l_con_attack="fgsm").kappa == pytest.approx(4.0)  # the weaker attack's L_con is half
    assert "kappa" in fit.statement()


def test_fit_bound_rejects_too_few_models_unpaired_examples_or_a_zero_l_con():
    with pytest.raises(ValueError, match="at least three"):
        fit_bound([terms("a", [1.0], 1.0), terms("b", [2.0], 1.0)])
    with pytest.raises(ValueError, match="same examples"):
        fit_bound([terms("a", [1.0], 1.0), terms("b", [1.0], 1.0), terms("c", [1.0, 2.0], 1.0)])
    with pytest.raises(ValueError, match="positive"):
        fit_bound([terms("a", [1.0], 1.0), terms("b", [2.0], 1.0), terms("c", [0.0], 1.0)])


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
    data = test.take(96)
    measured = bound_terms(pipeline, data, 0.1, name="untrained AE", ce_steps=5, restarts=2, con_steps=5,
                           batch_size=48)
    assert (measured.adversarial_ce >= measured.clean_ce).all() and measured.gap.mean() > 0.05
    assert measured.l_con["pgd"].mean() > measured.l_con["fgsm"].mean()
    assert all(torch.isfinite(t).all() for t in (measured.clean_ce, *measured.l_con.values()))
    at_zero = bound_terms(pipeline, data, 0.0, name="eps 0", ce_steps=2, restarts=1, con_steps=2, batch_size=48)
    assert torch.equal(at_zero.clean_ce, measured.clean_ce) and float(at_zero.gap.abs().max()) == 0.0
    assert at_zero.l_con["fgsm"].mean() < measured.l_con["fgsm"].mean()
    with pytest.raises(ValueError, match="encoder"):
        bound_terms(fit_slf(None, tiny_foundation, train.take(200)), data, 0.1, name="Identity")
