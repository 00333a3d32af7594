"""Results files: JSON lines of records with their provenance, appended atomically; nothing written is ever lost.

Each record says what was measured and how (dataset, n, threat model, attack settings, seed) and where it came
from (device, library versions, git commit, time, and the `run_id` of the `cropkit reproduce` notebook run that
made it). Appending rewrites the file through a temporary file and a rename under a lock, so a crash or a
concurrent writer never leaves a torn line.

A file damaged by something else (a run of an older version killed mid-write, a full disk, a bad copy) keeps its
good records: `load_records` skips each line that is not a JSON object with a `RecordsWarning` naming its number,
and `append_records` first moves such lines, byte for byte, into `<file>.rejected` beside it (JSON lines with the
line number, the time and the text), so new records never glue onto a torn line.

Runs: `cropkit reproduce` gives each notebook run an id (the `CROPKIT_RUN_ID` environment variable, which the
notebook's kernel inherits and `provenance` records) and appends the run's status to `runs.jsonl` beside the
records: `running` when it starts, then `ok` or `failed` (or `interrupted`). `load_records` marks every record of
a run that did not finish `ok` with `run_status`, or drops them with `failed_runs="drop"`.

An evaluation record also keeps its 95% intervals and its per-example outcomes (which examples were correct clean
and under the attack, with a digest of the example set), so that two models evaluated on the same examples are
compared paired (`compare_records`), the worst case over attacks is taken per example (`worst_case`), and an
evaluation is cut down to some classes (`restrict_to_classes`, `class_records`) or its parts pooled again (`pooled`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import subprocess
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from cropkit.core.checkpoint import atomic_write_bytes
from cropkit.core.paths import project_root, resolve
from cropkit.core.validate import choice, record_list, require
from cropkit.eval.stats import Comparison, compare, format_accuracy, wilson_interval

if TYPE_CHECKING:
    import pandas as pd

    from cropkit.data import ImageData

TRACKED_PACKAGES = ("torch", "torchvision", "transformers", "torchattacks", "pyautoattack", "numpy")
RUN_ENV = "CROPKIT_RUN_ID"  # set by `cropkit reproduce` for each notebook it runs
RUNS_FILE = "runs.jsonl"
RUN_STATUSES = ("running", "ok", "failed", "interrupted")
ACCURACY_FIELDS = ("clean_accuracy", "clean_interval", "robust_accuracy", "robust_interval")  # of an evaluation
EVALUATIONS_FIX = "pass evaluation records (what cropkit.eval.evaluate or run.evaluate returns)"


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
    """Where and with what a number was produced, and by which `cropkit reproduce` run (None outside one)."""
    return {
        "device": device_name(device),
        "versions": library_versions(),
        "commit": git_commit(),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run_id": os.environ.get(RUN_ENV) or None,
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


class RecordsWarning(UserWarning):
    """A results file held lines that are not records: skipped when loading, moved aside when appending."""


def _parse(raw: bytes) -> tuple[list[tuple[bytes, dict[str, Any]]], list[tuple[int, bytes]]]:
    """(good lines with their records, bad lines with their 1-based numbers); a bad line is torn, not JSON, not
    UTF-8, or JSON that is not an object. Blank lines are neither."""
    good, bad = [], []
    for number, line in enumerate(raw.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            record = None
        if isinstance(record, dict):
            good.append((line, record))
        else:
            bad.append((number, line))
    return good, bad


def _describe(path: Path, bad: list[tuple[int, bytes]]) -> str:
    shown = ", ".join(f"line {n} ({line[:60].decode('utf-8', 'replace')!r})" for n, line in bad[:3])
    return f"{path}: {len(bad)} line(s) are not JSON records: {shown}{', ...' if len(bad) > 3 else ''}"


def rejected_path(path: Path) -> Path:
    """Where `append_records` keeps the lines of `path` that were not records."""
    return path.with_name(path.name + ".rejected")


def append_records(path: str | os.PathLike[str], records: Iterable[dict[str, Any]]) -> Path:
    """Append records (dicts) to a JSON-lines file atomically; relative paths are taken from the project root.

    Lines already in the file that are not records (a torn last line, say) are moved to `rejected_path(path)`
    first, with a `RecordsWarning`, so the new records start on a line of their own and every line stays readable.
    """
    require(not isinstance(records, (dict, str, bytes)), "records", records, "a single value, not a list of records",
            "pass a list of dicts, e.g. [record]")
    records = list(records)
    for i, record in enumerate(records):
        require(isinstance(record, dict), f"records[{i}]", record, "not a dict", "pass each record as a dict")
    lines = "".join(json.dumps(record, sort_keys=True) + "\n" for record in records).encode()  # fails before writing
    path = resolve(path)
    with _locked(path):
        existing = path.read_bytes() if path.exists() else b""
        good, bad = _parse(existing)
        if bad:
            moved_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
            entries = [{"file": path.name, "line": n, "moved_at": moved_at,
                        "text": line.decode("utf-8", "surrogateescape")} for n, line in bad]
            rejected = rejected_path(path)
            before = rejected.read_bytes() if rejected.exists() else b""
            atomic_write_bytes(rejected, before + "".join(json.dumps(e) + "\n" for e in entries).encode())
            warnings.warn(f"{_describe(path, bad)}; moved to {rejected} (text byte for byte: "
                          "entry['text'].encode('utf-8', 'surrogateescape')), every record kept",
                          RecordsWarning, stacklevel=2)
            existing = b"".join(line + b"\n" for line, _ in good)
        elif existing and not existing.endswith(b"\n"):
            existing += b"\n"  # a complete last record written without its newline
        atomic_write_bytes(path, existing + lines)
    return path


def load_records(path: str | os.PathLike[str], *,
                 failed_runs: Literal["mark", "drop"] = "mark") -> list[dict[str, Any]]:
    """All records of a JSON-lines results file (an absent file has none).

    A line that is not a JSON record is skipped with a `RecordsWarning` naming its number; every other record is
    returned. Records of `cropkit reproduce` runs that did not finish `ok` (`runs.jsonl` beside the file) get
    `run_status` ("failed", "interrupted", or "running": still going elsewhere, or killed) with
    `failed_runs="mark"`, or are left out with `failed_runs="drop"`; the calling notebook's own run counts as ok.
    """
    choice(("mark", "drop"), "failed_runs option")("failed_runs", failed_runs)
    path = resolve(path)
    if not path.exists():
        return []
    good, bad = _parse(path.read_bytes())
    if bad:
        warnings.warn(f"{_describe(path, bad)}; skipped, every other record loaded", RecordsWarning, stacklevel=2)
    statuses = run_statuses(path.with_name(RUNS_FILE))
    statuses.pop(os.environ.get(RUN_ENV), None)  # the run reading its own records is not a failed one
    records = []
    for _, record in good:
        status = statuses.get(record.get("run_id"), "ok")
        if status != "ok":
            if failed_runs == "drop":
                continue
            record["run_status"] = status
        records.append(record)
    return records


def run_statuses(path: str | os.PathLike[str]) -> dict[str, str]:
    """Run id -> the last status `cropkit reproduce` wrote for it in the runs file `path`."""
    path = resolve(path)
    if not path.exists():
        return {}
    good, bad = _parse(path.read_bytes())
    if bad:
        warnings.warn(f"{_describe(path, bad)}; skipped", RecordsWarning, stacklevel=2)
    return {run["run_id"]: run["status"] for _, run in good if "run_id" in run and "status" in run}


def record_run(results_dir: str | os.PathLike[str], run_id: str, status: str, **details: Any) -> Path:
    """Append a run's status (`running`, `ok`, `failed`, `interrupted`) and `details` to `runs.jsonl`."""
    choice(RUN_STATUSES, "run status")("status", status)
    entry = {"run_id": run_id, "status": status, "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
             **details}
    return append_records(Path(results_dir) / RUNS_FILE, [entry])


def encode_outcomes(correct: np.ndarray | torch.Tensor) -> str:
    """Per-example booleans as a compact hex string (bits packed in order), as records store them."""
    return np.packbits(np.asarray(correct, dtype=bool)).tobytes().hex()


def decode_outcomes(encoded: str, n: int) -> np.ndarray:
    """The `n` per-example booleans of `encode_outcomes`."""
    return np.unpackbits(np.frombuffer(bytes.fromhex(encoded), dtype=np.uint8), count=n).astype(bool)


def accuracy_fields(correct: np.ndarray | torch.Tensor, which: str = "clean") -> dict[str, Any]:
    """`{which}_accuracy` and its 95% Wilson `{which}_interval` for per-example booleans."""
    correct = np.asarray(correct, dtype=bool)
    require(correct.ndim == 1 and len(correct) > 0, "correct", correct,
            "not one or more per-example outcomes (a 1-d array): an accuracy of no examples is undefined",
            "pass one boolean per evaluated example")
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
    """Paired comparison (`cropkit.eval.stats.compare`) of two evaluation records measured on the same examples."""
    if a.get("examples") != b.get("examples"):
        raise ValueError(f"{a.get('model')!r} and {b.get('model')!r} were evaluated on different examples "
                         f"({a.get('examples')} vs {b.get('examples')}): a paired comparison needs the same ones")
    return compare(a_name or a["model"], outcomes(a, which), b_name or b["model"], outcomes(b, which))


def restrict_to_classes(record: dict[str, Any], data: ImageData, classes: Sequence[str]) -> dict[str, Any]:
    """An evaluation `record` on `data` (the examples it was measured on, in order) cut down to the examples of
    `classes`: their accuracies, intervals and outcomes, `examples` the digest of that part, `classes` the names.
    Two models' restrictions to the same classes compare paired (`compare_records`)."""
    if data.digest() != record.get("examples"):
        raise ValueError(f"record of {record.get('model')!r} was measured on examples {record.get('examples')}, not on "
                         f"{data.name}/{data.split} ({data.digest()}): pass the data it was evaluated on")
    unknown = [c for c in classes if c not in data.classes]
    if unknown or not classes:
        raise ValueError(f"classes={list(classes)}: name one or more of {data.classes}")
    mask = np.isin(data.labels.numpy(), [data.classes.index(c) for c in classes])
    if not mask.any():
        raise ValueError(f"no example of {list(classes)} among the {len(mask)} examples of the record")
    clean, robust = outcomes(record, "clean")[mask], outcomes(record, "robust")[mask]
    part = torch.from_numpy(mask)
    examples = replace(data, images=data.images[part], labels=data.labels[part]).digest()
    return record | {"classes": list(classes), "n_examples": int(mask.sum()), "examples": examples,
                     **accuracy_fields(clean, "clean"), **accuracy_fields(robust, "robust"),
                     "outcomes": {"clean": encode_outcomes(clean), "robust": encode_outcomes(robust)}}


def class_records(record: dict[str, Any], data: ImageData) -> list[dict[str, Any]]:
    """`restrict_to_classes` for each class of `data` that has examples: an evaluation's accuracy per class."""
    present = set(data.labels.tolist())
    return [restrict_to_classes(record, data, [name]) for c, name in enumerate(data.classes) if c in present]


def pooled(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One model's evaluations on disjoint sets of examples (e.g. its `class_records` of several classes) as one record
    over all of them, outcomes concatenated in the given order: two models pooled over the same parts in the same
    order compare paired."""
    records = record_list("records", records, needs=("model", "attack", "eps", "examples", "n_examples"),
                          fix="pass evaluation records of one model on disjoint examples, e.g. its class_records")
    first = records[0]
    if any((r["model"], r["attack"], r["eps"]) != (first["model"], first["attack"], first["eps"]) for r in records):
        raise ValueError("pooled combines records of one model, one attack and one eps")
    if len({r["examples"] for r in records}) < len(records):
        raise ValueError("pooled combines disjoint example sets; two records here share theirs")
    clean = np.concatenate([outcomes(r, "clean") for r in records])
    robust = np.concatenate([outcomes(r, "robust") for r in records])
    digest = hashlib.sha256("+".join(r["examples"] for r in records).encode()).hexdigest()[:16]
    return first | {"classes": [c for r in records for c in r.get("classes", [])], "n_examples": len(clean),
                    "examples": digest, **accuracy_fields(clean, "clean"), **accuracy_fields(robust, "robust"),
                    "outcomes": {"clean": encode_outcomes(clean), "robust": encode_outcomes(robust)}}


def worst_case(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The per-example worst case over attacks run on one model and one example set: an example counts as robust
    only if every attack left it correct (what AutoAttack reports, and what a defence is judged by)."""
    records = record_list("records", records, needs=("model", "attack", "eps", "attack_settings", "n_examples",
                                                     "runtime_s"),
                          fix="pass one model's evaluations of one example set under several attacks (evaluate's)")
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
        "cached": all(r.get("cached", False) for r in records),
    }


def accuracy_table(records: Iterable[dict[str, Any]], index: str | list[str] = "model") -> pd.DataFrame:
    """A table of accuracies with their 95% intervals ("53.7 [48.0, 59.3]", percent): one row per `index` value, a
    clean column, one column per attack.

    Clean accuracy is the one measured with each row's largest evaluation; an attack run on fewer examples
    than that is labelled with its number of examples, e.g. "AutoAttack (n=100)".
    """
    import pandas as pd

    keys = [index] if isinstance(index, str) else list(index)
    records = record_list("records", records, where=lambda r: bool(r.get("attack")), counted="evaluation record",
                          needs=(*keys, "attack", "n_examples", *ACCURACY_FIELDS), fix=EVALUATIONS_FIX)
    frame = pd.DataFrame([r for r in records if r.get("attack")])
    largest = frame.groupby(keys, sort=False)["n_examples"].transform("max")
    frame["column"] = [a if n == m else f"{a} (n={n})" for a, n, m in zip(frame["attack"], frame["n_examples"], largest)]
    frame["clean"] = [format_accuracy(a, i) for a, i in zip(frame["clean_accuracy"], frame["clean_interval"])]
    frame["robust"] = [format_accuracy(a, i) for a, i in zip(frame["robust_accuracy"], frame["robust_interval"])]
    clean = frame[frame["n_examples"] == largest].groupby(keys, sort=False)["clean"].first()
    robust = frame.pivot_table(index=keys, columns="column", values="robust", aggfunc="last", sort=False)
    return pd.concat([clean, robust[list(dict.fromkeys(frame["column"]))]], axis=1)
