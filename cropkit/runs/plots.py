"""Plotting helpers the notebooks share, so that every figure reads its numbers the same way as the tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.ticker import PercentFormatter


def percent_axes(ax: Any, axes: str = "xy") -> None:
    """Label accuracies (fractions in [0, 1]) as percent on the named axes, as every table prints them."""
    for name in axes:
        getattr(ax, f"{name}axis").set_major_formatter(PercentFormatter(xmax=1, decimals=0))


def accuracy_curve(ax: Any, x: Sequence[float], records: Sequence[Mapping[str, Any]], *, which: str = "robust",
                   label: str | None = None, fmt: str = "o-", **style: Any) -> None:
    """`which` accuracy ("robust" or "clean") of `records` against `x`, each with its 95% interval as an error bar,
    on a percent axis: the kit's one way of drawing an accuracy that carries its uncertainty."""
    accuracy = [r[f"{which}_accuracy"] for r in records]
    error = [[a - r[f"{which}_interval"][0] for a, r in zip(accuracy, records)],
             [r[f"{which}_interval"][1] - a for a, r in zip(accuracy, records)]]
    ax.errorbar(list(x), accuracy, yerr=error, fmt=fmt, capsize=3, label=label, **style)
    percent_axes(ax, "y")


def label_points(ax: Any, points: Sequence[tuple[float, float, str]], fontsize: int = 7) -> None:
    """Name each (x, y, text) point, nudging a label whose point sits where an earlier one was put so that labels
    of coinciding points do not print over each other."""
    placed: dict[tuple[float, float], int] = {}
    for x, y, text in points:
        key = (round(x, 12), round(y, 6))
        shift = placed.get(key, 0)
        placed[key] = shift + 1
        ax.annotate(text, (x, y), fontsize=fontsize, xytext=(4, 4 + 9 * shift), textcoords="offset points")
