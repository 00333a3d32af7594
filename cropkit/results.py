"""Results files: JSON lines of records with their provenance, appended atomically; and what records support.

Each record says what was measured and how (dataset, n, threat model, attack settings, seed) and where it came
from (device, library versions, git commit, time). Appending rewrites the file through a temporary file and a
rename under a lock, so a crash or a concurrent writer never leaves a torn line. An evaluation record also keeps
its 95% intervals and its per-example outcomes (which examples were correct clean and under the attack, with a
digest of the example set), so that two models evaluated on the same examples are compared paired
(`compare_records`) and the worst case over attacks is taken per example (`worst_case`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timezone
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cropkit.checkpoint import atomic_write_bytes
from cropkit.paths import project_root, resolve
from cropkit.stats import Comparison, compare, format_accuracy, wilson_interval

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


def encode_outcomes(correct: np.ndarray | torch.Tensor) -> str:
    """Per-example booleans as a compact hex string (bits packed in order), as records store them."""
    return np.packbits(np.asarray(correct, dtype=bool)).tobytes().hex()


def decode_outcomes(encoded: str, n: int) -> np.ndarray:
    """The `n` per-example booleans of `encode_outcomes`."""
    return np.unpackbits(np.frombuffer(bytes.fromhex(encoded), dtype=np.uint8), count=n).astype(bool)


def accuracy_fields(correct: np.ndarray | torch.Tensor, which: str = "clean") -> dict[str, Any]:
    """`{which}_accuracy` and its 95% Wilson `{which}_interval` for per-example booleans."""
    correct = np.asarray(correct, dtype=bool)
    return {f"{which}_accuracy": float(correct.mean()),
            f"{which}_interval": wilson_interval(int(correct.sum()), len(correct))}


def outcomes(record: dict[str, Any], which: str = "robust") -> np.ndarray:
    """Which examples of an evaluation record were correct: `which` is "clean" or "robust" (clean and attacked)."""
    if "outcomes" not in record:
        raise ValueError(f"record of {record.get('model')!r} / {record.get('attack')!r} has no per-example outcomes; "
                         "it was written before the kit kept them: evaluate the model again")
    return decode_outcomes(record["outcomes"][which], record["n_examples"])


def compare_records(a: dict[str, Any], b: dict[str, Any], which: str = "robust", *, a_name: str | None = None,
                    b_name: str | None = None) -> Comparison:
    """Paired comparison (`cropkit.stats.compare`) of two evaluation records measured on the same examples."""
    if a.get("examples") != b.get("examples"):
        raise ValueError(f"{a.get('model')!r} and {b.get('model')!r} were evaluated on different examples "
                         f"({a.get('examples')} vs {b.get('examples')}): a paired comparison needs the same ones")
    return compare(a_name or a["model"], outcomes(a, which), b_name or b["model"], outcomes(b, which))


def worst_case(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The per-example worst case over attacks run on one model and one example set: an example counts as robust
    only if every attack left it correct (what AutoAttack reports, and what a defence is judged by)."""
    if not records:
        raise ValueError("worst_case needs at least one record")
    first = records[0]
    if any((r["model"], r.get("examples"), r["eps"]) != (first["model"], first.get("examples"), first["eps"])
           for r in records):
        raise ValueError("worst_case combines records of one model, one example set and one eps")
    robust = np.logical_and.reduce([outcomes(r) for r in records])
    labels = [r["attack"] for r in records]
    return first | {
        "attack": "worst case",
        "attack_settings": {"kind": "worst-case", "eps": first["eps"], "norm": first["attack_settings"]["norm"],
                            "over": labels},
        **accuracy_fields(robust, "robust"),
        "outcomes": {"clean": first["outcomes"]["clean"], "robust": encode_outcomes(robust)},
        "runtime_s": sum(r["runtime_s"] for r in records),
    }


def accuracy_table(records: Iterable[dict[str, Any]], index: str | list[str] = "model") -> pd.DataFrame:
    """A table of accuracies with their 95% intervals ("53.7 [48.0, 59.3]", percent): one row per `index` value, a
    clean column, one column per attack.

    Clean accuracy is the one measured with each row's largest evaluation; an attack run on fewer examples
    than that is labelled with its number of examples, e.g. "AutoAttack (n=100)".
    """
    import pandas as pd

    keys = [index] if isinstance(index, str) else list(index)
    frame = pd.DataFrame([r for r in records if r.get("attack")])
    largest = frame.groupby(keys, sort=False)["n_examples"].transform("max")
    frame["column"] = [a if n == m else f"{a} (n={n})" for a, n, m in zip(frame["attack"], frame["n_examples"], largest)]
    frame["clean"] = [format_accuracy(a, i) for a, i in zip(frame["clean_accuracy"], frame["clean_interval"])]
    frame["robust"] = [format_accuracy(a, i) for a, i in zip(frame["robust_accuracy"], frame["robust_interval"])]
    clean = frame[frame["n_examples"] == largest].groupby(keys, sort=False)["clean"].first()
    robust = frame.pivot_table(index=keys, columns="column", values="robust", aggfunc="last", sort=False)
    return pd.concat([clean, robust[list(dict.fromkeys(frame["column"]))]], axis=1)
