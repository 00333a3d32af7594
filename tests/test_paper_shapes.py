"""The paper's code paths offline at the paper's shapes: the real loaders on miniature files in the real formats,
a ViT-MAE-Large stand-in through `from_pretrained` at 224x224, the sized pre-processors, and the attacks at the
paper's class counts (2 for CIFAR-2, 100 for CIFAR-100)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from miniature import CIFAR10_CLASSES, class_level, skip_checksums, write_cifar10, write_cifar100, write_svhn

from cropkit.core import precision
from cropkit.cropd.autoencoders import autoencoder_parameters, build_autoencoder, grid_patch_size
from cropkit.data import DatasetUnavailableError, load_dataset
from cropkit.eval.attacks import pgd
from cropkit.eval.protocols import fit_alf
from cropkit.foundation import FoundationModel, Pipeline
from cropkit.foundation.heads import LinearHead
from cropkit.foundation.pretrain import load_foundation
from cropkit.runs import budget
from cropkit.runs.budget import facts, passes


@pytest.fixture
def no_checksums(monkeypatch):
    skip_checksums(monkeypatch)


@pytest.mark.parametrize("write, name, classes", [(write_cifar10, "cifar10", 10), (write_cifar100, "cifar100", 100),
                                                  (write_svhn, "svhn", 10)])
def test_array_datasets_load_pixel_for_pixel_through_the_real_loaders(tmp_path, no_checksums, write, name, classes):
    written = write(tmp_path)
    for split in ("train", "test"):
        data = load_dataset(name, split, root=tmp_path)  # download=True, the default: the files are found first
        images, labels = written[split]
        assert data.images.dtype == torch.uint8 and data.image_shape == (3, 32, 32)
        assert torch.equal(data.images, torch.from_numpy(images).permute(0, 3, 1, 2))
        assert torch.equal(data.labels, torch.from_numpy(labels).long())  # SVHN's 10 is the digit 0
        assert data.num_classes == classes
    if name == "cifar10":
        assert data.classes == CIFAR10_CLASSES


def test_cifar2_is_cat_and_dog_of_cifar10(tmp_path, no_checksums):
    images, labels = write_cifar10(tmp_path)["train"]
    data = load_dataset("cifar2", "train", root=tmp_path)
    keep = np.isin(labels, [3, 5])
    assert data.classes == ["cat", "dog"] and len(data) == keep.sum()
    assert torch.equal(data.labels, torch.from_numpy((labels[keep] == 5).astype(np.int64)))
    assert torch.equal(data.images, torch.from_numpy(images[keep]).permute(0, 3, 1, 2))


@pytest.mark.parametrize("name, size, classes, counts", [("imagenette", 160, 10, (30, 20)),
                                                         ("tiny-imagenet", 64, 5, (20, 10))])
def test_folder_datasets_load_with_each_image_under_its_own_label(paper_data, no_checksums, name, size, classes,
                                                                  counts):
    for split, n in zip(("train", "test"), counts):
        data = load_dataset(name, split, root=paper_data)
        assert data.image_shape == (3, size, size) and len(data) == n and data.num_classes == classes
        brightness = data.images.float().mean(dim=(1, 2, 3))
        expected = torch.tensor([class_level(int(y)) for y in data.labels], dtype=torch.float32)
        assert (brightness - expected).abs().max() < 4, f"{name}/{split}: an image carries another class's label"
    if name == "imagenette":
        assert data.classes[0] == "tench"


def test_only_the_checksum_is_bypassed(tmp_path):
    """Without the bypass the real loader refuses the miniature files: their MD5 is not the archive's."""
    write_cifar10(tmp_path)
    with pytest.raises(DatasetUnavailableError, match="corrupted"):
        load_dataset("cifar10", "test", root=tmp_path, download=False)


def test_the_vit_mae_large_standin_loads_like_the_hub_checkpoint(vit_mae_large_standin):
    fm = load_foundation(str(vit_mae_large_standin), pooling="mean")
    assert (fm.image_size, fm.encoder.config.patch_size, fm.num_channels) == (224, 16, 3)
    assert fm.mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])
    x = torch.rand(2, 3, 32, 32, requires_grad=True)  # CIFAR-sized images, resized to 224 inside
    features = fm(x)
    assert features.shape == (2, 32) and torch.equal(features, fm(x))
    (gradient,) = torch.autograd.grad(features.sum(), x)
    assert torch.isfinite(gradient).all() and gradient.abs().sum() > 0


def test_the_paper_preprocessor_in_front_of_the_standin_is_differentiable_end_to_end(vit_mae_large_standin):
    fm = FoundationModel.from_pretrained(vit_mae_large_standin)
    for size in (160,):  # Imagenette's: 20-pixel patches (32 and 64 run in the paper profile's smoke test)
        ae = build_autoencoder("vit-small", 3, size).eval()
        pipeline = Pipeline(ae, fm, LinearHead(fm.feature_dim, 10))
        x = torch.rand(2, 3, size, size, requires_grad=True)
        assert ae(x).shape == x.shape and ae.latent(x).shape == (2, 384)
        (gradient,) = torch.autograd.grad(pipeline(x).logsumexp(1).sum(), x)
        assert torch.isfinite(gradient).all() and gradient.abs().sum() > 0


def test_sized_preprocessors_are_the_papers_fraction_of_vit_mae_large():
    large = facts.foundation_network("facebook/vit-mae-large", 32, 3).parameters
    assert large == 303_301_632  # ViTMAEModel with the hub checkpoint's config
    for architecture in ("vit-small", "vit-base"):
        for size in (32, 64, 160):
            fraction = autoencoder_parameters(architecture, 3, size) / large
            assert 0.06 <= fraction <= 0.28, f"{architecture} at {size}x{size}: {fraction:.1%}"
    assert autoencoder_parameters("vit-small", 3, 32) / large == pytest.approx(0.074, abs=0.001)
    assert autoencoder_parameters("vit-base", 3, 32) / large == pytest.approx(0.259, abs=0.001)
    assert [grid_patch_size(s) for s in (28, 32, 64, 96, 160, 224)] == [4, 4, 8, 12, 20, 28]


def _tiny_vit_pipeline(n_classes: int) -> Pipeline:
    return passes._tiny_pipeline(3, n_classes)


def test_alf_attacks_and_trains_under_the_evaluators_autocast(monkeypatch):
    """ALF ran its PGD through the whole pipeline in fp32 on a GPU (the plan: 6 of 9 hours of notebook 02 on
    ViT-MAE-Large); it now runs under `precision.autocast` as `evaluate` does. CPU bf16 stands in for CUDA's."""
    pipeline = _tiny_vit_pipeline(10)
    seen = []
    pipeline.foundation.register_forward_hook(lambda m, i, o: seen.append(torch.is_autocast_enabled("cpu")))
    monkeypatch.setattr(precision, "autocast", lambda device: torch.autocast("cpu", dtype=torch.bfloat16))
    from cropkit.data import ImageData

    data = ImageData("t", "train", (torch.rand(8, 3, 16, 16) * 255).to(torch.uint8), torch.arange(8) % 10,
                     [str(i) for i in range(10)])
    fit_alf(pipeline, data, pgd(8 / 255, 2), epochs=1, batch_size=8, progress=False)
    assert seen and all(seen)


def test_plan_prices_the_strong_attacks_two_class_composition():
    """CIFAR-2 has no APGD-T (it needs 4 classes): the plan prices the composition the attack runs there."""
    only_ce = budget.estimate("paper", only=["02:cifar2"], overrides={"strong_attack": "apgd-ce"}, measure=False)
    original = budget.estimate("paper", only=["02:cifar2"], overrides={"strong_attack": "autoattack-original"},
                               measure=False)
    assert original.seconds() > only_ce.seconds()


def test_download_reads_every_split_and_model_a_profile_needs(paper_data, vit_mae_large_standin, no_checksums,
                                                               monkeypatch):
    monkeypatch.setenv("CROPKIT_DATA", str(paper_data))
    lines = budget.prefetch("paper", only=["02:cifar2", "02:tiny-imagenet"],
                            overrides={"foundation": str(vit_mae_large_standin)})
    assert [line.split(":")[0] for line in lines[:4]] == ["cifar2/train", "cifar2/test", "tiny-imagenet/train",
                                                          "tiny-imagenet/test"]
    assert lines[3] == "tiny-imagenet/test: 10 images of 3x64x64, 5 classes" and "2 classes" in lines[0]
    assert lines[4].startswith(f"{vit_mae_large_standin}: ") and len(lines) == 5
