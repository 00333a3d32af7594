"""Miniature copies of the paper's datasets in their real on-disk formats, and a stand-in for facebook/vit-mae-large.

The writers produce what the downloads extract to (CIFAR's pickled batches, SVHN's `.mat` files, the folder trees
of Imagenette and Tiny-ImageNet), so the kit's loaders read them exactly as they read the real files. Only
torchvision's MD5 checks cannot pass on other bytes: `skip_checksums` replaces `check_integrity` by a check that
the file exists, and nothing else. Each image's brightness encodes its class (`class_level`), so a test can tell
that every image arrived with its own label.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TINY_WNIDS = ["n01443537", "n01629819", "n01641577", "n01644900", "n01698640"]


def _exists(fpath: str, md5: str | None = None) -> bool:
    """torchvision's `check_integrity` in tests: the file must exist; its MD5 is not compared."""
    return Path(fpath).is_file()


def patch_checksums(setattr=setattr) -> None:
    """Replace `check_integrity` wherever torchvision's dataset modules hold it (pass `monkeypatch.setattr` in a
    test, so that it is restored afterwards)."""
    import torchvision.datasets.cifar
    import torchvision.datasets.svhn
    import torchvision.datasets.utils

    for module in (torchvision.datasets.utils, torchvision.datasets.cifar, torchvision.datasets.svhn):
        setattr(module, "check_integrity", _exists)


def skip_checksums(monkeypatch) -> None:
    """In this process, torchvision checks that a dataset file exists but not its MD5 (the real files' sums)."""
    patch_checksums(monkeypatch.setattr)


def sitecustomize(folder: Path) -> Path:
    """A `sitecustomize.py` in `folder` that calls `patch_checksums` when a Python process (a Jupyter kernel) starts
    with `folder` on its PYTHONPATH; returns `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(
        f"import sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\nimport miniature\n"
        "miniature.patch_checksums()\n")
    return folder


def class_level(label: int) -> int:
    """The mean brightness that images of class `label` are drawn around."""
    return 20 + 23 * (label % 10)


def _images(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 (N, size, size, 3): each image its class's level plus noise of +-8."""
    noise = rng.integers(-8, 9, size=(len(labels), size, size, 3))
    return (np.array([class_level(int(y)) for y in labels])[:, None, None, None] + noise).astype(np.uint8)


def _labels(n: int, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Every class at least once (when n allows), then random."""
    extra = rng.integers(0, n_classes, max(0, n - n_classes))
    return rng.permutation(np.concatenate([np.arange(min(n, n_classes)), extra]))


def _pickle(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))


def write_cifar10(root: Path, n_train: int = 50, n_test: int = 20, seed: int = 0) -> dict[str, tuple]:
    """`cifar-10-batches-py/`: five training batches, `test_batch` and `batches.meta`, rows of 3072 bytes (R, G, B
    planes). Returns {split: (images NHWC, labels)}."""
    rng = np.random.default_rng(seed)
    base = root / "cifar-10-batches-py"
    written = {}
    for split, n in (("train", n_train), ("test", n_test)):
        labels = _labels(n, 10, rng)
        images = _images(labels, 32, rng)
        rows = images.transpose(0, 3, 1, 2).reshape(n, 3072)
        names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        for name, part in zip(names, np.array_split(np.arange(n), len(names))):
            _pickle(base / name, {"batch_label": name, "labels": labels[part].tolist(), "data": rows[part],
                                  "filenames": [f"img_{i}.png" for i in part]})
        written[split] = (images, labels)
    _pickle(base / "batches.meta", {"label_names": CIFAR10_CLASSES, "num_cases_per_batch": 10000, "num_vis": 3072})
    return written


def write_cifar100(root: Path, n_train: int = 50, n_test: int = 20, n_classes: int = 100,
                   seed: int = 1) -> dict[str, tuple]:
    """`cifar-100-python/`: `train`, `test` (fine and coarse labels) and `meta` with the fine label names."""
    rng = np.random.default_rng(seed)
    base = root / "cifar-100-python"
    written = {}
    for split, n in (("train", n_train), ("test", n_test)):
        labels = _labels(n, n_classes, rng)
        images = _images(labels, 32, rng)
        _pickle(base / split, {"filenames": [f"img_{i}.png" for i in range(n)], "batch_label": split,
                               "fine_labels": labels.tolist(), "coarse_labels": (labels // 5).tolist(),
                               "data": images.transpose(0, 3, 1, 2).reshape(n, 3072)})
        written[split] = (images, labels)
    _pickle(base / "meta", {"fine_label_names": [f"class_{i:03d}" for i in range(100)],
                            "coarse_label_names": [f"super_{i:02d}" for i in range(20)]})
    return written


def write_svhn(root: Path, n_train: int = 50, n_test: int = 20, seed: int = 2) -> dict[str, tuple]:
    """`train_32x32.mat` and `test_32x32.mat`: X of shape (32, 32, 3, N), y of shape (N, 1) with 10 for the digit 0."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    written = {}
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        digits = _labels(n, 10, rng)
        images = _images(digits, 32, rng)
        stored = np.where(digits == 0, 10, digits).astype(np.uint8)[:, None]
        savemat(root / f"{split}_32x32.mat", {"X": images.transpose(1, 2, 3, 0), "y": stored})
        written[split] = (images, digits)
    return written


def _jpeg(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, quality=95)


def write_imagenette(root: Path, per_class: tuple[int, int] = (3, 2), seed: int = 3) -> None:
    """`imagenette2-160/{train,val}/<wnid>/*.JPEG` for the ten classes, shorter side 160 as in the 160px release."""
    from torchvision.datasets import Imagenette

    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "val"), per_class):
        for label, wnid in enumerate(sorted(Imagenette._WNID_TO_CLASS)):
            for i in range(n):
                image = _images(np.array([label]), 160, rng)[0]
                wide = np.concatenate([image, image[:, :53]], axis=1)  # 160 x 213, as most images are
                _jpeg(root / "imagenette2-160" / split / wnid / f"{wnid}_{i}.JPEG", wide)


def write_tiny_imagenet(root: Path, per_class: tuple[int, int] = (4, 2), seed: int = 4) -> None:
    """`tiny-imagenet-200/`: wnids.txt, words.txt, train/<wnid>/images/*.JPEG with <wnid>_boxes.txt, and one flat
    val/images folder labelled by val/val_annotations.txt (file, wnid, box), as in the real archive."""
    rng = np.random.default_rng(seed)
    base = root / "tiny-imagenet-200"
    base.mkdir(parents=True, exist_ok=True)
    (base / "wnids.txt").write_text("".join(f"{w}\n" for w in TINY_WNIDS))
    (base / "words.txt").write_text("".join(f"{w}\tthing {i}\n" for i, w in enumerate(TINY_WNIDS)))
    n_train, n_val = per_class
    annotations = []
    for label, wnid in enumerate(TINY_WNIDS):  # sorted, so ImageFolder's class index is `label`
        boxes = []
        for i in range(n_train):
            name = f"{wnid}_{i}.JPEG"
            _jpeg(base / "train" / wnid / "images" / name, _images(np.array([label]), 64, rng)[0])
            boxes.append(f"{name}\t0\t0\t63\t63\n")
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("".join(boxes))
    order = rng.permutation([label for label in range(len(TINY_WNIDS)) for _ in range(n_val)])
    for i, label in enumerate(order):  # the validation files are not grouped by class
        _jpeg(base / "val" / "images" / f"val_{i}.JPEG", _images(np.array([label]), 64, rng)[0])
        annotations.append(f"val_{i}.JPEG\t{TINY_WNIDS[label]}\t0\t0\t63\t63\n")
    (base / "val" / "val_annotations.txt").write_text("".join(annotations))
    _jpeg(base / "test" / "images" / "test_0.JPEG", _images(np.array([0]), 64, rng)[0])


def write_all(root: Path) -> Path:
    """Every paper dataset under `root` (the layout `CROPKIT_DATA` points at)."""
    write_cifar10(root)
    write_cifar100(root)
    write_svhn(root)
    write_imagenette(root)
    write_tiny_imagenet(root)
    return root


def write_standin_vit_mae_large(folder: Path) -> Path:
    """A ViT-MAE with facebook/vit-mae-large's configuration at tiny widths (224x224, patch 16, hidden 32, one
    layer) and its image processor, saved with `save_pretrained` like the hub checkpoint (decoder included)."""
    import torch
    from transformers import ViTImageProcessor, ViTMAEConfig, ViTMAEForPreTraining

    config = ViTMAEConfig(image_size=224, patch_size=16, num_channels=3, hidden_size=32, num_hidden_layers=1,
                          num_attention_heads=2, intermediate_size=64, decoder_hidden_size=16,
                          decoder_num_hidden_layers=1, decoder_num_attention_heads=2, decoder_intermediate_size=32,
                          mask_ratio=0.75)
    torch.manual_seed(0)
    ViTMAEForPreTraining(config).save_pretrained(folder)
    ViTImageProcessor(do_resize=True, size={"height": 224, "width": 224}, resample=3, do_rescale=True,
                      do_normalize=True, image_mean=[0.485, 0.456, 0.406],
                      image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    return folder
