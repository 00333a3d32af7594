"""The README's numbers are generated from committed reference records, and the committed notebooks' outputs were
made by the current code. Whether a fresh quick-profile run reproduces those numbers is `make check`'s question."""

from __future__ import annotations

import nbformat
import pytest

from cropkit.core.paths import project_root
from cropkit.runs import report
from cropkit.runs.profiles import numbered_notebooks

PROFILE = "quick"


@pytest.fixture(scope="module")
def reference():
    found = report.load_reference(PROFILE)
    assert found, "reference/quick/ holds no records: run `cropkit report --profile quick --update-from results/quick`"
    return found


def test_every_notebook_has_reference_records_and_a_summary(reference):
    assert set(reference) == {path.stem for path in numbered_notebooks()}
    for name, records in reference.items():
        assert report.summary(name, records).strip(), name


def test_committed_results_page_and_readme_are_generated_from_the_reference():
    """For the quick profile and every other profile with committed records (e.g. a CPU-size cifar10-subset run)."""
    for profile in sorted({PROFILE} | {p.name for p in (project_root() / "reference").iterdir() if p.is_dir()}):
        stale = report.stale(profile)
        assert not stale, f"out of date: {stale}; run `cropkit report --profile {profile}` and commit the result"


def test_the_readme_gives_each_notebooks_time_in_the_run_that_made_the_reference(reference):
    block = report.readme_block(PROFILE, reference)
    for path in numbered_notebooks():
        seconds = nbformat.read(path, as_version=4).metadata["cropkit"]["seconds"]
        assert f"{path.stem[:2]} {seconds:.0f} s" in block, path.name


def test_committed_notebooks_carry_outputs_made_by_the_current_code():
    """The notebooks are committed with the quick profile's outputs (readable without running them); outputs made
    by an older recipe, or before a code cell was edited, are stale: refresh them with `make reference`."""
    for path in numbered_notebooks():
        notebook = nbformat.read(path, as_version=4)
        stamp = notebook.metadata.get("cropkit")
        assert stamp, f"{path.name} carries no outputs of the quick profile: run `make reference`"
        assert stamp["recipes"] == report.recipe_versions(), f"{path.name}: outputs of older recipes {stamp['recipes']}"
        assert stamp["source"] == report.source_digest(notebook), f"{path.name}: code edited after its outputs were made"
        assert any(c.get("outputs") for c in notebook.cells if c.cell_type == "code"), f"{path.name} has no outputs"
