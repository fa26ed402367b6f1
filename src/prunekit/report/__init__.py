"""Plots and pages describing a model or a run (matplotlib, files only — no display needed)."""

from .plots import bar_plot, line_plot

__all__ = ["bar_plot", "line_plot"]
