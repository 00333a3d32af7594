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

from cropkit.core.paths import project_root
from cropkit.eval.records import append_records, load_records, record_run
from cropkit.runs import report
from cropkit.runs.profiles import (
    available_profiles,
    load_profile,
    notebook_parameters,
    notebook_runs,
    numbered_notebooks,
    parse_overrides,
    plan,
)


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
    slowest = done.stdout.split("slowest cells:\n")[1].splitlines()
    assert len(slowest) == 5 and all(" s  00_quickstart cell " in line for line in slowest)
    assert "without encryption" not in done.stdout + done.stderr  # the kernel's sockets are encrypted
    executed = nbformat.read(tmp_path / "results" / "quick" / "00_quickstart.ipynb", as_version=4)
    assert any(c.get("outputs") for c in executed.cells if c.cell_type == "code")
    records = [json.loads(line) for line in (tmp_path / "results" / "quick" / "00_quickstart.jsonl").read_text().splitlines()]
    attacked = [r for r in records if r.get("attack")]
    assert {r["attack"] for r in attacked} >= {"PGD-10", "PGD-20"} and all(r["n_examples"] == 100 for r in attacked)
    assert (tmp_path / "figures" / "quick" / "00_accuracy_vs_eps.png").stat().st_size > 10_000
    logged = load_records(tmp_path / "results" / "quick" / "runs.jsonl")[-1]
    assert logged["status"] == "ok" and logged["recipes"] == report.recipe_versions()  # what update_reference checks


def test_update_reference_takes_only_complete_runs_of_the_current_recipes(tmp_path, monkeypatch):
    """A results folder can hold older runs beside a fresh `--only` one: they are refused, and nothing is written."""
    monkeypatch.setattr(report, "reference_dir", lambda profile: tmp_path / "reference" / profile)
    folder = tmp_path / "results"

    def run(name, run_id, status="ok", recipes=report.recipe_versions()):
        append_records(folder / f"{name}.jsonl", [{"model": "m", "run_id": run_id, "clean_accuracy": 0.5}])
        record_run(folder, run_id, status, notebook=name, tag=None, seconds=1.0, recipes=recipes)

    run("00_a", "r1")
    run("01_b", "r2", recipes={**report.recipe_versions(), "pretrain": 0})
    with pytest.raises(ValueError, match=r"01_b: made with recipes .*--only 01`"):
        report.update_reference("toy", folder)
    assert not (tmp_path / "reference").exists()
    run("01_b", "r3")
    run("00_a", "r4", status="failed")  # its records are left out, and its executed copy is no longer r1's
    with pytest.raises(ValueError, match=r"00_a: its last run \(r4\) ended failed"):
        report.update_reference("toy", folder)
    run("00_a", "r5")
    append_records(folder / "02_c.jsonl", [{"model": "m", "run_id": None}])  # run by hand, not by `reproduce`
    with pytest.raises(ValueError, match=r"02_c: its last run \(none logged\) is not in runs.jsonl"):
        report.update_reference("toy", folder)
    (folder / "02_c.jsonl").unlink()
    written = report.update_reference("toy", folder)
    assert sorted(p.name for p in written) == ["00_a.jsonl", "01_b.jsonl"]
    assert [r["run_id"] for r in load_records(tmp_path / "reference" / "toy" / "00_a.jsonl")] == ["r5"]


def _make(*args: str) -> subprocess.CompletedProcess:
    """`make ARGS` in the project as a user would type it: under `make test`, the calling make's variables would leak
    into this one, and its MAKELEVEL would make it print "Entering/Leaving directory" lines."""
    caller = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "ONLY", "PROFILE", "VENV")
    env = {k: v for k, v in os.environ.items() if k not in caller}
    return subprocess.run(["make", *args], cwd=project_root(), env=env, capture_output=True, text=True, timeout=60)


def test_make_reproduce_passes_only_to_the_cli():
    """`make reproduce ONLY=00` (the README's first look) runs notebook 00 alone; without ONLY, every notebook."""
    def command(*args):
        done = _make("-n", "reproduce", *args)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().splitlines()[-1].split()

    assert command("ONLY=00")[1:] == ["reproduce", "--profile", "quick", "--only", "00"]
    assert command()[1:] == ["reproduce", "--profile", "quick"]


def test_make_setup_refuses_a_disk_without_room_before_installing(tmp_path):
    """pip's "No space left on device" comes minutes into an install; setup says so before it starts."""
    venv = tmp_path / "venv"
    done = _make("setup", f"VENV={venv}", f"SETUP_FREE_GIB={10**9}")
    assert done.returncode != 0
    assert "GiB free on the disk that would hold" in done.stdout and "set VENV=" in done.stdout
    assert not venv.exists()


def test_cli_stops_clearly_on_a_failing_notebook(tmp_path):
    done = _cli("reproduce", "--profile", "quick", "--only", "00", "--out", str(tmp_path),
                "-p", "dataset=no-such-dataset")
    assert done.returncode == 1
    assert "FAILED" in done.stdout and "Unknown dataset 'no-such-dataset'" in done.stdout


def test_progress_line_keeps_counting_during_a_long_cell_on_a_terminal(capsys):
    from cropkit.runs.reproduce import CellProgress

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
