"""Progress bars that suit where the kit runs: live widgets in JupyterLab, a live bar in a terminal, and one final
line per finished task in batch runs (papermill and nbval executions), whose saved notebooks would otherwise
keep every intermediate redraw.

`cropkit reproduce` and the test suite set `CROPKIT_PROGRESS=summary` for the kernels they start; `off` silences
every bar. Inner bars (`leave=False`, e.g. the batches of one attack) print nothing in summary mode.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, Generic, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
MODES = ("live", "summary", "off")


def mode() -> str:
    """`CROPKIT_PROGRESS` ("live" by default, "summary" for batch runs, "off"); `TQDM_DISABLE` also means "off"."""
    if os.environ.get("TQDM_DISABLE"):
        return "off"
    value = os.environ.get("CROPKIT_PROGRESS", "live")
    if value not in MODES:
        raise ValueError(f"CROPKIT_PROGRESS = {value!r}: choose one of {MODES}")
    return value


class _Summary(Generic[T]):
    """tqdm's interface as the kit uses it, reporting once, when the task ends: 'desc: n/total in 12 s (loss 0.03)'."""

    def __init__(self, iterable: Iterable[T] | None, desc: str, total: int | None, initial: int, leave: bool) -> None:
        self.iterable, self.desc, self.leave = iterable, desc, leave
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.n, self.postfix, self.started, self.closed = initial, "", time.perf_counter(), False

    def __iter__(self) -> Iterator[T]:
        for item in self.iterable or ():
            yield item
            self.n += 1
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, values: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in {**(values or {}), **kwargs}.items())

    def close(self) -> None:
        if self.closed or not self.leave:
            self.closed = True
            return
        self.closed = True
        done = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        extra = f" ({self.postfix})" if self.postfix else ""
        print(f"{self.desc}: {done} in {time.perf_counter() - self.started:.0f} s{extra}", file=sys.stderr, flush=True)

    def __enter__(self) -> _Summary[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def bar(iterable: Iterable[T] | None = None, *, desc: str, total: int | None = None, initial: int = 0,
        leave: bool = True, disable: bool = False) -> Any:
    """A progress bar over `iterable` (or updated by hand): tqdm (widgets in JupyterLab) in live mode, one line at
    the end in summary mode, nothing when disabled or off."""
    current = mode()
    if current == "summary" and not disable:
        return _Summary(iterable, desc, total, initial, leave)
    return tqdm(iterable, desc=desc, total=total, initial=initial, leave=leave, disable=disable or current == "off")
