"""Throughput of the kit's loops against the naive loops a user would write without it, measured in one run.

    python benchmarks/run.py                 # small sizes, minutes on a CPU
    python benchmarks/run.py --size full     # larger batches and models (for a GPU)

Speed does not depend on the weights, so the stack is the embedded architecture (ViT-MAE foundation model, conv
auto-encoder, linear head) with random weights: nothing is downloaded or pre-trained. Each benchmark reports
images per second for the kit and for the naive loop, and their ratio: after a warm-up of each, the kit's and
the naive calls alternate and the fastest of each counts, so a change in the machine's load falls on both; the
tables go to
`benchmarks/results/<device>-<size>.{json,md}` and a log-log plot of how the kit's PGD cost grows with the work.
- PGD-10 evaluation. Kit: the evaluator's loop (`attack_batches` and `predict`: frozen parameters, so no weight
  gradients; clean pass under `inference_mode`; torchattacks PGD); `evaluate` adds its structural checks, two
  forward passes and one forward-backward of 32 images per call. Naive: parameters left trainable and a hand-written PGD loop calling
  `loss.backward()`, which fills every weight's `.grad` at every step; clean pass with autograd on.
- CRoPD training step (reconstruction + lambda L_con with FGSM-RS views). Kit: `cropkit.cropd.train.preprocessor_loss`
  (the FGSM takes the input's gradient only). Naive: the FGSM gradient from `loss.backward()`, which also fills
  every weight's `.grad` and backpropagates through the clean latent.
- AFT training step (robust fine-tuning of the foundation model, PGD-3 inside). Kit:
  `cropkit.finetune.robust.finetune_loss` (the attack steps take the input's gradient only). Naive: the attack steps
  call `loss.backward()`, computing every trainable weight's gradient at every step.
- SLF head, per epoch. Kit: the frozen stack's features computed once (`extract_features`), then each epoch
  trains the head on the cached tensor. Naive: each epoch recomputes the features through the trainable stack,
  and the backward runs through it.
- Scaling: the kit's PGD-10 time against the number of examples, and the kit's and the naive loop's against the
  foundation model's size (hidden width 64 to 512 at small size): the weight gradients the kit skips are matrix
  products, whose share of the work grows with the model, so the speed-up does too.
- Model FLOPs utilisation of the PGD loop (GPU only): the kit's PGD-10 (`attack_batches`, bf16 autocast) on
  ViT-MAE-Base and -Large at 224x224 (the published sizes, random weights), on the largest batch that fits
  (`cropkit.eval.evaluate.largest_batch`), FLOPs of one step (forward and input-gradient backward) counted by
  `torch.utils.flop_counter`, against the device's dense bf16 peak.
"""

from __future__ import annotations

import argparse
import copy
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import ViTMAEConfig, ViTMAEModel

from cropkit.core import precision
from cropkit.core.checkpoint import atomic_write_bytes, write_json
from cropkit.core.cost import measure
from cropkit.cropd.autoencoders import ConvAutoEncoder
from cropkit.cropd.config import PreprocessorConfig
from cropkit.cropd.losses import contrastive_loss, reconstruction_loss
from cropkit.cropd.train import preprocessor_loss
from cropkit.eval.attacks import pgd
from cropkit.eval.evaluate import attack_batches, largest_batch, predict
from cropkit.eval.records import device_name, library_versions
from cropkit.finetune.robust import FinetuneConfig, finetune_loss, unfreeze
from cropkit.foundation import FoundationModel, Pipeline
from cropkit.foundation.heads import LinearHead, extract_features
from cropkit.foundation.pretrain import MAEConfig, build_mae

EPS = 0.1


@dataclass(frozen=True)
class Size:
    images: int  # examples per PGD measurement
    slf_images: int  # training examples for the SLF epochs
    slf_epochs: int
    scaling_images: tuple[int, ...]  # the work axis of the scaling plot
    hidden_sizes: tuple[int, ...]  # the model-size axis
    mfu_batch_limit: int  # the MFU measurement attacks the largest batch that fits, up to this


SIZES = {"small": Size(128, 2000, 3, (32, 64, 128, 256), (64, 128, 256, 512), 32),
         "full": Size(1024, 20000, 5, (256, 512, 1024, 2048), (128, 256, 512, 768), 512)}
# The published ViT-MAE encoders (He et al. 2022; facebook/vit-mae-base, -large), 224x224 images, 16x16 patches.
VIT_MAE = {"ViT-MAE-Base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                            "intermediate_size": 3072},
           "ViT-MAE-Large": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                             "intermediate_size": 4096}}
# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from NVIDIA's data sheets; the first name found in the
# device's name applies, so the PCIe H100 comes before the SXM one.
BF16_PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4), ("A100", 312.0))


def random_stack(hidden_size: int = 128, device: str = "cpu") -> Pipeline:
    """The embedded architecture with random weights, frozen as the kit freezes it."""
    config = replace(MAEConfig(), hidden_size=hidden_size, num_heads=max(1, hidden_size // 32))
    foundation = FoundationModel(build_mae(config, num_channels=1).vit, [0.5], [0.5])
    torch.manual_seed(0)
    head = LinearHead(hidden_size, 10)
    return Pipeline(ConvAutoEncoder(1, 16, 64).requires_grad_(False), foundation, head.requires_grad_(False)).to(device)


def seconds(fn: Callable[[], object], device: str) -> float:
    """Wall-clock seconds of one call of `fn` (with the GPU's queue drained before and after)."""
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def timed(fn: Callable[[], object], device: str, repeats: int = 3) -> float:
    """Seconds for one call of `fn`: the fastest of `repeats` calls after a warm-up (the least noisy estimate)."""
    fn()
    return min(seconds(fn, device) for _ in range(repeats))


def timed_alternating(*fns: Callable[[], object], device: str, repeats: int = 3) -> list[float]:
    """`timed` for several loops (the kit's and the naive one), their calls alternated: a change in the machine's
    load (this CPU is shared) then falls on every side of a ratio instead of on one."""
    for fn in fns:
        fn()
    rounds = [[seconds(fn, device) for fn in fns] for _ in range(repeats)]
    return [min(column) for column in zip(*rounds)]


def naive_pgd_accuracy(model: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int) -> float:
    """PGD the way it is often written: trainable parameters, `loss.backward()`, clean pass with autograd on."""
    correct = model(x).argmax(1) == y
    alpha = 2.5 * eps / steps
    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        model.zero_grad()
        F.cross_entropy(model(x_adv), y).backward()
        x_adv = (x + (x_adv + alpha * x_adv.grad.sign() - x).clamp(-eps, eps)).clamp(0, 1)
    return float((correct & (model(x_adv).argmax(1) == y)).float().mean())


def kit_pgd_accuracy(model: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int) -> float:
    """The evaluator's path: clean predictions under inference_mode, torchattacks PGD on the frozen pipeline."""
    correct = predict(model, x) == y.cpu()
    x_adv = attack_batches(model, pgd(eps, steps), x.cpu()[correct], y.cpu()[correct], n_classes=10, seed=0,
                           batch_size=len(x))
    return float((predict(model, x_adv) == y.cpu()[correct]).sum()) / len(x)


def naive_cropd_loss(model: nn.Module, x: Tensor, y: Tensor, config: PreprocessorConfig) -> Tensor:
    """CRoPD's loss as often written: FGSM-RS through `loss.backward()` on a graph that is kept for reuse."""
    eps = config.eps
    z = model.latent(x)
    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1).requires_grad_(True)
    contrastive_loss(model.latent(x_adv), z, y, config.tau).backward(retain_graph=True)
    x_adv = (x + (x_adv + 1.25 * eps * x_adv.grad.sign() - x).clamp(-eps, eps)).clamp(0, 1).detach()
    model.zero_grad()
    return reconstruction_loss(model(x), x) + config.lam * contrastive_loss(model.latent(x_adv), z, y, config.tau)


def naive_aft_loss(model: nn.Module, x: Tensor, y: Tensor, config: FinetuneConfig) -> Tensor:
    """AFT's loss as often written: the PGD steps call `loss.backward()`, filling every weight's `.grad`."""
    eps, step = config.eps, config.step_size
    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(config.attack_steps):
        x_adv = x_adv.detach().requires_grad_(True)
        F.cross_entropy(model(x_adv), y).backward()
        x_adv = (x + (x_adv + step * x_adv.grad.sign() - x).clamp(-eps, eps)).clamp(0, 1)
    model.zero_grad()
    return F.cross_entropy(model(x_adv.detach()), y)


def head_epoch(head: nn.Module, features_of: Callable[[Tensor], Tensor], x: Tensor, y: Tensor,
               batch_size: int = 256) -> None:
    """One SGD epoch of a linear head on `features_of(batch)`."""
    optimizer = torch.optim.SGD(head.parameters(), lr=0.01)
    for index in torch.arange(len(x)).split(batch_size):
        loss = F.cross_entropy(head(features_of(x[index])), y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def bench_pgd(size: Size, device: str) -> dict[str, float]:
    kit = random_stack(device=device)
    naive = copy.deepcopy(kit).requires_grad_(True)
    x = torch.rand(size.images, 1, 28, 28, device=device)
    y = kit(x).argmax(1).detach()  # labels the model gets right, so every example is attacked
    kit_s, naive_s = timed_alternating(lambda: kit_pgd_accuracy(kit, x, y, EPS, 10),
                                       lambda: naive_pgd_accuracy(naive, x, y, EPS, 10), device=device)
    return {"kit_images_per_s": size.images / kit_s, "naive_images_per_s": size.images / naive_s,
            "ratio": naive_s / kit_s}


def bench_training_step(model: nn.Module, kit_loss: Callable[[Tensor, Tensor], Tensor],
                        naive_loss: Callable[[Tensor, Tensor], Tensor], batch_size: int, device: str,
                        steps: int = 5) -> dict[str, float]:
    """Images per second of `steps` AdamW steps on the kit's loss and on the naive one (same model, same data)."""
    torch.manual_seed(0)
    x = torch.rand(batch_size, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def train(loss_of: Callable[[Tensor, Tensor], Tensor]) -> None:
        for _ in range(steps):
            loss = loss_of(x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    kit_s, naive_s = timed_alternating(lambda: train(kit_loss), lambda: train(naive_loss), device=device)
    images = steps * batch_size
    return {"kit_images_per_s": images / kit_s, "naive_images_per_s": images / naive_s, "ratio": naive_s / kit_s}


def bench_cropd_step(device: str) -> dict[str, float]:
    config = PreprocessorConfig()
    torch.manual_seed(0)
    model = ConvAutoEncoder(1, config.width, config.latent_channels).to(device)
    return bench_training_step(model, lambda x, y: preprocessor_loss(model, config, x, y)[0],
                               lambda x, y: naive_cropd_loss(model, x, y, config), config.batch_size, device)


def bench_aft_step(device: str) -> dict[str, float]:
    config = FinetuneConfig(method="aft", eps=EPS, attack_steps=3)
    model = random_stack(device=device)
    unfreeze(model, config)
    return bench_training_step(model, lambda x, y: finetune_loss(model, None, config, x, y)[0],
                               lambda x, y: naive_aft_loss(model, x, y, config), config.batch_size, device)


def bench_slf(size: Size, device: str) -> dict[str, float]:
    kit = random_stack(device=device)
    naive = copy.deepcopy(kit).requires_grad_(True)
    x = torch.rand(size.slf_images, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (size.slf_images,), device=device)
    started = time.perf_counter()  # a one-off cost: measured once, cold
    features = extract_features(nn.Sequential(kit.preprocessor, kit.foundation), x).to(device)
    if device == "cuda":
        torch.cuda.synchronize()
    extract_s = time.perf_counter() - started
    kit_head, naive_head = LinearHead(features.shape[1], 10).to(device), LinearHead(features.shape[1], 10).to(device)
    kit_s, naive_s = timed_alternating(
        lambda: head_epoch(kit_head, lambda cached: cached, features, y),
        lambda: head_epoch(naive_head, lambda b: naive.foundation(naive.preprocessor(b)), x, y), device=device)
    epochs = size.slf_epochs
    return {"kit_epoch_s": kit_s, "naive_epoch_s": naive_s, "ratio_per_epoch": naive_s / kit_s,
            "feature_extraction_s": extract_s,
            f"ratio_over_{epochs}_epochs": epochs * naive_s / (extract_s + epochs * kit_s)}


def bench_scaling(size: Size, device: str) -> dict[str, list[list[float]]]:
    """PGD-10 seconds against the number of examples (kit, default model) and against the foundation model's size
    (kit and naive): the kit saves the weight gradients, whose share of the work grows with the model."""
    stack = random_stack(device=device)
    by_images = []
    for n in size.scaling_images:
        x = torch.rand(n, 1, 28, 28, device=device)
        y = stack(x).argmax(1).detach()
        by_images.append([n, timed(lambda: kit_pgd_accuracy(stack, x, y, EPS, 10), device)])
    by_model = []
    x = torch.rand(size.scaling_images[0], 1, 28, 28, device=device)
    for hidden in size.hidden_sizes:
        model = random_stack(hidden, device)
        naive = copy.deepcopy(model).requires_grad_(True)
        params = sum(p.numel() for p in model.foundation.parameters())
        y = model(x).argmax(1).detach()
        by_model.append([params, *timed_alternating(lambda: kit_pgd_accuracy(model, x, y, EPS, 10),
                                                    lambda: naive_pgd_accuracy(naive, x, y, EPS, 10), device=device)])
    return {"seconds_vs_images": by_images, "seconds_vs_foundation_parameters": by_model}


def bf16_peak_flops(device_name: str) -> float:
    """The dense bf16 peak (FLOP/s) of the GPU called `device_name`."""
    for name, tflops in BF16_PEAK_TFLOPS:
        if name in device_name:
            return tflops * 1e12
    raise ValueError(f"no bf16 peak known for {device_name!r}; add it to BF16_PEAK_TFLOPS")


def vit_mae_stack(sizes: dict[str, int], device: str) -> Pipeline:
    """Identity, a ViT-MAE encoder of `sizes` at 224x224 with random weights (nothing downloaded), a linear head."""
    torch.manual_seed(0)
    config = ViTMAEConfig(image_size=224, patch_size=16, num_channels=3, mask_ratio=0.0, **sizes)
    foundation = FoundationModel(ViTMAEModel(config), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    return Pipeline(None, foundation, LinearHead(config.hidden_size, 10).requires_grad_(False)).to(device)


def pgd_step_flops(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """FLOPs of one PGD step as the kit's attack runs it: forward and input gradient, under `precision.autocast`."""
    x = x.clone().requires_grad_(True)
    with measure() as cost, precision.autocast(x.device):
        torch.autograd.grad(F.cross_entropy(model(x).float(), y), x)
    return cost.flops


def pgd_mfu(sizes: dict[str, int], batch_limit: int, peak: float, device: str, steps: int = 10) -> dict[str, float]:
    """PGD-`steps` model FLOPs utilisation of a ViT-MAE of `sizes` against `peak` FLOP/s, on one batch: the
    largest that fits the GPU (`largest_batch`), up to `batch_limit` images."""
    model = vit_mae_stack(sizes, device)
    images = largest_batch(model, torch.rand(1, 3, 224, 224), start=16, limit=batch_limit)
    x = torch.rand(images, 3, 224, 224)  # on the CPU, as `evaluate` hands images over
    y = predict(model, x).clone()  # every example is attacked (a normal tensor, not an inference one)
    step_flops = pgd_step_flops(model, x.to(device), y.to(device))
    elapsed = timed(lambda: attack_batches(model, pgd(EPS, steps), x, y, n_classes=10, seed=0, batch_size=images),
                    device)
    return {"images": images, "pgd_step_tflop": step_flops / 1e12, "seconds": elapsed,
            "tflops_per_s": steps * step_flops / elapsed / 1e12, "bf16_peak_tflops": peak / 1e12,
            "mfu": steps * step_flops / elapsed / peak}


def bench_mfu(size: Size, device: str) -> dict[str, dict[str, float]]:
    """PGD-10 model FLOPs utilisation on ViT-MAE-Base and -Large against the GPU's bf16 peak."""
    peak = bf16_peak_flops(torch.cuda.get_device_name())
    results = {}
    for name, sizes in VIT_MAE.items():
        results[name] = pgd_mfu(sizes, size.mfu_batch_limit, peak, device)
        torch.cuda.empty_cache()  # the model of `pgd_mfu` is gone: return its memory before the next
    return results


def slope(points: list[list[float]]) -> float:
    """Least-squares exponent of the kit's seconds (column 1) against the work (column 0) on a log-log scale."""
    logs = torch.tensor(points).log()
    dx = logs[:, 0] - logs[:, 0].mean()
    return float((dx * (logs[:, 1] - logs[:, 1].mean())).sum() / (dx * dx).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    size = SIZES[args.size]
    started = time.perf_counter()
    results = {"pgd10_evaluation": bench_pgd(size, args.device), "cropd_training_step": bench_cropd_step(args.device),
               "aft_training_step": bench_aft_step(args.device), "slf_head": bench_slf(size, args.device)}
    scaling = bench_scaling(size, args.device)
    if args.device == "cuda":
        results["pgd10_mfu"] = bench_mfu(size, args.device)
        mfu_lines = [f"PGD-10 MFU, {name} 224x224, {r['images']} images, bf16 autocast: {r['tflops_per_s']:.0f} "
                     f"TFLOP/s = {100 * r['mfu']:.1f}% of the {r['bf16_peak_tflops']:.0f} TFLOP/s bf16 peak"
                     for name, r in results["pgd10_mfu"].items()]
    else:
        mfu_lines = ["PGD-10 MFU: not measured (it needs a CUDA GPU and its bf16 peak)."]
    device = device_name(args.device)
    pgd10 = results["pgd10_evaluation"]
    rows = [("PGD-10 evaluation", f"{pgd10['kit_images_per_s']:.1f} img/s",
             f"{pgd10['naive_images_per_s']:.1f} img/s", pgd10["ratio"]),

            ("CRoPD training step", f"{results['cropd_training_step']['kit_images_per_s']:.0f} img/s",
             f"{results['cropd_training_step']['naive_images_per_s']:.0f} img/s", results["cropd_training_step"]["ratio"]),
            ("AFT training step (PGD-3 inside)", f"{results['aft_training_step']['kit_images_per_s']:.1f} img/s",
             f"{results['aft_training_step']['naive_images_per_s']:.1f} img/s", results["aft_training_step"]["ratio"]),
            ("SLF head epoch (cached features)", f"{results['slf_head']['kit_epoch_s']:.3f} s",
             f"{results['slf_head']['naive_epoch_s']:.2f} s", results["slf_head"]["ratio_per_epoch"])]
    table = "\n".join([f"Device: {device}; size {args.size}; torch {torch.__version__}", "",
                        "| benchmark | kit | naive | speed-up |", "| --- | --- | --- | --- |",
                        *(f"| {name} | {kit} | {naive} | {ratio:.1f}x |" for name, kit, naive, ratio in rows), "",
                        f"SLF one-off feature extraction {results['slf_head']['feature_extraction_s']:.2f} s; "
                        f"over {size.slf_epochs} epochs, extraction included: "
                        f"{results['slf_head'][f'ratio_over_{size.slf_epochs}_epochs']:.1f}x.",
                        f"PGD-10 time grows as (examples)^{slope(scaling['seconds_vs_images']):.2f} and "
                        f"(foundation parameters)^{slope(scaling['seconds_vs_foundation_parameters']):.2f}.",
                        "PGD-10 speed-up over the naive loop by foundation-model size ("
                        f"{size.scaling_images[0]} images): " + ", ".join(
                            f"{params / 1e6:.1f}M parameters {naive_s / kit_s:.2f}x"
                            for params, kit_s, naive_s in scaling["seconds_vs_foundation_parameters"]) + ".",
                        *mfu_lines,
                        f"Whole benchmark: {time.perf_counter() - started:.0f} s."])
    print(table)
    slug = device.split(" ")[0] + ("-" + torch.cuda.get_device_name().replace(" ", "-") if args.device == "cuda" else "")
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"{slug}-{args.size}.json", {"device": device, "size": args.size, **results,
                                                       "scaling": scaling, "versions": library_versions(),
                                                       "platform": platform.platform()})
    atomic_write_bytes(args.out / f"{slug}-{args.size}.md", (table + "\n").encode())
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, (key, label) in zip(axes, [("seconds_vs_images", "examples attacked"),
                                       ("seconds_vs_foundation_parameters", "foundation-model parameters")]):
        points = torch.tensor(scaling[key])
        ax.loglog(points[:, 0], points[:, 1], "o-", label="kit")
        if points.shape[1] == 3:
            ax.loglog(points[:, 0], points[:, 2], "s--", label="naive")
            for x, kit_s, naive_s in points.tolist():
                ax.annotate(f"{naive_s / kit_s:.2f}x", (x, naive_s), textcoords="offset points", xytext=(0, 6),
                            ha="center", fontsize=8)
            ax.legend()
        ax.set(xlabel=label, ylabel="PGD-10 seconds", title=f"kit slope {slope(scaling[key]):.2f}")
    fig.suptitle(device, fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out / f"{slug}-{args.size}-scaling.png", dpi=130)


if __name__ == "__main__":
    main()
