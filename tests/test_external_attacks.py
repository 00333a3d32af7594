"""Any attack a robustness researcher brings: a torchattacks attack configured by hand, and L2 threat models through
`AttackSpec` (issue 31, item 1). Evaluated end to end on a small pipeline, as the kit's own specs are."""

from __future__ import annotations

import pytest
import torch
import torchattacks
from torch import nn

from cropkit.core.validate import AttackOutputError, InputError, check_adversarial
from cropkit.data import load_dataset
from cropkit.eval.attacks import AttackSpec, ExternalAttack, pgd
from cropkit.eval.evaluate import evaluate


@pytest.fixture(scope="module")
def setting():
    torch.manual_seed(0)
    data = load_dataset("digits", "test").take(48, seed=0)
    pipeline = nn.Sequential(nn.Flatten(), nn.Linear(data.images[0].numel(), data.num_classes))
    return pipeline.eval(), data


def test_a_hand_configured_torchattacks_pgdl2_is_evaluated_end_to_end_and_recorded(setting, tmp_path):
    pipeline, data = setting
    attack = torchattacks.PGDL2(pipeline, eps=1.5, alpha=0.3, steps=7)
    spec = AttackSpec("pgd", 1.5, steps=7, step=0.3, norm="L2")
    records = evaluate(pipeline, data, [attack, spec], model_name="linear", results=tmp_path / "r.jsonl")
    external, own, worst = records
    assert external["attack"] == "PGDL2" and own["attack"] == "PGD-7 (L2)" and worst["attack"] == "worst case"
    assert {r["threat_model"] for r in records} == {"L2"} and external["eps"] == own["eps"] == 1.5
    assert external["attack_settings"]["class"] == "PGDL2" and external["attack_settings"]["steps"] == 7
    assert external["robust_accuracy"] < external["clean_accuracy"]  # the attack did something
    # the same attack, the same starts: the kit's PGD-L2 spec and the hand-built one agree
    assert external["robust_accuracy"] == own["robust_accuracy"]
    linf = evaluate(pipeline, data, [pgd(0.1)], model_name="linear")[0]
    assert linf["threat_model"] == "Linf" and linf["attack"] == "PGD-10"


def test_an_attack_bound_to_another_model_or_without_a_radius_is_refused_before_work(setting):
    pipeline, data = setting
    other = nn.Sequential(nn.Flatten(), nn.Linear(data.images[0].numel(), data.num_classes))
    with pytest.raises(InputError, match=r"^attacks\[0\] = 'PGDL2': is bound to another model"):
        evaluate(pipeline, data, [torchattacks.PGDL2(other, eps=1.0)], model_name="linear")
    with pytest.raises(InputError, match=r"^attack = 'CW': has no radius"):
        evaluate(pipeline, data, [torchattacks.CW(pipeline)], model_name="linear")


def test_l2_is_refused_for_kinds_without_an_l2_form_and_l2_radii_may_exceed_one():
    with pytest.raises(InputError, match=r"^AttackSpec.kind = 'fgsm': has no L2 form"):
        AttackSpec("fgsm", 0.5, norm="L2")
    assert AttackSpec("apgd", 2.0, norm="L2").label == "APGD-CE+T-10 (L2)"
    with pytest.raises(InputError, match="eps"):
        AttackSpec("pgd", 2.0)  # an L-inf radius of 2 is a mistake (8 for 8/255)


def test_the_ball_check_measures_the_attacks_norm():
    x = torch.full((2, 1, 4, 4), 0.5)
    x_adv = x.clone()
    x_adv[:, :, :, 0] += 0.1  # L-inf distance 0.1, L2 distance 0.2
    check_adversarial(x_adv, x, 0.1, "a", "Linf")
    check_adversarial(x_adv, x, 0.21, "a", "L2")
    with pytest.raises(AttackOutputError, match="L2 distance 0.2"):
        check_adversarial(x_adv, x, 0.15, "a", "L2")


def test_external_attack_settings_key_the_cache_apart(setting):
    pipeline, _ = setting
    a, b = (ExternalAttack(torchattacks.PGDL2(pipeline, eps=1.0, steps=s)) for s in (5, 6))
    assert a.settings(10) != b.settings(10) and a.settings(10)["norm"] == "L2"


def test_the_strong_attacks_label_names_what_ran_on_few_classes():
    spec = AttackSpec("apgd", 0.1)
    assert [spec.label_for(k) for k in (10, 3, 2)] == ["APGD-CE+T-10", "APGD-CE+DLR-10", "APGD-CE-10"]
    assert [c.name for c in spec.components(3)] == ["APGD-CE", "APGD-DLR"]
    assert [c.name for c in spec.components(2)] == ["APGD-CE"]
