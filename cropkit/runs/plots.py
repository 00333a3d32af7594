"""Plotting helpers the notebooks share, so that every figure reads its numbers the same way as the tables."""

from __future__ import annotations

from typing import Any

from matplotlib.ticker import PercentFormatter


def percent_axes(ax: Any, axes: str = "xy") -> None:
    """Label accuracies (fractions in [0, 1]) as percent on the named axes, as every table prints them."""
    for name in axes:
        getattr(ax, f"{name}axis").set_major_formatter(PercentFormatter(xmax=1, decimals=0))
