"""Batch reproduction: run the numbered notebooks with papermill under a profile of parameters.

A profile is `configs/<name>.yaml` with `parameters` (given to every notebook that declares them) and optional
`notebooks` (per-notebook overrides keyed by number, e.g. "00"). A notebook's entry may hold `runs`, a list of
parameter sets: the notebook then runs once per set (e.g. once per dataset), each run named by its `tag` or else
its `dataset`. Executed notebooks and results files go to `<out>/results/<profile>/`, figures to
`<out>/figures/<profile>/`, and a tagged run's to a `<tag>/` folder inside each; `out` defaults to the project root.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cropkit.paths import project_root

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
    profile = yaml.safe_load(path.read_text()) or {}
    return {"parameters": profile.get("parameters") or {}, "notebooks": profile.get("notebooks") or {},
            "description": profile.get("description", "")}


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """`key=value` strings to a dict; values are parsed as YAML (so 0.1, [1, 2] and null work)."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"Expected key=value, got {pair!r}")
        overrides[key.strip()] = yaml.safe_load(value)
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
    """The notebooks whose number (or full stem) is in `only`; all of them when `only` is empty. An entry may
    name one run of a notebook as `NN:tag` (see `plan`)."""
    wanted = {o.strip().partition(":")[0] for o in only or [] if o.strip()}
    if not wanted:
        return notebooks
    chosen = [nb for nb in notebooks if nb.stem[:2] in wanted or nb.stem in wanted]
    unknown = wanted - {nb.stem[:2] for nb in chosen} - {nb.stem for nb in chosen}
    if unknown:
        raise ValueError(f"No notebook numbered {sorted(unknown)}; have {[nb.stem for nb in notebooks]}")
    return chosen


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
    for entry in only or []:
        key, _, tag = entry.strip().partition(":")
        if key:
            wanted.setdefault(key, set()).add(tag or None)
    overrides = dict(overrides or {})
    runs, used = [], set()
    for path in select(numbered_notebooks(), list(wanted)):
        declared = notebook_parameters(path)
        tags = wanted.get(path.stem[:2], set()) | wanted.get(path.stem, set())
        available = notebook_runs(spec["notebooks"].get(path.stem[:2], {}))
        missing = tags - {None} - {tag for tag, _ in available}
        if missing:
            raise ValueError(f"{path.stem} has no run tagged {sorted(missing)} in profile {profile!r}; its runs: "
                             f"{[tag for tag, _ in available]}")
        for tag, entry in available:
            if tags and None not in tags and tag not in tags:
                continue
            results, figures = output_dirs(profile, out, tag)
            merged = {**spec["parameters"], **entry, **overrides,
                      "results_dir": str(results), "figures_dir": str(figures)}
            params = {k: v for k, v in merged.items() if k in declared}
            used |= params.keys()
            runs.append(PlannedRun(path, tag, params))
    unused = set(overrides) - used
    if unused:
        raise ValueError(f"No selected notebook declares the parameter(s) {sorted(unused)}")
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
    """Execute the selected runs in order; stop at the first failure. Prints a line per run.

    Under torchrun (`WORLD_SIZE` > 1) each process executes its share of the runs on its own GPU: runs that train
    or reuse one cached artifact stay in one process, and the shares are balanced by `cropkit plan`'s estimate.
    Download the data first (`cropkit download`): the processes would race on one download.
    """
    import papermill
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(kernel)
    except NoSuchKernel:
        raise RuntimeError(
            f"Jupyter kernel {kernel!r} is not installed. Run `make setup`, or "
            f"`python -m ipykernel install --sys-prefix --name {kernel}` inside the kit's environment."
        ) from None
    runs = plan(profile, only, overrides, out)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        runs = _torchrun_share(profile, only, overrides, runs)
    finished: list[NotebookRun] = []
    for i, run in enumerate(runs, 1):
        output = run.output
        output.parent.mkdir(parents=True, exist_ok=True)
        print(f"[{i}/{len(runs)}] {run.name} ...", flush=True)
        started = time.perf_counter()
        try:
            papermill.execute_notebook(str(run.notebook), str(output), parameters=run.parameters, kernel_name=kernel,
                                       cwd=str(notebooks_dir()), progress_bar=False)
        except papermill.PapermillExecutionError as error:
            finished.append(NotebookRun(run.name, "FAILED", time.perf_counter() - started, output,
                                        f"cell {error.exec_count}: {error.ename}: {error.evalue}"))
            print(f"      FAILED after {finished[-1].seconds:.0f}s: {finished[-1].error}\n"
                  f"      the executed notebook, with the traceback, is {output}", flush=True)
            break
        finished.append(NotebookRun(run.name, "ok", time.perf_counter() - started, output))
        print(f"      ok in {finished[-1].seconds:.0f}s -> {output}", flush=True)
    return finished


def summary(runs: list[NotebookRun]) -> str:
    """A plain-text table of the runs."""
    rows = [("notebook", "status", "seconds", "output")]
    rows += [(r.notebook, r.status, f"{r.seconds:.0f}", str(r.output)) for r in runs]
    rows.append(("total", "", f"{sum(r.seconds for r in runs):.0f}", ""))
    widths = [max(len(row[c]) for row in rows) for c in range(4)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)
