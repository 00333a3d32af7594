"""Profiles and the runs they plan: which notebooks run, with which parameters, writing where.

A profile is `configs/<name>.yaml` with `parameters` (given to every notebook that declares them) and optional
`notebooks` (per-notebook overrides keyed by number, e.g. "00"). A notebook's entry may hold `runs`, a list of
parameter sets: the notebook then runs once per set (e.g. once per dataset), each run named by its `tag` or else
its `dataset`. Parameters are checked against the kind of each notebook's default before anything runs; a
fraction such as 8/255 in a profile or a `-p` value is a number.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cropkit.core.paths import project_root
from cropkit.core.validate import InputError, parse_number_text, require


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
            "check the spelling against the notebooks' parameters cells (cropkit.runs.reproduce.notebook_parameters)")
    return runs
