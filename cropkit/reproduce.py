"""Batch reproduction: run the numbered notebooks with papermill under a profile of parameters.

A profile is `configs/<name>.yaml` with `parameters` (given to every notebook that declares them) and optional
`notebooks` (per-notebook overrides keyed by number, e.g. "00"). A notebook's entry may hold `runs`, a list of
parameter sets: the notebook then runs once per set (e.g. once per dataset), each run named by its `tag` or else
its `dataset`. Executed notebooks and results files go to `<out>/results/<profile>/`, figures to
`<out>/figures/<profile>/`, and a tagged run's to a `<tag>/` folder inside each; `out` defaults to the project root.
Every notebook run's status goes to `runs.jsonl` beside its records (`cropkit.results`). Parameters are checked
against the kind of each notebook's default before anything runs; a fraction such as 8/255 in a profile or a `-p`
value is a number.
"""

from __future__ import annotations

import ast
import contextlib
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import yaml

from cropkit.paths import project_root
from cropkit.results import RUN_ENV, RUNS_FILE, load_records, record_run
from cropkit.validate import InputError, parse_number_text, require

KERNEL = "cropkit"


def notebooks_dir() -> Path:
    return project_root() / "notebooks"


def numbered_notebooks() -> list[Path]:
    """`notebooks/NN_*.ipynb` in order."""
    return sorted(p for p in notebooks_dir().glob("[0-9][0-9]_*.ipynb"))


def available_profiles() -> list[str]:
    return sorted(p.stem for p in (project_root() / "configs").glob("*.yaml"))


def load_profile(name: str) -> dict[str, Any]:
    """The profile `configs/<name>.yaml` as a dict with `parameters` and `notebooks` keys."""
    path = project_root() / "configs" / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"Unknown profile {name!r}; choose one of {', '.join(available_profiles())}")
    try:
        profile = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise InputError("profile", name, f"{path} is not valid YAML ({str(error).splitlines()[0]})",
                         "fix the file") from None
    return {"parameters": parse_number_text(profile.get("parameters") or {}),
            "notebooks": parse_number_text(profile.get("notebooks") or {}),
            "description": profile.get("description", "")}


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """`key=value` strings to a dict; values are parsed as YAML (so 0.1, [1, 2] and null work), and a fraction
    such as 8/255 (a string to YAML) becomes its float."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        require(bool(sep) and bool(key.strip()), "-p", pair, "Expected key=value", "write e.g. -p eps=8/255")
        try:
            overrides[key.strip()] = parse_number_text(yaml.safe_load(value))
        except yaml.YAMLError as error:
            raise InputError(f"-p {key.strip()}", value, f"not a valid YAML value ({str(error).splitlines()[0]})",
                             "close brackets and quotes, e.g. -p eps_grid=[0, 0.1] or -p dataset='name'") from None
    return overrides


def notebook_parameters(path: Path) -> dict[str, Any]:
    """The names and defaults of a notebook's `parameters` cell."""
    import papermill

    return {name: info["default"] for name, info in papermill.inspect_notebook(str(path)).items()}


@dataclass
class NotebookRun:
    notebook: str
    status: str
    seconds: float
    output: Path
    error: str = ""


def select(notebooks: list[Path], only: Iterable[str] | None) -> list[Path]:
    """The notebooks whose number (or full stem) is in `only` (an entry `NN:tag` names one run of a notebook, see
    `plan`); all of them when `only` is None (an empty selection is refused rather than read as "all")."""
    if only is None:
        return notebooks
    only = [only] if isinstance(only, str) else list(only)
    wanted = {o.strip().partition(":")[0] for o in only if o.strip()}
    require(bool(wanted), "only", ",".join(only), "names no notebook",
            "pass notebook numbers such as 00,02, or leave it out to run every notebook")
    chosen = [nb for nb in notebooks if nb.stem[:2] in wanted or nb.stem in wanted]
    unknown = wanted - {nb.stem[:2] for nb in chosen} - {nb.stem for nb in chosen}
    require(not unknown, "only", ",".join(only), f"No notebook numbered {sorted(unknown)}",
            f"choose among {[nb.stem for nb in notebooks]}")
    return chosen


_KINDS = ((bool, "true or false"), (int, "a whole number"), (float, "a number"), (str, "a string"),
          (list, "a list"), (dict, "a mapping"))


def _kind(value: Any) -> str | None:
    return next((name for kind, name in _KINDS if isinstance(value, kind)), None)


def check_parameter(notebook: str, key: str, value: Any, default_source: str) -> None:
    """Refuse a value of another kind than the notebook's default (a string for a number, a float for a count);
    None is always allowed (parameters such as n_eval read it as "all"), and so is an int for a float."""
    try:
        default = ast.literal_eval(default_source)
    except (ValueError, SyntaxError):
        return
    if value is None or default is None:
        return
    wanted, given = _kind(default), _kind(value)
    require(given == wanted or (wanted == "a number" and given == "a whole number"), key, value,
            f"{notebook} expects {wanted} (its default is {default_source}), got {given or type(value).__name__}",
            f"pass {wanted}, e.g. -p {key}={default_source.replace(' ', '')}")


def notebook_runs(entry: Mapping[str, Any]) -> list[tuple[str | None, dict[str, Any]]]:
    """A profile's entry for one notebook as (tag, parameters) per run: one untagged run, or one per `runs` item
    (the entry's other keys shared by all), tagged by its `tag` or else its `dataset`."""
    if "runs" not in entry:
        return [(None, dict(entry))]
    shared = {k: v for k, v in entry.items() if k != "runs"}
    runs = []
    for item in entry["runs"]:
        params = {k: v for k, v in item.items() if k != "tag"}
        tag = item.get("tag") or params.get("dataset")
        if not tag:
            raise ValueError(f"every item of `runs` needs a `tag` or a `dataset` to name its outputs; got {item}")
        runs.append((str(tag), shared | params))
    tags = [tag for tag, _ in runs]
    if len(set(tags)) != len(tags):
        raise ValueError(f"the runs of one notebook need distinct tags, got {tags}")
    return runs


def output_dirs(profile: str, out: Path | None = None, tag: str | None = None) -> tuple[Path, Path]:
    """(results folder, figures folder) of a profile's run under `out` (default: the project root)."""
    base = out or project_root()
    results, figures = base / "results" / profile, base / "figures" / profile
    if tag is None:
        return results, figures
    folder = re.sub(r"[^A-Za-z0-9._-]+", "_", tag)  # "cifar10-subset[cat,dog]" -> "cifar10-subset_cat_dog_"
    return results / folder, figures / folder


@dataclass(frozen=True)
class PlannedRun:
    """One execution of a notebook: the notebook, its run's tag (None for a notebook's only run), its parameters."""

    notebook: Path
    tag: str | None
    parameters: dict[str, Any]

    @property
    def name(self) -> str:
        """'02_main_results' or '02_main_results:cifar10'."""
        return self.notebook.stem + (f":{self.tag}" if self.tag is not None else "")

    @property
    def output(self) -> Path:
        """Where the executed notebook is written: its run's results folder."""
        return Path(self.parameters["results_dir"]) / self.notebook.name


def plan(profile: str, only: Iterable[str] | None = None, overrides: Mapping[str, Any] | None = None,
         out: Path | None = None) -> list[PlannedRun]:
    """Each selected run with the parameters it will receive; unknown override keys raise.

    `only` holds notebook numbers or stems (every run of each), or `NN:tag` for one run.
    """
    spec = load_profile(profile)
    wanted: dict[str, set[str | None]] = {}
    for entry in [only] if isinstance(only, str) else only or []:
        key, _, tag = entry.strip().partition(":")
        if key:
            wanted.setdefault(key, set()).add(tag or None)
    overrides = dict(overrides or {})
    runs, used = [], set()
    for path in select(numbered_notebooks(), None if only is None else list(only)):
        declared = notebook_parameters(path)
        tags = wanted.get(path.stem[:2], set()) | wanted.get(path.stem, set())
        available = notebook_runs(spec["notebooks"].get(path.stem[:2], {}))
        missing = tags - {None} - {tag for tag, _ in available}
        require(not missing, "only", sorted(missing), f"{path.stem} has no run so tagged in profile {profile!r}",
                f"choose among its runs {[tag for tag, _ in available]}")
        for tag, entry in available:
            if tags and None not in tags and tag not in tags:
                continue
            results, figures = output_dirs(profile, out, tag)
            merged = {**spec["parameters"], **entry, **overrides,
                      "results_dir": str(results), "figures_dir": str(figures)}
            params = {k: v for k, v in merged.items() if k in declared}
            for key, value in params.items():
                check_parameter(path.stem, key, value, declared[key])
            used |= params.keys()
            runs.append(PlannedRun(path, tag, params))
    unused = set(overrides) - used
    require(not unused, "-p", sorted(unused), "No selected notebook declares the parameter(s)",
            "check the spelling against the notebooks' parameters cells (cropkit.reproduce.notebook_parameters)")
    return runs


def _torchrun_share(profile: str, only: Iterable[str] | None, overrides: Mapping[str, Any] | None,
                    runs: list[PlannedRun]) -> list[PlannedRun]:
    """Under torchrun, this rank's runs (`budget.Plan.schedule`), whose kernels see only GPU `LOCAL_RANK`."""
    from cropkit.budget import estimate

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
    run's records are recognisable (`cropkit.results.load_records`), and so is a run of older recipes
    (`cropkit.report.update_reference` refuses it). Under torchrun (`WORLD_SIZE` > 1) each process executes its
    share of the runs on its own GPU: runs that train or reuse one cached artifact stay in one process, and the
    shares are balanced by `cropkit plan`'s estimate. Download the data first (`cropkit download`): the processes
    would race on one download.
    """
    import papermill
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    from cropkit.report import recipe_versions

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
