"""Batch reproduction: profiles, parameter plumbing, and the CLI running a notebook end to end."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time

import nbformat
import pytest

from cropkit.paths import project_root
from cropkit.reproduce import (available_profiles, load_profile, notebook_parameters, notebook_runs,
                               numbered_notebooks, parse_overrides, plan)


def test_quick_profile_is_the_notebook_defaults():
    quick = load_profile("quick")["parameters"]
    for path in numbered_notebooks():
        defaults = {k: ast.literal_eval(v) for k, v in notebook_parameters(path).items()}
        for key, value in quick.items():
            if key in defaults:
                assert defaults[key] == value, f"{path.name}: {key} default {defaults[key]!r} != quick {value!r}"


def test_papermill_reads_every_parameter():
    """papermill parses `name = value  # help` lines itself; a line it cannot parse is left out of its inspection."""
    import papermill

    for path in numbered_notebooks():
        assert set(papermill.inspect_notebook(str(path))) == set(notebook_parameters(path)), path.name


def test_every_profile_names_known_parameters():
    declared = set().union(*(notebook_parameters(p) for p in numbered_notebooks()))
    assert {"quick", "cifar10-subset", "paper"} <= set(available_profiles())
    by_number = {p.stem[:2]: set(notebook_parameters(p)) for p in numbered_notebooks()}
    for name in available_profiles():
        profile = load_profile(name)
        unknown = set(profile["parameters"]) - declared
        assert not unknown, f"profile {name} sets parameters no notebook declares: {unknown}"
        for number, entry in profile["notebooks"].items():
            for tag, overrides in notebook_runs(entry):
                assert set(overrides) <= by_number[number], f"profile {name}, notebook {number} {tag}: unknown parameters"


def test_overrides_parse_as_yaml_and_unknown_ones_are_refused():
    assert parse_overrides(["eps=0.2", "eps_grid=[0, 0.1]", "n_eval=null"]) == {
        "eps": 0.2, "eps_grid": [0, 0.1], "n_eval": None}
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["eps"])
    with pytest.raises(ValueError, match="declares"):
        plan("quick", only=["00"], overrides={"epsilon": 0.1})
    with pytest.raises(ValueError, match="No notebook numbered"):
        plan("quick", only=["99"])
    with pytest.raises(ValueError, match="Unknown profile"):
        plan("nope")


def test_plan_routes_outputs_by_profile(tmp_path):
    (run,) = plan("cifar10-subset", only=["00"], overrides={"n_eval": 10})
    params = run.parameters
    assert run.notebook.name.startswith("00_") and params["n_eval"] == 10 and params["dataset"] == "cifar10-subset"
    assert params["results_dir"] == str(project_root() / "results" / "cifar10-subset")
    (run,) = plan("quick", only=["00"], out=tmp_path)
    assert run.parameters["figures_dir"] == str(tmp_path / "figures" / "quick") and run.tag is None
    assert run.output == tmp_path / "results" / "quick" / "00_quickstart.ipynb"


def test_a_notebook_runs_once_per_dataset_of_the_profile(tmp_path):
    runs = plan("paper", only=["02", "04"], out=tmp_path)
    assert [r.name for r in runs] == [f"02_main_results:{d}" for d in
                                      ("cifar10", "cifar100", "svhn", "cifar2", "imagenette", "tiny-imagenet")] + [
        "04_cross_dataset_transfer"]
    by_tag = {r.tag: r.parameters for r in runs}
    assert by_tag["svhn"]["dataset"] == "svhn" and by_tag["svhn"]["alf_steps"] == 10  # the entry's shared keys
    assert by_tag["cifar2"]["strong_attack"] == by_tag["cifar10"]["strong_attack"] == "autoattack-original"
    assert by_tag["svhn"]["results_dir"] == str(tmp_path / "results" / "paper" / "svhn")
    assert by_tag["svhn"]["figures_dir"] == str(tmp_path / "figures" / "paper" / "svhn")
    assert runs[0].output == tmp_path / "results" / "paper" / "cifar10" / "02_main_results.ipynb"
    assert by_tag[None]["results_dir"] == str(tmp_path / "results" / "paper")
    assert [r.tag for r in plan("paper", only=["02:svhn", "02:cifar2"])] == ["svhn", "cifar2"]
    with pytest.raises(ValueError, match="has no run so tagged"):
        plan("paper", only=["02:mnist"])
    with pytest.raises(ValueError, match="distinct tags"):
        notebook_runs({"runs": [{"dataset": "svhn"}, {"dataset": "svhn"}]})
    assert notebook_runs({"runs": [{"dataset": "svhn", "eps": 0.1, "tag": "svhn-big"}], "n_eval": 5}) == [
        ("svhn-big", {"dataset": "svhn", "eps": 0.1, "n_eval": 5})]


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    return subprocess.run([sys.executable, "-m", "cropkit", *args], cwd=project_root(), env=env,
                          capture_output=True, text=True, timeout=1200)


def test_cli_reproduce_runs_a_notebook_end_to_end(tmp_path):
    done = _cli("reproduce", "--profile", "quick", "--only", "00", "--out", str(tmp_path),
                "-p", "n_eval=100", "-p", "eps_grid=[0.0, 0.1, 0.3]")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[1/1] 00_quickstart" in done.stdout and "total" in done.stdout
    assert "without encryption" not in done.stdout + done.stderr  # the kernel's sockets are encrypted
    executed = nbformat.read(tmp_path / "results" / "quick" / "00_quickstart.ipynb", as_version=4)
    assert any(c.get("outputs") for c in executed.cells if c.cell_type == "code")
    records = [json.loads(line) for line in (tmp_path / "results" / "quick" / "00_quickstart.jsonl").read_text().splitlines()]
    attacked = [r for r in records if r.get("attack")]
    assert {r["attack"] for r in attacked} >= {"PGD-10", "PGD-20"} and all(r["n_examples"] == 100 for r in attacked)
    assert (tmp_path / "figures" / "quick" / "00_accuracy_vs_eps.png").stat().st_size > 10_000


def test_make_reproduce_passes_only_to_the_cli():
    """`make reproduce ONLY=00` (the README's first look) runs notebook 00 alone; without ONLY, every notebook."""
    def command(*args):
        caller = ("MAKEFLAGS", "MFLAGS", "ONLY", "PROFILE")  # a calling make's variables would leak into this one
        env = {k: v for k, v in os.environ.items() if k not in caller}
        done = subprocess.run(["make", "-n", "reproduce", *args], cwd=project_root(), env=env, capture_output=True,
                              text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().splitlines()[-1].split()

    assert command("ONLY=00")[1:] == ["reproduce", "--profile", "quick", "--only", "00"]
    assert command()[1:] == ["reproduce", "--profile", "quick"]


def test_cli_stops_clearly_on_a_failing_notebook(tmp_path):
    done = _cli("reproduce", "--profile", "quick", "--only", "00", "--out", str(tmp_path),
                "-p", "dataset=no-such-dataset")
    assert done.returncode == 1
    assert "FAILED" in done.stdout and "Unknown dataset 'no-such-dataset'" in done.stdout


def test_progress_line_keeps_counting_during_a_long_cell_on_a_terminal(capsys):
    from cropkit.reproduce import CellProgress

    path = numbered_notebooks()[0]
    progress = CellProgress(path, expected=100.0, refresh_s=0.05)
    progress.live = True  # as on a terminal
    with progress:
        progress(None, 3)
        time.sleep(0.3)  # one long cell: no further cell starts
    lines = capsys.readouterr().out.split("\r")
    assert len(lines) >= 4 and all(f"cell 4/{len(progress.sections)}" in line for line in lines if line)
    time.sleep(0.1)
    assert capsys.readouterr().out == ""  # the ticker stops with the notebook
    injected = CellProgress(path, expected=None, injected=True)  # papermill adds a cell after `parameters`
    assert len(injected.sections) == len(progress.sections) + 1 == len(nbformat.read(path, 4).cells) + 1
    quiet = CellProgress(path, expected=None)  # in a log: one line per new section, no ticker
    with quiet:
        quiet(None, 0)
        quiet(None, 0)
    assert capsys.readouterr().out.count("\n") == 1


def test_cli_rejects_bad_arguments():
    done = _cli("reproduce", "--profile", "quick", "--only", "00", "-p", "epsilon=1")
    assert done.returncode == 2 and "declares" in done.stderr
