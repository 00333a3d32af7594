"""Session set-up for the whole suite (unit tests and the notebooks under nbval).

- `SMOKE_TEST=1` (unless set otherwise): every notebook's parameters cell shrinks the quick profile to its smoke
  size (the last lines of that cell say to what), so `make test` runs each notebook end to end in seconds. The
  quick profile's numbers are held by `make check`, not here.
- The notebooks write their records and figures under a fresh temporary folder (`CROPKIT_OUT`, inherited by the
  kernels nbval starts), never into the user's `results/`.
"""

from __future__ import annotations

import os
import tempfile

import pytest


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("SMOKE_TEST", "1")
    os.environ.setdefault("CROPKIT_OUT", tempfile.mkdtemp(prefix="cropkit-test-out-"))
    os.environ.setdefault("CROPKIT_PROGRESS", "summary")
