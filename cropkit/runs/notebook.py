"""What every numbered notebook sets up and shares: its records file, figures folder, device and seed.

`NotebookRun.start("02_main_results", results_dir, figures_dir, seed)` seeds torch, picks the device, and points
the notebook at `<results_dir>/02_main_results.jsonl` (one records file per notebook, appended to) and at its
figures folder. `run.evaluate(...)` is `cropkit.eval.evaluate.evaluate` with those filled in; `run.record(kind, ...)`
appends any other measurement with its provenance; `run.written` holds what this execution wrote, from which
the notebook's closing summary is generated (`cropkit.runs.report`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cropkit.core.paths import output
from cropkit.core.precision import default_device
from cropkit.data import ImageData
from cropkit.eval.attacks import AttackSpec
from cropkit.eval.evaluate import evaluate
from cropkit.eval.records import append_records, provenance


@dataclass
class NotebookRun:
    """One execution of a numbered notebook: where it writes, on what device, with which seed."""

    name: str
    results: Path
    figures: Path
    device: torch.device
    seed: int
    written: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def start(cls, name: str, results_dir: str | os.PathLike[str], figures_dir: str | os.PathLike[str],
              seed: int = 0) -> NotebookRun:
        """Seed torch, create the output folders and return the run (relative folders: see `paths.output`)."""
        torch.manual_seed(seed)
        figures = output(figures_dir)
        figures.mkdir(parents=True, exist_ok=True)
        return cls(name, output(results_dir) / f"{name}.jsonl", figures, default_device(), seed)

    def evaluate(self, pipeline: nn.Module, data: ImageData, attacks: Sequence[AttackSpec], *, model_name: str,
                 **kwargs: Any) -> list[dict[str, Any]]:
        """`cropkit.eval.evaluate.evaluate` on this run's device, seed and records file; the records are kept."""
        records = evaluate(pipeline, data, attacks, model_name=model_name, seed=self.seed, device=self.device,
                           results=self.results, **kwargs)
        self.written += records
        return records

    def record(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Append one measurement that is not an attack evaluation (a probe, a fit, a cost) with its provenance."""
        record = {"kind": kind, "notebook": self.name, "seed": self.seed, **fields, **provenance(self.device)}
        append_records(self.results, [record])
        self.written.append(record)
        return record

    def save(self, figure: Any, filename: str) -> Path:
        """Save a matplotlib figure into this run's figures folder."""
        path = self.figures / filename
        figure.savefig(path, dpi=150, bbox_inches="tight")
        return path
