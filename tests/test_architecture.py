"""The architecture contract in `pyproject.toml` holds, and it catches what it names: an import back up a
layer, an import between two method families, and an import circle inside a package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint(project: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` on the `cropkit` package inside `project`, with that project's contract."""
    env = os.environ | {"PYTHONPATH": str(project)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", str(project / "pyproject.toml")],
                          cwd=project, env=env, capture_output=True, text=True, timeout=300)


def test_the_package_keeps_its_architecture_contract():
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(("module", "line", "broken"), [
    ("core/paths.py", "import cropkit.runs.report", "Layers import only downward"),  # the lowest layer importing the top one
    ("foundation/heads.py", "import cropkit.eval.stats", "Layers import only downward"),  # a layer importing the one above it
    ("acl/rcs.py", "import cropkit.cropd.losses", "Layers import only downward"),  # one method family importing another
    ("core/validate.py", "import cropkit.core.checkpoint", "No import circles in any package"),  # checkpoint imports validate
], ids=["core-imports-runs", "foundation-imports-eval", "acl-imports-cropd", "circle-in-core"])
def test_the_contract_breaks_on_a_forbidden_import(tmp_path: Path, module: str, line: str, broken: str):
    shutil.copytree(ROOT / "cropkit", tmp_path / "cropkit", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "cropkit" / module
    target.write_text(target.read_text() + f"\n{line}\n")
    result = lint(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    verdicts = [line for line in result.stdout.splitlines() if line.endswith(("KEPT", "BROKEN"))]
    assert any(line.startswith(broken) and line.endswith("BROKEN") for line in verdicts), result.stdout
