"""Batch reproduction: run the numbered notebooks with papermill under a profile of parameters.

A profile is `configs/<name>.yaml` with `parameters` (given to every notebook that declares them) and optional
`notebooks` (per-notebook overrides keyed by number, e.g. "00"). A notebook's entry may hold `runs`, a list of
parameter sets: the notebook then runs once per set (e.g. once per dataset), each run named by its `tag` or else
its `dataset`. Executed notebooks and results files go to `<out>/results/<profile>/`, figures to
`<out>/figures/<profile>/`, and a tagged run's to a `<tag>/` folder inside each; `out` defaults to the project root.
Every notebook run's status goes to `runs.jsonl` beside its records (`cropkit.eval.records`). Parameters are checked
against the kind of each notebook's default before anything runs; a fraction such as 8/255 in a profile or a `-p`
value is a number.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat

from cropkit.eval.records import RUN_ENV, RUNS_FILE, load_records, record_run
from cropkit.runs.profiles import PlannedRun, notebooks_dir, plan

KERNEL = "cropkit"


@dataclass
class NotebookRun:
    notebook: str
    status: str
    seconds: float
    output: Path
    error: str = ""


def _torchrun_share(profile: str, only: Iterable[str] | None, overrides: Mapping[str, Any] | None,
                    runs: list[PlannedRun]) -> list[PlannedRun]:
    """Under torchrun, this rank's runs (`budget.Plan.schedule`), whose kernels see only GPU `LOCAL_RANK`."""
    from cropkit.runs.budget import estimate

    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    os.environ["CUDA_VISIBLE_DEVICES"] = visible[local] if visible else str(local)  # inherited by the kernels
    mine = {r.name for r in estimate(profile, only, overrides, measure=False).schedule(world)[rank]}
    runs = [r for r in runs if r.name in mine]
    print(f"rank {rank} of {world} (GPU {os.environ['CUDA_VISIBLE_DEVICES']}): "
          f"{', '.join(r.name for r in runs) or 'no runs'}", flush=True)
    return runs


def reproduce(profile: str = "quick", only: Iterable[str] | None = None, overrides: Mapping[str, Any] | None = None,
              kernel: str = KERNEL, out: Path | None = None) -> list[NotebookRun]:
    """Execute the selected runs in order; stop at the first failure. Prints a line per run and, while it runs, a
    status line per notebook section.

    Each notebook run gets an id, exported as `CROPKIT_RUN_ID` to its kernel (so every record it writes carries
    it) and logged with its status and the recipe versions it ran with in `runs.jsonl` beside the records: a failed
    run's records are recognisable (`cropkit.eval.records.load_records`), and so is a run of older recipes
    (`cropkit.runs.report.update_reference` refuses it). Under torchrun (`WORLD_SIZE` > 1) each process executes its
    share of the runs on its own GPU: runs that train or reuse one cached artifact stay in one process, and the
    shares are balanced by `cropkit plan`'s estimate. Download the data first (`cropkit download`): the processes
    would race on one download.
    """
    import papermill
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    from cropkit.runs.report import recipe_versions

    runs = plan(profile, only, overrides, out)  # the inputs first: a bad one is named before anything starts
    recipes = recipe_versions()
    try:
        KernelSpecManager().get_kernel_spec(kernel)
    except NoSuchKernel:
        raise RuntimeError(
            f"Jupyter kernel {kernel!r} is not installed. Run `make setup`, or "
            f"`python -m ipykernel install --sys-prefix --name {kernel}` inside the kit's environment."
        ) from None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        runs = _torchrun_share(profile, only, overrides, runs)
    finished: list[NotebookRun] = []
    for i, run in enumerate(runs, 1):
        output, path = run.output, run.notebook
        out_dir = output.parent
        out_dir.mkdir(parents=True, exist_ok=True)
        run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{path.stem[:2]}-{uuid.uuid4().hex[:8]}"
        details = {"notebook": path.stem, "tag": run.tag, "profile": profile, "output": str(output),
                   "recipes": recipes}
        record_run(out_dir, run_id, "running", **details, parameters=run.parameters)
        expected = expected_seconds(path, profile, out_dir)
        print(f"[{i}/{len(runs)}] {run.name}" + (f" (about {expected:.0f} s last time)" if expected else ""),
              flush=True)
        started = time.perf_counter()
        status, error = "failed", ""
        try:
            with _environment({RUN_ENV: run_id, "CROPKIT_PROGRESS": "summary"}), \
                    CellProgress(path, expected, injected=bool(run.parameters)) as progress:
                papermill.execute_notebook(str(path), str(output), parameters=run.parameters, kernel_name=kernel,
                                           cwd=str(notebooks_dir()), progress_bar=False, on_cell_start=progress,
                                           kernel_manager_class=encrypted_kernel_manager())
            status = "ok"
        except papermill.PapermillExecutionError as failure:
            error = f"cell {failure.exec_count}: {failure.ename}: {failure.evalue}"
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        except Exception as failure:  # the kernel died, papermill failed: logged, then raised
            error = f"{type(failure).__name__}: {failure}"
            raise
        finally:
            seconds = time.perf_counter() - started
            record_run(out_dir, run_id, status, **details, seconds=round(seconds, 1), error=error)
        finished.append(NotebookRun(run.name, "ok" if status == "ok" else "FAILED", seconds, output, error))
        if status != "ok":
            print(f"      FAILED after {seconds:.0f}s: {error}\n"
                  f"      the executed notebook, with the traceback, is {output}; its records carry run_id {run_id}",
                  flush=True)
            break
        print(("\r" if sys.stdout.isatty() else "") + f"      ok in {seconds:.0f}s -> {output}".ljust(110), flush=True)
    return finished


def encrypted_kernel_manager() -> type:
    """A kernel manager that provisions CurveZMQ keys for each kernel it starts, so the kernel's sockets are
    encrypted (and ipykernel does not warn, once per notebook, that it runs over TCP in plain text); the plain one
    where this libzmq lacks CurveZMQ."""
    import zmq
    from jupyter_client.manager import AsyncKernelManager

    if not zmq.has("curve"):
        return AsyncKernelManager

    class EncryptedKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.curve_publickey, self.curve_secretkey = zmq.curve_keypair()

    return EncryptedKernelManager


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables (inherited by the kernels started inside) for the block, then restore them."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def expected_seconds(path: Path, profile: str, results: Path) -> float | None:
    """How long `path` took when it last ran under `profile`: its last `ok` run in `results/runs.jsonl`, else, for
    the quick profile, the run whose outputs are committed with the notebook (`metadata.cropkit.seconds`)."""
    runs = [r for r in load_records(results / RUNS_FILE) if r.get("notebook") == path.stem and r.get("status") == "ok"]
    if runs:
        return float(runs[-1]["seconds"])
    if profile == "quick":
        return nbformat.read(path, as_version=4).metadata.get("cropkit", {}).get("seconds")
    return None


class CellProgress:
    """nbclient's `on_cell_start` hook: one status line per notebook section while it runs — the section's heading,
    the cell, the time so far and, from the last run's duration, the time left. On a terminal the line is
    rewritten in place, every second while a long cell runs (inside `with`); in a log each new section gets its
    own line."""

    def __init__(self, path: Path, expected: float | None, *, injected: bool = False, refresh_s: float = 1.0) -> None:
        self.sections, heading = [], ""
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "markdown" and cell.source.lstrip().startswith("#"):
                heading = cell.source.lstrip().splitlines()[0].lstrip("#").strip()
            self.sections.append(heading)
            if injected and "parameters" in cell.metadata.get("tags", []):
                self.sections.append(heading)  # papermill's injected-parameters cell follows it
        self.expected, self.started, self.shown, self.index = expected, time.perf_counter(), None, None
        self.live, self.refresh_s, self.done = sys.stdout.isatty(), refresh_s, threading.Event()

    def __enter__(self) -> CellProgress:
        if self.live:
            threading.Thread(target=self._tick, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()

    def _tick(self) -> None:
        while not self.done.wait(self.refresh_s):
            if self.index is not None:
                print("\r" + self.line().ljust(110), end="", flush=True)

    def line(self) -> str:
        elapsed = time.perf_counter() - self.started
        left = f", about {max(0.0, self.expected - elapsed):.0f} s left" if self.expected else ""
        section = self.sections[self.index] if self.index < len(self.sections) else ""
        return f"      {elapsed:4.0f} s  cell {self.index + 1}/{len(self.sections)}  {section[:60]}{left}"

    def __call__(self, cell: Any, cell_index: int) -> None:
        self.index = cell_index
        section = self.sections[cell_index] if cell_index < len(self.sections) else ""
        if self.live:
            print("\r" + self.line().ljust(110), end="", flush=True)
        elif section != self.shown:
            print(self.line(), flush=True)
        self.shown = section


def summary(runs: list[NotebookRun]) -> str:
    """A plain-text table of the runs."""
    rows = [("notebook", "status", "seconds", "output")]
    rows += [(r.notebook, r.status, f"{r.seconds:.0f}", str(r.output)) for r in runs]
    rows.append(("total", "", f"{sum(r.seconds for r in runs):.0f}", ""))
    widths = [max(len(row[c]) for row in rows) for c in range(4)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def slowest_cells(runs: list[NotebookRun], count: int = 5) -> str:
    """The `count` slowest cells of the executed notebooks (papermill's per-cell durations), each with its
    notebook, cell number and section heading: where the next saving is."""
    cells = []
    for run in runs:
        if not run.output.is_file():
            continue
        heading = ""
        for number, cell in enumerate(nbformat.read(run.output, as_version=4).cells, 1):
            if cell.cell_type == "markdown" and cell.source.lstrip().startswith("#"):
                heading = cell.source.lstrip().splitlines()[0].lstrip("#").strip()
            duration = cell.metadata.get("papermill", {}).get("duration")
            if cell.cell_type == "code" and duration:
                cells.append((float(duration), run.notebook, number, heading))
    rows = [f"{seconds:7.0f} s  {notebook} cell {number}  {heading[:60]}"
            for seconds, notebook, number, heading in sorted(cells, reverse=True)[:count]]
    return "\n".join(["slowest cells:", *rows]) if rows else ""
