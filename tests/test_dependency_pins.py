"""The lock, pyproject.toml and environment.yml agree; the lock has exact pins and no download addresses."""

from __future__ import annotations

import re
import tomllib

import yaml

from cropkit.core.paths import project_root

ROOT = project_root()


def _name(requirement: str) -> str:
    return re.split(r"[=<>~!; \[]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements" / "lock.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^ ;]+)( ; .+)?", line.strip())
            assert match, f"lock line is not an exact name==version pin: {line!r}"
            pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pins


def test_lock_pins_every_dependency_exactly_without_addresses():
    text = (ROOT / "requirements" / "lock.txt").read_text()
    assert "://" not in text and " @ " not in text
    lock = _lock()
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    missing = [d for d in dependencies if _name(d) not in lock]
    assert not missing, f"pyproject dependencies absent from the lock: {missing}"
    for dependency in dependencies:
        if "==" in dependency:
            assert lock[_name(dependency)] == dependency.split("==")[1]


def test_environment_yml_matches_the_lock():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    lock = _lock()
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    python = next(d for d in conda if d.startswith("python="))
    assert lock and python.startswith("python=3.")
    pinned = {}
    for requirement in pip:
        name, _, version = requirement.partition("==")
        pinned[name.lower()] = version
    assert pinned == {name: lock[name] for name in pinned}, "environment.yml pins differ from the lock"
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    # torchattacks is installed with --no-deps after the environment is created (see environment.yml)
    wanted = {_name(d) for d in dependencies} - {"torchattacks"}
    assert wanted <= pinned.keys(), f"missing from environment.yml: {wanted - pinned.keys()}"
    assert f"torchattacks=={lock['torchattacks']}" in (ROOT / "environment.yml").read_text()
