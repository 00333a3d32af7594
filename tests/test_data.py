"""Datasets: embedded splits, npz files, class subsets and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cropkit.core.paths import shared_data_dir
from cropkit.data import DatasetUnavailableError, ImageData, available_datasets, load_dataset


def test_mnist5k_fixed_stratified_split(mnist):
    train, test = mnist
    assert (len(train), len(test)) == (4000, 1000)
    assert train.image_shape == (1, 28, 28) and train.images.dtype == torch.uint8
    assert torch.bincount(test.labels).tolist() == [100] * 10
    again = load_dataset("mnist5k", "test")
    assert torch.equal(again.images, test.images) and torch.equal(again.labels, test.labels)
    x, _ = test.tensors()
    assert x.dtype == torch.float32 and x.min() == 0 and x.max() == 1


def test_digits_is_upsampled_to_mnist_size():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert train.image_shape == (1, 28, 28)
    assert len(train) + len(test) == 1797 and train.num_classes == 10
    assert train.images.float().mean() > 10  # not blank after upsampling


def _write_npz(path, n=20, classes=("a", "b", "c")):
    rng = np.random.default_rng(0)
    arrays = {f"x_{s}": rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8) for s in ("train", "test")}
    arrays |= {f"y_{s}": np.arange(n) % len(classes) for s in ("train", "test")}
    np.savez(path, classes=np.array(classes), **arrays)
    return arrays


def test_npz_by_path_and_class_subset(tmp_path):
    arrays = _write_npz(tmp_path / "toy.npz")
    data = load_dataset(str(tmp_path / "toy.npz"), "train")
    assert data.image_shape == (3, 8, 8) and data.classes == ["a", "b", "c"]
    assert torch.equal(data.images[0].permute(1, 2, 0), torch.from_numpy(arrays["x_train"][0]))
    two = load_dataset(str(tmp_path / "toy.npz"), "test", classes=["c", "a"])
    assert two.classes == ["c", "a"] and set(two.labels.tolist()) == {0, 1}
    test = load_dataset(str(tmp_path / "toy.npz"), "test")
    assert torch.equal(two.images[two.labels == 0][0], test.images[2])  # the first "c" image, relabelled 0


def test_resize_and_take(tmp_path):
    _write_npz(tmp_path / "toy.npz")
    data = load_dataset(str(tmp_path / "toy.npz"), "train", image_size=16)
    assert data.image_shape == (3, 16, 16)
    subset = data.take(5, seed=1)
    assert len(subset) == 5 and subset.take(5) is subset


@pytest.mark.skipif(not (shared_data_dir() / "cifar10_subset.npz").is_file(), reason="no ../shared/data here")
def test_shared_cifar10_subset():
    test = load_dataset("cifar10-subset", "test")
    assert (len(test), test.image_shape, test.num_classes) == (2000, (3, 32, 32), 10)
    cifar2 = load_dataset("cifar10-subset[cat,dog]", "test")
    assert len(cifar2) == 400 and cifar2.classes == ["cat", "dog"] and cifar2.name == "cifar10-subset[cat,dog]"


def test_unknown_dataset_and_split_say_what_is_available():
    with pytest.raises(ValueError, match="mnist5k") as error:
        load_dataset("cifar11")
    assert "digits" in str(error.value)
    with pytest.raises(ValueError, match="split"):
        load_dataset("mnist5k", "validation")
    assert {"mnist5k", "digits", "cifar10", "cifar2", "svhn", "tiny-imagenet"} <= set(available_datasets())


def test_missing_download_names_source_and_folder(tmp_path):
    with pytest.raises(DatasetUnavailableError) as error:
        load_dataset("cifar10", root=tmp_path, download=False)
    message = str(error.value)
    assert "cifar-10-python.tar.gz" in message and str(tmp_path) in message and "mnist5k" in message


def test_missing_npz_and_bad_images(tmp_path):
    with pytest.raises(DatasetUnavailableError, match="npz"):
        load_dataset(str(tmp_path / "absent.npz"))
    with pytest.raises(ValueError, match="uint8"):
        ImageData("x", "train", torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long), ["a"])


def test_tiny_imagenet_folder_layout_loads_offline(tmp_path):
    """The real Tiny-ImageNet loader on a miniature copy of the archive's layout (train/<wnid>/images, flat val)."""
    from PIL import Image

    base = tmp_path / "tiny-imagenet-200"
    rng = np.random.default_rng(0)
    for wnid in ("n01", "n02"):
        (base / "train" / wnid / "images").mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(base / "train" / wnid / "images" / f"{i}.JPEG")
    (base / "val" / "images").mkdir(parents=True)
    Image.fromarray(np.full((64, 64), 7, dtype=np.uint8)).save(base / "val" / "images" / "val_0.JPEG")  # grey-scale
    (base / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn02\t0\t0\t63\t63\n")
    train = load_dataset("tiny-imagenet", "train", root=tmp_path, download=False)
    test = load_dataset("tiny-imagenet", "test", root=tmp_path, download=False)
    assert (len(train), train.image_shape, train.classes) == (6, (3, 64, 64), ["n01", "n02"])
    assert len(test) == 1 and test.labels.tolist() == [1] and test.image_shape == (3, 64, 64)


def test_balanced_subsets_are_exact_nested_and_seeded(mnist):
    train, _ = mnist
    small, large = train.balanced(5, seed=3), train.balanced(20, seed=3)
    assert small.class_counts() == {str(d): 5 for d in range(10)} and len(large) == 200
    rows = {tuple(x.flatten().tolist()) for x in large.images}
    assert all(tuple(x.flatten().tolist()) in rows for x in small.images)  # the smaller set is inside the larger
    assert torch.equal(train.balanced(5, seed=3).images, small.images)
    assert not torch.equal(train.balanced(5, seed=4).images, small.images)
    assert small.name == "mnist5k (5 per class)" and small.digest() != train.digest()


def test_balanced_class_subset_is_relabelled_and_too_many_is_refused(tmp_path):
    _write_npz(tmp_path / "toy.npz", n=21)  # seven of each of a, b, c
    data = load_dataset(str(tmp_path / "toy.npz"), "train")
    two = data.balanced(3, classes=["c", "a"], seed=0)
    assert two.classes == ["c", "a"] and two.class_counts() == {"c": 3, "a": 3}
    assert all(bool((data.images == image).all(dim=(1, 2, 3)).logical_and(data.labels == 2).any())
               for image in two.images[two.labels == 0])  # label 0 is the original class "c"
    with pytest.raises(ValueError, match="per_class=8"):
        data.balanced(8)
    with pytest.raises(ValueError, match="per_class=0"):
        data.balanced(0)
