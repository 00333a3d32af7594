"""Data parallelism: two gloo processes under torchrun give what one process gives.

One torchrun launch (tests/distributed_worker.py) serves every test here: starting two Python processes costs
more than the work itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import cropkit
from cropkit.core import checkpoint, distributed
from cropkit.core.checkpoint import save_weights
from cropkit.cropd.losses import contrastive_loss
from cropkit.cropd.train import train_preprocessor
from cropkit.eval.evaluate import evaluate

sys.path.insert(0, str(Path(__file__).parent))
from distributed_worker import ATTACKS, CONFIG, EVAL_BATCH, eval_data  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """Both sides on one thread, so that no result depends on how a product was split across threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, random_pipeline, one_thread):
    """(one-process results, two-process results, the folder of the two-process run)."""
    out = tmp_path_factory.mktemp("ddp")
    save_weights(random_pipeline, out / "pipeline", {})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CROPKIT_CACHE", str(out / "one-process"))
        one = {"fresh": train_preprocessor(CONFIG, progress=False),
               "records": evaluate(random_pipeline, eval_data(), ATTACKS, model_name="tiny", batch_size=EVAL_BATCH,
                                   device="cpu")}
        # A one-process run dies after its first checkpoint; the two processes resume it.
        mp.setenv("CROPKIT_CACHE", str(out / "resumed"))
        real_save = checkpoint.save_training_state

        def save_then_die(*args, **kwargs):
            real_save(*args, **kwargs)
            raise KeyboardInterrupt

        mp.setattr(checkpoint, "save_training_state", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            train_preprocessor(CONFIG, progress=False)
    root = Path(cropkit.__file__).parents[1]  # the children import the cropkit this process imported
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(Path(__file__).parent / "distributed_worker.py"), str(out)]
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    return one, torch.load(out / "two-process.pt", weights_only=True), out


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4, msg=lambda m: f"{k}: {m}")


def test_two_processes_train_what_one_process_trains(runs):
    one, two, _ = runs
    assert_same_weights(one["fresh"].model.state_dict(), two["fresh"]["weights"])
    for ours, theirs in zip(one["fresh"].history, two["fresh"]["history"], strict=True):
        for key in ("train_recon", "train_l_con", "test_psnr", "test_l_con"):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-4), key


def test_rank_0_alone_writes_checkpoints_and_two_processes_resume_a_one_process_run(runs):
    one, two, out = runs
    assert json.loads((out / "saves-0.json").read_text()) == 3  # two epochs afresh, the second of the resumed run
    assert json.loads((out / "saves-1.json").read_text()) == 0
    assert [h["epoch"] for h in two["resumed"]["history"]] == [1, 2]
    assert_same_weights(one["fresh"].model.state_dict(), two["resumed"]["weights"])


def test_sharded_evaluation_gives_the_unsharded_accuracies(runs):
    one, two, out = runs
    # appended by rank 0 alone: one record per attack and their per-example worst case
    assert len((out / "records.jsonl").read_text().splitlines()) == len(ATTACKS) + 1
    for ours, theirs in zip(one["records"], two["records"], strict=True):
        assert (ours["processes"], theirs["processes"]) == (1, 2)
        assert ours["attack"] == theirs["attack"]
        assert 0 < ours["robust_accuracy"] < ours["clean_accuracy"]  # the comparison is not between trivial zeros
        assert (ours["clean_accuracy"], ours["robust_accuracy"]) == (theirs["clean_accuracy"], theirs["robust_accuracy"])


def test_ranks_agree_on_the_smallest_value(runs):
    assert runs[1]["smallest"] == 3  # rank 0 offered 3, rank 1 offered 4


def test_shards_cover_a_batch_in_order(monkeypatch):
    assert distributed.shard(29) == slice(0, 29)  # one process: the whole batch
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    shares = [range(29)[distributed.shard(29, r)] for r in range(2)]
    assert shares == [range(0, 14), range(14, 29)]


def test_contrastive_loss_of_a_shard_is_its_rows_of_the_whole():
    torch.manual_seed(0)
    z_adv, z, labels = torch.randn(10, 4), torch.randn(10, 4), torch.randint(0, 3, (10,))
    whole = contrastive_loss(z_adv, z, labels, reduction="none")
    torch.testing.assert_close(contrastive_loss(z_adv[4:7], z, labels, reduction="none", first=4), whole[4:7])
    torch.testing.assert_close(contrastive_loss(z_adv[:3], z, first=0, reduction="none"),
                               contrastive_loss(z_adv, z, reduction="none")[:3])
    with pytest.raises(ValueError, match="anchors from row 8"):
        contrastive_loss(z_adv[:3], z, first=8)



def test_a_batch_too_small_to_share_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("CROPKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    with pytest.raises(ValueError, match="2 ranks cannot share a batch of 1 images"):
        train_preprocessor(replace(CONFIG, batch_size=1436), progress=False)  # 1437 digits = 1436 + 1
