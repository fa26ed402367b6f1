"""Plots and pages describing a model or a run (matplotlib, files only — no display needed)."""

from .page import write_report
from .plots import bar_plot, heat_map, line_plot

__all__ = ["bar_plot", "heat_map", "line_plot", "write_report"]
