"""Cost accounting: FLOP counts against hand counts, the measure context, and the closed-form ViT count."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import ViTMAEConfig, ViTMAEModel

from cropkit.core.cost import measure, total, trainable_parameters, vit_forward_flops
from cropkit.eval.ascent import linf_ascent


def test_linear_and_conv_flops_match_the_hand_count():
    torch.manual_seed(0)
    linear, conv = nn.Linear(64, 32), nn.Conv2d(3, 8, kernel_size=3, padding=1)
    x = torch.randn(16, 64, requires_grad=True)
    with measure(linear, examples=16) as cost:
        linear(x).sum().backward()
    # forward 2*n*in*out; backward twice that (gradient of the input and of the weight)
    assert cost.flops == 6 * 16 * 64 * 32
    assert cost.trainable_parameters == 64 * 32 + 32 and cost.examples == 16 and cost.seconds > 0
    images = torch.randn(4, 3, 10, 10)
    with torch.no_grad(), measure(conv) as cost:
        conv(images)
    assert cost.flops == 2 * 4 * 10 * 10 * 8 * 3 * 3 * 3


def test_measure_counts_attack_steps_through_autograd_grad():
    """torch's own FlopCounterMode breaks `autograd.grad` on inputs; the kit's counter must not."""
    linear = nn.Linear(8, 2).requires_grad_(False)
    x = torch.rand(5, 8)
    with measure() as one:
        linf_ascent(lambda v: linear(v).sum(), x, 0.1, steps=1)
    with measure() as three:
        linf_ascent(lambda v: linear(v).sum(), x, 0.1, steps=3)
    assert one.flops > 0 and three.flops == 3 * one.flops


def test_first_batch_counting_scales_to_the_count_of_every_operation():
    """The training loops count one batch per epoch (the counter costs about half again the step's time); scaled by
    the examples, a loop of equal steps and a short last batch gets the full count."""
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)), torch.rand(36, 16)

    def epoch(cost):
        for batch in x.split(8):  # 4 batches of 8 and one of 4
            with cost.batch(len(batch)):
                linf_ascent(lambda v: model(v).sum(), batch, 0.1, steps=2)
                model(batch).sum().backward()

    with measure(model, examples=36) as full:
        epoch(full)
    with measure(model, examples=36, count_flops="first-batch") as sampled:
        epoch(sampled)
    assert sampled.flops == pytest.approx(full.flops) and full.flops > 0
    assert sampled.fields()["flops_counted"].startswith("first batch") and "_sample" not in sampled.fields()
    with measure(model, examples=36, count_flops=False) as uncounted:
        epoch(uncounted)
    assert uncounted.flops != uncounted.flops  # NaN: not counted


def test_trainable_parameters_counts_only_what_trains_and_shared_ones_once():
    a = nn.Linear(4, 4)
    b = nn.Sequential(a, nn.Linear(4, 2).requires_grad_(False))
    assert trainable_parameters([a, b]) == 20


@pytest.mark.parametrize("size", [dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                                       image_size=32, patch_size=8),
                                  dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                       intermediate_size=3072, image_size=224, patch_size=16)])
def test_closed_form_vit_flops_match_the_counter(size):
    config = ViTMAEConfig(mask_ratio=0.0, **size)
    with torch.device("meta"):  # shapes only: no weights, no compute
        model = ViTMAEModel(config)
        images = torch.empty(1, 3, config.image_size, config.image_size)
    noise = torch.arange((config.image_size // config.patch_size) ** 2, dtype=torch.float32, device="meta")[None]
    with torch.no_grad(), measure() as cost:
        model(pixel_values=images, noise=noise)
    assert cost.flops == vit_forward_flops(image_size=config.image_size, patch_size=config.patch_size,
                                           hidden_size=config.hidden_size, num_layers=config.num_hidden_layers,
                                           intermediate_size=config.intermediate_size)


def test_total_sums_a_history_and_refuses_one_without_costs():
    history = [{"seconds": 1.0, "examples": 10, "flops": 5.0, "trainable_parameters": 3, "peak_memory_mb": 7.0},
               {"seconds": 2.0, "examples": 10, "flops": 5.0, "trainable_parameters": 3, "peak_memory_mb": 9.0}]
    assert total(history) == {"seconds": 3.0, "examples": 20, "flops": 10.0, "trainable_parameters": 3,
                              "peak_memory_mb": 9.0, "epochs": 2}
    with pytest.raises(ValueError, match="retrain"):
        total([{"seconds": 1.0}])
