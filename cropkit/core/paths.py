"""Where the kit reads and writes: the project root, the cache, results, figures and shared data.

Relative paths in notebook parameters and profiles are resolved against the project root, so a notebook
behaves the same whether JupyterLab, papermill or nbval started it (each uses a different working directory).
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # cropkit/


def project_root() -> Path:
    """The checkout that holds this package (the folder with `pyproject.toml`), else the working directory."""
    candidate = _PACKAGE_DIR.parent
    if (candidate / "pyproject.toml").is_file():
        return candidate
    return Path.cwd()


def resolve(path: str | os.PathLike[str]) -> Path:
    """An absolute path: `~` expanded, relative paths taken from the project root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else project_root() / p


def output_root() -> Path:
    """Where relative results and figures folders are written: `$CROPKIT_OUT`, else the project root (the test
    suite points it at a temporary folder, so its notebook runs never mix with a user's results)."""
    return Path(os.environ.get("CROPKIT_OUT", project_root())).expanduser()


def output(path: str | os.PathLike[str]) -> Path:
    """An absolute output path: `~` expanded, relative paths taken from `output_root()`."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else output_root() / p


def cache_dir() -> Path:
    """Trained artifacts shared between notebooks and runs: `$CROPKIT_CACHE`, else `~/.cache/cropkit`."""
    return Path(os.environ.get("CROPKIT_CACHE", Path.home() / ".cache" / "cropkit")).expanduser()


def data_dir() -> Path:
    """Download cache for torchvision datasets: `$CROPKIT_DATA`, else `<project>/data`."""
    return Path(os.environ.get("CROPKIT_DATA", project_root() / "data")).expanduser()


def shared_data_dir() -> Path:
    """The team's shared data folder beside the checkout: `$CROPKIT_SHARED_DATA`, else `<project>/../shared/data`."""
    return Path(os.environ.get("CROPKIT_SHARED_DATA", project_root().parent / "shared" / "data")).expanduser()
