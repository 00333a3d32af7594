"""The evaluator's fast paths give the numbers of its plain one: torch.compile, and bf16 autocast for attacks.

No GPU is needed: the CUDA path's bf16 autocast is exercised through the CPU's bf16 autocast.
"""

from __future__ import annotations

import pytest
import torch

from cropkit.core import distributed, precision
from cropkit.data import load_dataset
from cropkit.eval.attacks import pgd
from cropkit.eval.evaluate import attack_batches, evaluate, fitting_batch, largest_batch, predict
from cropkit.foundation.heads import extract_features

EPS = 0.002  # the random-feature pipeline is far from robust: PGD at this radius leaves about a third of the digits


def CPU_BF16(device: torch.device) -> torch.autocast:
    """bf16 autocast on the CPU: stands in for CUDA's bf16 so these tests exercise the reduced-precision paths."""
    return torch.autocast("cpu", dtype=torch.bfloat16)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "test").take(64)


def test_compiled_evaluation_matches_eager(random_pipeline, digits):
    """Through torch.compile's graph capture (dynamo and AOTAutograd, forward and backward through the ViT).

    The "aot_eager" backend keeps the test at seconds; "inductor" adds code generation, minutes on a small CPU.
    """
    x, _ = digits.tensors()
    compiled = torch.compile(random_pipeline, backend="aot_eager")
    with torch.inference_mode():
        eager_logits, compiled_logits = random_pipeline(x), compiled(x)
    torch.testing.assert_close(compiled_logits, eager_logits)
    assert torch.equal(compiled_logits.argmax(1), eager_logits.argmax(1))
    eager, through_compile = (evaluate(random_pipeline, digits, [pgd(EPS, steps=3)], model_name="tiny", batch_size=32,
                                       device="cpu", compile=backend)[0] for backend in (None, "aot_eager"))
    assert (eager["compile"], through_compile["compile"]) == (None, "aot_eager")
    assert 0 < through_compile["robust_accuracy"] < through_compile["clean_accuracy"]
    assert (eager["clean_accuracy"], eager["robust_accuracy"]) == (through_compile["clean_accuracy"],
                                                                   through_compile["robust_accuracy"])


def test_attacks_under_bf16_autocast_get_fp32_logits_and_stay_in_the_ball(random_pipeline, digits, monkeypatch):
    x, y = digits.tensors()
    fp32_predictions = predict(random_pipeline, x)
    fp32_adversarial = attack_batches(random_pipeline, pgd(EPS, steps=3), x, y, n_classes=10, seed=0, batch_size=32)
    assert not any(m.training for m in random_pipeline.modules())  # the attack's wrapper left the mode alone
    monkeypatch.setattr(precision, "autocast", CPU_BF16)
    head_outputs, attack_inputs = [], []
    handle = random_pipeline.head.register_forward_hook(lambda module, args, out: head_outputs.append(out.dtype))
    real_loss = torch.nn.CrossEntropyLoss.forward
    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward",
                        lambda self, logits, target: attack_inputs.append(logits.dtype) or real_loss(self, logits, target))
    try:
        adversarial = attack_batches(random_pipeline, pgd(EPS, steps=3), x, y, n_classes=10, seed=0, batch_size=32)
        bf16_predictions = predict(random_pipeline, x)
    finally:
        handle.remove()
    assert set(head_outputs) == {torch.bfloat16}  # the model ran in bf16 ...
    assert attack_inputs and set(attack_inputs) == {torch.float32}  # ... and the attack's loss saw fp32 logits
    assert adversarial.dtype == torch.float32 and (adversarial - x).abs().max() <= EPS + 1e-6
    assert not torch.equal(adversarial, fp32_adversarial)  # the gradients really came from the bf16 model
    assert (bf16_predictions == fp32_predictions).float().mean() > 0.9


def test_features_for_a_head_are_extracted_in_the_precision_evaluate_scores_them_in(random_pipeline, digits,
                                                                                    monkeypatch):
    x = digits.tensors()[0]
    fp32 = extract_features(random_pipeline.foundation, x)
    monkeypatch.setattr(precision, "autocast", CPU_BF16)
    reduced = extract_features(random_pipeline.foundation, x)
    with torch.inference_mode(), CPU_BF16(x.device):
        expected = random_pipeline.foundation(x).float()
    assert reduced.dtype == torch.float32
    torch.testing.assert_close(reduced, expected)
    assert not torch.allclose(reduced, fp32, rtol=0, atol=1e-4)  # the bf16 forward really ran


def out_of_memory_above(capacity: int, tried: list[int]):
    """A stand-in attack step that runs out of memory for batches larger than `capacity`, noting each size."""
    def step(n: int) -> None:
        tried.append(n)
        if n > capacity:
            raise torch.OutOfMemoryError(f"batch {n} does not fit")
    return step


@pytest.mark.parametrize(("capacity", "start", "limit", "found", "tried"), [
    (300, 64, 2048, 256, [64, 128, 256, 512]),  # grows until it fails, keeps the last that fitted
    (5000, 64, 1024, 1024, [64, 128, 256, 512, 1024]),  # stops at the limit
    (40, 256, 2048, 32, [256, 128, 64, 32]),  # the start does not fit: halves until one does
])
def test_fitting_batch_finds_the_largest_power_of_two_that_fits(capacity, start, limit, found, tried):
    sizes: list[int] = []
    assert fitting_batch(out_of_memory_above(capacity, sizes), start, limit) == found
    assert sizes == tried


def test_fitting_batch_fails_clearly():
    with pytest.raises(torch.OutOfMemoryError):
        fitting_batch(out_of_memory_above(0, []), 4, 16)  # not even one example fits
    with pytest.raises(ValueError, match="start <= limit"):
        fitting_batch(out_of_memory_above(10, []), 64, 32)


def test_auto_batch_size_is_the_default_on_a_cpu_and_is_recorded(random_pipeline, digits):
    assert largest_batch(random_pipeline, digits.tensors()[0][:1], start=256) == 256
    record = evaluate(random_pipeline, digits, [pgd(EPS, steps=1)], model_name="tiny", device="cpu",
                      batch_size="auto")[0]
    assert record["batch_size"] == 256
    assert distributed.min_across(7) == 7  # one process: its own value
