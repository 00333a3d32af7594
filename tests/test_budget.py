"""`cropkit plan`: the per-run table and total for the paper profile, the workload models against the kit's own
steps, work shared through the cache counted once, and the quick profile's estimate against measured time."""

from __future__ import annotations

import os
import re

import pytest
import torch

from cropkit.__main__ import main
from cropkit.cropd.config import PreprocessorConfig
from cropkit.cropd.train import preprocessor_dir
from cropkit.data import load_dataset
from cropkit.eval.attacks import pgd
from cropkit.runs.budget import calibrate, estimate, facts, passes
from cropkit.runs.profiles import available_profiles
from cropkit.runs.reproduce import reproduce

PAPER_RUNS = ["00_quickstart", "01_theory_bound"] + [
    f"02_main_results:{d}" for d in ("cifar10", "cifar100", "svhn", "cifar2", "imagenette", "tiny-imagenet")] + [
    "03_lambda_ablation", "04_cross_dataset_transfer", "05_acl_rcs_air", "06_robust_finetuning", "07_cost",
    "08_robustness_audit", "09_capacity", "10_samples_per_class", "11_radius"]
# The quick profile's estimate on this machine (FLOPs over the FLOP/s `calibrate` measures here, plus the fixed
# cost of each run) must lie within this factor of the measured wall-clock, either way.
QUICK_FACTOR = 3.0


def test_plan_prints_the_paper_profile_per_run_and_in_total(capsys):
    assert main(["plan", "--profile", "paper", "--closed-form"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line and line[0].isalnum()}
    assert [name for name in rows if name not in ("notebook", "total", "Profile", "Under")] == PAPER_RUNS
    hours = float(rows["total"][3])
    assert 10 < hours < 100 and hours == pytest.approx(sum(float(rows[r][3]) for r in PAPER_RUNS), abs=0.05)
    assert re.search(r"Profile paper: [\d.]+ hours on one H100 SXM at 35% MFU", out)
    assert re.search(r"Under torchrun .* 8 GPUs [\d.]+ h", out)
    assert re.search(r"Under torchrun .*8 GPUs [\d.]+ h", out)
    assert float(rows["total"][5]) == pytest.approx(0.170 + 0.169 + 0.246 + 0.099 + 0.248 + 1.318, abs=0.01)
    assert 30 < float(rows["total"][4]) < 80  # GB: evaluation batches of 256 through ViT-MAE-Large fit an H100


def test_every_profile_has_a_plan():
    for name in available_profiles():
        plan = estimate(name, measure=False)
        assert len(plan.runs) >= 9 and plan.seconds() > 0 and all(r.flops() > 0 for r in plan.runs), name


def test_dataset_facts_are_what_the_loaders_read():
    for name in ("mnist5k", "digits"):
        known = facts.dataset_facts(name)
        train, test = load_dataset(name, "train"), load_dataset(name, "test")
        assert (known.train, known.test, known.classes) == (len(train), len(test), train.num_classes), name
        assert (known.channels, known.image_size, known.image_size) == train.image_shape
    subset = facts.dataset_facts("digits[3,5]")  # a class subset: its share of the images, as for balanced classes
    assert subset.classes == 2 and subset.train == pytest.approx(len(load_dataset("digits[3,5]", "train")), rel=0.05)
    assert facts.dataset_facts("cifar2").train == 10000 and facts.dataset_facts("cifar2").classes == 2


def test_forward_flops_are_the_closed_form_of_the_counted_model():
    large = facts.foundation_network("facebook/vit-mae-large", 32, 3)
    assert large.forward_flops == pytest.approx(123.1e9, rel=1e-3)  # 224x224, patch 16, whatever the input size
    ae = facts.autoencoder_network("vit-small", 3, 32)
    assert 0.9 < ae.encoder_share < 1 and ae.parameters == 22_324_464


def test_measured_pass_counts_agree_with_the_closed_form():
    """The closed forms are what the plan prints; the kit's own steps, counted, must stay within 10% of them."""
    ae = facts.autoencoder_network("conv", 1, 28)
    checks = {
        "CRoPD step": (passes.measured_preprocessor_passes("cropd", "conv", 1, 28, 16, 64),
                       passes.preprocessor_passes("cropd", ae.encoder_share)),
        "PGD-10": (passes.measured_attack_passes("pgd", 10), passes.attack_passes(pgd(0.1, 10), 10, 0.3)),
        "AFT with PGD-10": (passes.measured_finetune_passes("aft", 10), passes.finetune_passes("aft", 10)),
    }
    for name, (measured, closed) in checks.items():
        assert measured == pytest.approx(closed, rel=0.1), name


def test_work_shared_through_the_cache_is_counted_once(tmp_path, monkeypatch):
    monkeypatch.setenv("CROPKIT_CACHE", str(tmp_path))
    plan = estimate("quick", only=["02", "08"], measure=False)
    first, audit = plan.runs
    assert {j.key.kind for j in audit.cached if isinstance(j.key, PreprocessorConfig)} == {"recon", "cropd"}
    assert not any(j.what.startswith("train") for j in audit.jobs)
    alone = estimate("quick", only=["08"], measure=False).runs[0]
    assert alone.flops("train") > audit.flops("train") and alone.flops("eval") == audit.flops("eval")
    trained = next(j.key for j in first.jobs if j.what.startswith("train Recon"))
    preprocessor_dir(trained).mkdir(parents=True)  # as if it were in the cache
    again = estimate("quick", only=["02"], measure=False, respect_cache=True).runs[0]
    assert trained in {j.key for j in again.cached} and again.flops("train") < first.flops("train")


def test_quick_estimate_is_within_a_factor_of_the_measured_time(tiny_foundation_dir, tmp_path, monkeypatch):
    """Notebook 03 of the quick profile, shrunk (the digits, two lambdas, one epoch, 128 test images, the tiny
    foundation model so that nothing needs pre-training): the estimate at this machine's measured FLOP/s against
    the run's wall-clock, both on one thread (a second only contends for shared cores at these sizes)."""
    monkeypatch.delenv("SMOKE_TEST", raising=False)  # the quick profile's code, as the estimate assumes
    monkeypatch.setenv("CROPKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    overrides = {"dataset": "digits", "foundation": str(tiny_foundation_dir), "lambdas": [0.0, 1.0], "ae_epochs": 1,
                 "seeds": [0],
                 "n_eval": 128}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        throughput = calibrate()
    finally:
        torch.set_num_threads(threads)
    plan = estimate("quick", only=["03"], overrides=overrides, throughput=throughput, measure=False)
    (run,) = reproduce("quick", only=["03"], overrides=overrides, out=tmp_path)
    assert run.status == "ok", run.error
    print(f"{throughput / 1e9:.2f} GFLOP/s; estimated {plan.seconds():.0f} s, measured {run.seconds:.0f} s")
    assert 1 / QUICK_FACTOR <= run.seconds / plan.seconds() <= QUICK_FACTOR


def test_torchrun_shares_keep_shared_training_on_one_gpu(monkeypatch):
    plan = estimate("paper", measure=False)
    queues = plan.schedule(8)
    names = [[r.name for r in q] for q in queues]
    assert sorted(sum(names, [])) == sorted(PAPER_RUNS)  # every run once
    together = next(q for q in names if "01_theory_bound" in q)  # they share CIFAR-10's pre-processors
    assert {"02_main_results:cifar10", "03_lambda_ablation", "04_cross_dataset_transfer",
            "08_robustness_audit"} <= set(together)
    assert {"06_robust_finetuning", "07_cost"} <= set(next(q for q in names if "07_cost" in q))  # fine-tuned models
    assert plan.makespan(8) <= plan.makespan(2) < plan.seconds()
    from cropkit.runs.profiles import plan as runs_of
    from cropkit.runs.reproduce import _torchrun_share

    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    mine = _torchrun_share("paper", None, None, runs_of("paper"))
    assert [r.name for r in mine] == names[1] and os.environ["CUDA_VISIBLE_DEVICES"] == "5"
