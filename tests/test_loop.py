"""The pieces every training loop shares: batches, schedule, the guarded step, epoch means."""

import math

import pytest
import torch
from torch import nn

from cropkit.core.loop import RunningMeans, cosine_schedule, descend, shuffled_batches


def test_shuffled_batches_cover_every_index_once_and_follow_the_generator():
    batches = list(shuffled_batches(10, 4, torch.Generator().manual_seed(0)))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(torch.cat(batches).tolist()) == list(range(10))
    again = list(shuffled_batches(10, 4, torch.Generator().manual_seed(0)))
    assert all(torch.equal(a, b) for a, b in zip(batches, again))


def test_cosine_schedule_warms_up_linearly_then_decays_to_zero():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = cosine_schedule(optimizer, total_steps=12, warmup_steps=2)
    rates = []
    for _ in range(12):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert rates[:3] == pytest.approx([0.5, 1.0, 1.0])
    assert rates[7] == pytest.approx(0.5 * (1 + math.cos(math.pi * 5 / 10)))
    assert all(a >= b for a, b in zip(rates[2:], rates[3:]))
    assert scheduler.get_last_lr()[0] == pytest.approx(0.0)


def test_descend_takes_one_step_and_refuses_a_non_finite_loss_before_touching_the_weights():
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = cosine_schedule(optimizer, total_steps=4)
    before = model.weight.detach().clone()
    descend(model(torch.ones(2, 3)).sum(), optimizer, scheduler, name="run", epoch=0)
    assert not torch.equal(model.weight, before)
    assert scheduler.last_epoch == 1

    after_one = model.weight.detach().clone()
    with pytest.raises(FloatingPointError, match="run: loss became nan at epoch 3"):
        descend(model(torch.full((2, 3), float("nan"))).sum(), optimizer, scheduler, name="run", epoch=2)
    assert torch.equal(model.weight, after_one)
    assert scheduler.last_epoch == 1


def test_running_means_weight_each_batch_by_its_examples():
    means = RunningMeans()
    means.add({"loss": 1.0, "acc": 0.5}, 3)
    means.add({"loss": 3.0, "acc": 1.0}, 1)
    assert means.count == 4
    assert means.means("train_") == pytest.approx({"train_loss": 1.5, "train_acc": 0.625})


def test_snapshots_keep_every_epochs_weights_and_a_cached_run_serves_them(tmp_path, monkeypatch):
    """The frontier of notebook 07 reads a run's budgets from its per-epoch weights instead of retraining them."""
    from cropkit.cropd.config import PreprocessorConfig
    from cropkit.cropd.train import train_preprocessor

    monkeypatch.setenv("CROPKIT_CACHE", str(tmp_path))
    config = PreprocessorConfig(dataset="digits", width=4, latent_channels=8, epochs=3, batch_size=256)
    trained = train_preprocessor(config, progress=False)
    last = trained.at_epoch(3)
    assert all(torch.equal(a, b) for a, b in zip(last.state_dict().values(), trained.model.state_dict().values()))
    first = trained.at_epoch(1)
    assert not all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), last.state_dict().values()))
    cached = train_preprocessor(config, progress=False)  # served from the cache, snapshots included
    assert all(torch.equal(a, b) for a, b in zip(cached.at_epoch(1).state_dict().values(), first.state_dict().values()))
    assert not list(tmp_path.glob("preprocessors/*.epochs"))  # moved into the cached folder, not left beside it
    with pytest.raises(ValueError, match="epoch = 4"):
        trained.at_epoch(4)
