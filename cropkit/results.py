"""Results files: JSON lines of records with their provenance, appended atomically.

Each record says what was measured and how (dataset, n, threat model, attack settings, seed) and where it came
from (device, library versions, git commit, time). Appending rewrites the file through a temporary file and a
rename under a lock, so a crash or a concurrent writer never leaves a torn line.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import subprocess
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cropkit.checkpoint import atomic_write_bytes
from cropkit.paths import project_root, resolve

if TYPE_CHECKING:
    import pandas as pd

TRACKED_PACKAGES = ("torch", "torchvision", "transformers", "torchattacks", "numpy")


def device_name(device: torch.device | str) -> str:
    """A human-readable device, e.g. 'cuda (NVIDIA H100 80GB HBM3)' or 'cpu (x86_64, 2 threads)'."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"{device.type} ({platform.machine()}, {torch.get_num_threads()} threads)"


@cache
def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in TRACKED_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    return versions


def git_commit() -> str:
    """The checkout's commit, with '+dirty' if it has uncommitted changes; 'unknown' outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=project_root(), capture_output=True, text=True, check=True).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").strip())
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def provenance(device: torch.device | str) -> dict[str, Any]:
    """Where and with what a number was produced."""
    return {
        "device": device_name(device),
        "versions": library_versions(),
        "commit": git_commit(),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def append_records(path: str | os.PathLike[str], records: Iterable[dict[str, Any]]) -> Path:
    """Append records to a JSON-lines file atomically; relative paths are taken from the project root."""
    path = resolve(path)
    lines = "".join(json.dumps(record, sort_keys=True) + "\n" for record in records)
    with _locked(path):
        existing = path.read_bytes() if path.exists() else b""
        atomic_write_bytes(path, existing + lines.encode())
    return path


def load_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All records of a JSON-lines results file (an absent file has none)."""
    path = resolve(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def accuracy_table(records: Iterable[dict[str, Any]], index: str | list[str] = "model") -> pd.DataFrame:
    """A pandas table of accuracies: one row per `index` value, a clean column, one column per attack.

    Clean accuracy is the one measured with each row's largest evaluation; an attack run on fewer examples
    than that is labelled with its number of examples, e.g. "AutoAttack (n=100)".
    """
    import pandas as pd

    keys = [index] if isinstance(index, str) else list(index)
    frame = pd.DataFrame([r for r in records if r.get("attack")])
    largest = frame.groupby(keys, sort=False)["n_examples"].transform("max")
    frame["column"] = [a if n == m else f"{a} (n={n})" for a, n, m in zip(frame["attack"], frame["n_examples"], largest)]
    clean = frame[frame["n_examples"] == largest].groupby(keys, sort=False)["clean_accuracy"].first().rename("clean")
    robust = frame.pivot_table(index=keys, columns="column", values="robust_accuracy", aggfunc="last", sort=False)
    return pd.concat([clean, robust[list(dict.fromkeys(frame["column"]))]], axis=1)
