"""Batch reproduction: run the numbered notebooks with papermill under a profile of parameters.

A profile is `configs/<name>.yaml` with `parameters` (given to every notebook that declares them) and optional
`notebooks` (per-notebook overrides keyed by number, e.g. "00"). Executed notebooks and results files go to
`<out>/results/<profile>/`, figures to `<out>/figures/<profile>/`; `out` defaults to the project root.
"""

from __future__ import annotations

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
    """The notebooks whose number (or full stem) is in `only`; all of them when `only` is empty."""
    wanted = {o.strip() for o in only or [] if o.strip()}
    if not wanted:
        return notebooks
    chosen = [nb for nb in notebooks if nb.stem[:2] in wanted or nb.stem in wanted]
    unknown = wanted - {nb.stem[:2] for nb in chosen} - {nb.stem for nb in chosen}
    if unknown:
        raise ValueError(f"No notebook numbered {sorted(unknown)}; have {[nb.stem for nb in notebooks]}")
    return chosen


def output_dirs(profile: str, out: Path | None = None) -> tuple[Path, Path]:
    """(results folder, figures folder) of a profile's run under `out` (default: the project root)."""
    base = out or project_root()
    return base / "results" / profile, base / "figures" / profile


def plan(profile: str, only: Iterable[str] | None = None, overrides: Mapping[str, Any] | None = None,
         out: Path | None = None) -> list[tuple[Path, dict[str, Any]]]:
    """Each selected notebook with the parameters it will receive; unknown override keys raise."""
    spec = load_profile(profile)
    results, figures = output_dirs(profile, out)
    chosen = select(numbered_notebooks(), only)
    overrides = dict(overrides or {})
    runs, used = [], set()
    for path in chosen:
        declared = notebook_parameters(path)
        merged = {**spec["parameters"], **spec["notebooks"].get(path.stem[:2], {}), **overrides,
                  "results_dir": str(results), "figures_dir": str(figures)}
        params = {k: v for k, v in merged.items() if k in declared}
        used |= params.keys()
        runs.append((path, params))
    unused = set(overrides) - used
    if unused:
        raise ValueError(f"No selected notebook declares the parameter(s) {sorted(unused)}")
    return runs


def reproduce(profile: str = "quick", only: Iterable[str] | None = None, overrides: Mapping[str, Any] | None = None,
              kernel: str = KERNEL, out: Path | None = None) -> list[NotebookRun]:
    """Execute the selected notebooks in order; stop at the first failure. Prints a line per notebook."""
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
    out_dir = output_dirs(profile, out)[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    finished: list[NotebookRun] = []
    for i, (path, params) in enumerate(runs, 1):
        output = out_dir / path.name
        print(f"[{i}/{len(runs)}] {path.stem} ...", flush=True)
        started = time.perf_counter()
        try:
            papermill.execute_notebook(str(path), str(output), parameters=params, kernel_name=kernel,
                                       cwd=str(notebooks_dir()), progress_bar=False)
        except papermill.PapermillExecutionError as error:
            finished.append(NotebookRun(path.stem, "FAILED", time.perf_counter() - started, output,
                                        f"cell {error.exec_count}: {error.ename}: {error.evalue}"))
            print(f"      FAILED after {finished[-1].seconds:.0f}s: {finished[-1].error}\n"
                  f"      the executed notebook, with the traceback, is {output}", flush=True)
            break
        finished.append(NotebookRun(path.stem, "ok", time.perf_counter() - started, output))
        print(f"      ok in {finished[-1].seconds:.0f}s -> {output}", flush=True)
    return finished


def summary(runs: list[NotebookRun]) -> str:
    """A plain-text table of the runs."""
    rows = [("notebook", "status", "seconds", "output")]
    rows += [(r.notebook, r.status, f"{r.seconds:.0f}", str(r.output)) for r in runs]
    rows.append(("total", "", f"{sum(r.seconds for r in runs):.0f}", ""))
    widths = [max(len(row[c]) for row in rows) for c in range(4)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)
