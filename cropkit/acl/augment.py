"""The ACL family's augmentations at strength s, on whole batches with per-sample random parameters.

`augment(x, s, generator)` gives one random view of each image (docs/methods.md section 2): RandomResizedCrop with
area scale in [1 - 0.9s, 1] and aspect ratio in [3/4, 4/3] (bicubic) with a horizontal flip of probability 0.5;
ColorJitter(0.4s, 0.4s, 0.4s, 0.1s) with probability 0.8s; grayscale with probability 0.2s. Random parameters
are drawn from a CPU generator (reproducible anywhere) and applied as tensor ops on the images' device, so a
batch on the GPU is augmented on the GPU. The crop draws up to ten boxes per image and keeps the first that
fits, else takes the whole image, as torchvision does. Kit choices: the jitter's four operations run in a fixed
order (torchvision shuffles it), and one-channel images get brightness and contrast only (saturation, hue and
grayscale are the identity on them).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

CROP_ATTEMPTS = 10  # as torchvision's RandomResizedCrop, before it falls back to the whole image


def dynacl_strength(epoch: int, epochs: int, interval: int = 50) -> float:
    """DynACL's annealed strength for 1-based `epoch`: s = 1 - floor((epoch - 1) / interval) * interval / epochs."""
    if not 1 <= epoch <= epochs:
        raise ValueError(f"epoch must lie in 1..{epochs}, got {epoch}")
    if interval < 1:
        raise ValueError(f"interval must be >= 1, got {interval}")
    return 1 - ((epoch - 1) // interval) * interval / epochs


def augment(x: Tensor, strength: float, generator: torch.Generator) -> Tensor:
    """One random view of each image of the batch `x` (N, C, H, W) in [0, 1], at `strength` in [0, 1]."""
    if not 0 <= strength <= 1:
        raise ValueError(f"augmentation strength must lie in [0, 1], got {strength}")
    x = _resized_crop_and_flip(x, strength, generator)
    n = len(x)
    jitter = _bernoulli(0.8 * strength, n, generator)
    brightness, contrast, saturation = (_uniform(1 - 0.4 * strength, 1 + 0.4 * strength, n, generator)
                                        for _ in range(3))
    hue = _uniform(-0.1 * strength, 0.1 * strength, n, generator)
    gray = _bernoulli(0.2 * strength, n, generator)
    jitter, brightness, contrast, saturation, hue, gray = (
        t.to(x.device).view(-1, 1, 1, 1) for t in (jitter, brightness, contrast, saturation, hue, gray))
    jittered = (x * brightness).clamp(0, 1)
    jittered = _blend(jittered, _grayscale(jittered).mean(dim=(1, 2, 3), keepdim=True), contrast)
    if x.shape[1] == 3:
        jittered = _blend(jittered, _grayscale(jittered), saturation)
        jittered = _shift_hue(jittered, hue)
    x = torch.where(jitter, jittered, x)
    if x.shape[1] == 3:
        x = torch.where(gray, _grayscale(x).expand_as(x), x)
    return x


def _uniform(low: float, high: float, n: int, generator: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def _bernoulli(p: float, n: int, generator: torch.Generator) -> Tensor:
    return torch.rand(n, generator=generator) < p


def _resized_crop_and_flip(x: Tensor, strength: float, generator: torch.Generator) -> Tensor:
    """A random box of relative area in [1 - 0.9s, 1] and aspect in [3/4, 4/3], resized back; flipped with p 0.5."""
    n = len(x)
    area = _uniform(1 - 0.9 * strength, 1.0, n * CROP_ATTEMPTS, generator).view(n, CROP_ATTEMPTS)
    log_ratio = _uniform(math.log(3 / 4), math.log(4 / 3), n * CROP_ATTEMPTS, generator).view(n, CROP_ATTEMPTS)
    widths, heights = (area * log_ratio.exp()).sqrt(), (area / log_ratio.exp()).sqrt()
    fits = (widths <= 1) & (heights <= 1)
    first = fits.int().argmax(dim=1, keepdim=True)  # torchvision's first box that fits, else the whole image
    width = torch.where(fits.any(dim=1), widths.gather(1, first).squeeze(1), 1.0)
    height = torch.where(fits.any(dim=1), heights.gather(1, first).squeeze(1), 1.0)
    centre_x = (1 - width) * (2 * torch.rand(n, generator=generator) - 1)  # in [-(1 - w), 1 - w]: inside
    centre_y = (1 - height) * (2 * torch.rand(n, generator=generator) - 1)
    flip = torch.where(_bernoulli(0.5, n, generator), -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = width * flip, centre_x
    theta[:, 1, 1], theta[:, 1, 2] = height, centre_y
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bicubic", padding_mode="border", align_corners=False).clamp(0, 1)


def _grayscale(x: Tensor) -> Tensor:
    """ITU-R 601 luma (torchvision's weights), one channel; a one-channel image is its own grayscale."""
    if x.shape[1] == 1:
        return x
    weights = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)


def _blend(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    return (factor * x + (1 - factor) * other).clamp(0, 1)


def _shift_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate each image's hue by its `shift` (a fraction of the colour wheel), through HSV."""
    r, g, b = x.unbind(dim=1)
    value, _ = x.max(dim=1)
    delta = value - x.min(dim=1).values
    saturation = delta / value.clamp_min(1e-12)
    safe = delta.clamp_min(1e-12)
    hue = torch.where(value == r, (g - b) / safe,
                      torch.where(value == g, 2 + (b - r) / safe, 4 + (r - g) / safe)) / 6
    hue = torch.where(delta > 0, hue, torch.zeros_like(hue))
    hue = (hue + shift.view(-1, 1, 1)) % 1.0
    # HSV -> RGB: each channel is value * (1 - saturation * clamp(min(k, 4 - k), 0, 1)) for k = (n + 6h) mod 6.
    k = (torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1) + 6 * hue.unsqueeze(1)) % 6
    return value.unsqueeze(1) * (1 - saturation.unsqueeze(1) * torch.minimum(k, 4 - k).clamp(0, 1))
