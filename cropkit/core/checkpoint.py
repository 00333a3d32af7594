"""Atomic files and folders, saved weights (safetensors + JSON), training checkpoints that resume, and cache keys.

A checkpoint folder holds `model.safetensors` (weights), `state.pt` (optimiser, scheduler and RNG state, read
back with `torch.load(weights_only=True)`) and `trainer.json` (epoch, history, config). It is replaced as a whole,
so an interruption leaves either the previous or the new checkpoint, never a mix. A file that cannot be read back
(truncated by a full disk, damaged by a copy) raises `CorruptFileError`, naming the file and how to start afresh.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from cropkit.core.validate import CorruptFileError, require


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write `payload` to `path` through a temporary file and a rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: Path, obj: Any) -> None:
    """Atomically write `obj` as indented JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


@contextlib.contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success it replaces `path` whole (the old one kept as `*.old` until then)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def existing_directory(path: Path) -> Path | None:
    """`path` if it exists, else the `*.old` copy an interrupted `atomic_directory` left behind, else None."""
    for candidate in (path, path.with_name(path.name + ".old")):
        if candidate.is_dir():
            return candidate
    return None


SNAPSHOTS = "epochs"  # the folder, beside a cached model's weights, of its weights after each epoch


def save_weights(model: nn.Module, directory: Path, config: dict[str, Any], snapshots: Path | None = None) -> None:
    """Save a module as `model.safetensors` plus `config.json` in `directory` (atomically), with the per-epoch
    `snapshots` folder written during training (`save_snapshot`), if any, as `directory/epochs`."""
    with atomic_directory(directory) as tmp:
        save_model(model, str(tmp / "model.safetensors"))
        write_json(tmp / "config.json", config)
        if snapshots is not None:
            shutil.copytree(snapshots, tmp / SNAPSHOTS)


def snapshot_name(epoch: int) -> str:
    return f"epoch-{epoch:03d}.safetensors"


def save_snapshot(model: nn.Module, folder: Path, epoch: int) -> None:
    """The model's weights after `epoch` epochs, written atomically into `folder` (a run's snapshots)."""
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{snapshot_name(epoch)}.tmp"
    save_model(model, str(partial))
    os.replace(partial, folder / snapshot_name(epoch))


def load_snapshot(model: nn.Module, directory: Path, epoch: int) -> None:
    """Load the weights a cached run (`directory`, saved with snapshots) had after `epoch` epochs into `model`."""
    path = directory / SNAPSHOTS / snapshot_name(epoch)
    require(path.is_file(), "epoch", epoch, f"{directory} holds no snapshot of that epoch",
            "pass an epoch the run trained (1 to its epochs)")
    with reading(path, _cache_remedy(directory)):
        load_model(model, str(path))


@contextlib.contextmanager
def reading(path: Path, remedy: str) -> Iterator[None]:
    """Turn any failure to read the kit's own file `path` (truncated, corrupt, missing, or not matching the model)
    into a `CorruptFileError` that names the file and `remedy`, instead of a decoder's message naming neither."""
    try:
        yield
    except CorruptFileError:
        raise
    except Exception as error:  # safetensors, torch.load and json raise many types for one cause: a bad file
        problem = f"cannot be read ({type(error).__name__}: {str(error).splitlines()[0][:160] if str(error) else ''})"
        raise CorruptFileError("file", str(path), problem, remedy) from error


def _cache_remedy(directory: Path) -> str:
    return f"delete the folder {directory} to compute it afresh (or call the function that made it with force=True)"


def load_weights(model: nn.Module, directory: Path) -> dict[str, Any]:
    """Load weights saved by `save_weights` into `model`; return the saved config. A file that cannot be read
    raises `CorruptFileError` naming it and how to start afresh."""
    remedy = _cache_remedy(directory)
    with reading(directory / "model.safetensors", remedy):
        load_model(model, str(directory / "model.safetensors"))
    with reading(directory / "config.json", remedy):
        return read_json(directory / "config.json")


def save_training_state(
    directory: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    epoch: int,
    history: list[dict[str, Any]],
    config: dict[str, Any],
) -> None:
    """Checkpoint a training run after `epoch` completed epochs."""
    with atomic_directory(directory) as tmp:
        save_model(model, str(tmp / "model.safetensors"))
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else {},
                "rng": torch.get_rng_state(),
            },
            tmp / "state.pt",
        )
        write_json(tmp / "trainer.json", {"epoch": epoch, "history": history, "config": config})


def load_training_state(
    directory: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    config: dict[str, Any],
) -> tuple[int, list[dict[str, Any]]] | None:
    """Restore a checkpoint written for the same `config`; return (completed epochs, history), or None if absent.

    A checkpoint of a different config raises instead of silently mixing two runs.
    """
    found = existing_directory(directory)
    if found is None:
        return None
    remedy = (f"delete the folder {found} to restart training from scratch (or call the training function with "
              "force=True)")
    with reading(found / "trainer.json", remedy):
        meta = read_json(found / "trainer.json")
        epoch, history, saved = int(meta["epoch"]), list(meta["history"]), meta["config"]
    if saved != config:
        raise ValueError(
            f"The checkpoint in {found} was written for another configuration; delete it to start afresh. "
            f"saved: {saved}; asked: {config}"
        )
    with reading(found / "model.safetensors", remedy):
        load_model(model, str(found / "model.safetensors"))
    with reading(found / "state.pt", remedy):
        state = torch.load(found / "state.pt", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
    return epoch, history


def config_key(fields: dict[str, Any]) -> str:
    """Short hash of a training config: a changed field never reuses a stale cache entry."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def module_digest(module: nn.Module) -> str:
    """Short hash of a module's parameters and buffers (persistent or not, e.g. a model's input normalisation):
    which weights a cached result was computed from."""
    digest = hashlib.sha256()
    for name, tensor in sorted([*module.named_parameters(), *module.named_buffers()], key=lambda item: item[0]):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())  # 0-dim too
    return digest.hexdigest()[:12]


# Plain attributes that describe a module without changing its output: the train/eval flag (`evaluate` sets it), its
# display name, and where it was loaded from (Hugging Face's `name_or_path`, the kit's `spec`; a folder path for a
# local model), so that the same model in another clone of the repository keeps its cache entries.
_NOT_SETTINGS = ("training", "name", "name_or_path", "spec")


def _settings(module: nn.Module) -> dict[str, Any]:
    """The plain attributes of one module that can change its output (a head's scale, a norm's eps, a ViT's config):
    everything in its `__dict__` but tensors, submodules, hooks and `_NOT_SETTINGS`."""
    found: dict[str, Any] = {}
    for name, value in vars(module).items():
        if name.startswith("_") or name in _NOT_SETTINGS:
            continue
        if isinstance(value, (bool, int, float, str, tuple, type(None))):
            found[name] = value
        elif callable(getattr(value, "to_dict", None)):  # a Hugging Face config: its public fields
            found[name] = {k: v for k, v in value.to_dict().items() if not k.startswith("_")
                           and k != "transformers_version"}
    return found


def module_key(module: nn.Module) -> str:
    """Short hash of what decides a module's output: its weights (`module_digest`) and, for every submodule, its
    class and plain settings (`_settings`). Cached measurements are keyed by it: two pipelines with the same
    weights and different head scales give different logits, so they must not share cached attack outcomes."""
    structure = [(name, f"{type(m).__module__}.{type(m).__qualname__}", _settings(m))
                 for name, m in module.named_modules()]
    described = json.dumps({"weights": module_digest(module), "structure": structure}, sort_keys=True, default=str)
    return hashlib.sha256(described.encode()).hexdigest()[:12]


def cache_key(fields: dict[str, Any], *, recipe: int, data: str) -> str:
    """The cache key of a trained artifact: its config, the version of the code's recipe that trains it (bumped
    when a change alters what the same config produces) and the digest of its training data's content (a
    rewritten dataset file at the same path gets a new key), so no cache entry outlives what made it."""
    return config_key(fields | {"recipe": recipe, "data": data})


def measurement_path(folder: Path, data: Any, fields: dict[str, Any], *, recipe: int, suffix: str) -> Path:
    """Where a measurement on `data` (an `ImageData`: its name and content digest) that `fields` decide is cached
    in `folder` (attack outcomes, bound terms)."""
    return folder / f"{data.name}-{cache_key(fields, recipe=recipe, data=data.digest())}{suffix}"
