"""Session set-up for the whole suite (unit tests and the notebooks under nbval).

- The notebooks write their records and figures under a fresh temporary folder (`CROPKIT_OUT`, inherited by the
  kernels nbval starts), never into the user's `results/`, so `tests/test_reference.py` reads exactly what this
  session's notebook run wrote.
- Tests marked `after_notebooks` run after every notebook of the session.
"""

from __future__ import annotations

import os
import tempfile

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "after_notebooks: run after the notebooks collected in the same session")
    os.environ.setdefault("CROPKIT_OUT", tempfile.mkdtemp(prefix="cropkit-test-out-"))
    os.environ.setdefault("CROPKIT_PROGRESS", "summary")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("after_notebooks") is not None)  # stable: order kept
