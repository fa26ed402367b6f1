"""Small matplotlib helpers that write PNG files (Agg backend: works on a headless machine)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


def bar_plot(values: Sequence[float], path: Path, *, title: str, xlabel: str, ylabel: str,
             highlight: Sequence[int] = ()) -> Path:
    """Bar chart of one value per index; ``highlight`` bars are drawn in a second colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, len(values) * 0.3), 3.5), dpi=120)
    colors = ["#d62728" if i in set(highlight) else "#1f77b4" for i in range(len(values))]
    ax.bar(range(len(values)), values, color=colors)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xticks(range(len(values)))
    ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def line_plot(series: dict[str, Sequence[float]], path: Path, *, title: str, xlabel: str, ylabel: str,
              x: Sequence[float] | None = None, logy: bool = False) -> Path:
    """One line per named series (e.g. a training loss curve, or perplexity vs a setting)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8), dpi=120)
    for name, values in series.items():
        ax.plot(list(x) if x is not None else range(1, len(values) + 1), list(values), label=name, marker="." if len(values) < 40 else None)
    if logy:
        ax.set_yscale("log")
    if x is not None and all(float(v).is_integer() for v in x):
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # layer indices, not 0.2 steps
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if len(series) > 1:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def heat_map(rows: Sequence[Sequence[float]], path: Path, *, title: str, row_labels: Sequence[str],
             col_labels: Sequence[str], colorbar: str, log10: bool = True) -> Path:
    """A rows × columns colour grid (e.g. condition number per layer × module), log10 by default."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = [[(math.log10(v) if log10 and v > 0 else v) for v in row] for row in rows]
    fig, ax = plt.subplots(figsize=(max(4, len(col_labels) * 0.9 + 2), max(3, len(row_labels) * 0.25 + 1.5)), dpi=120)
    image = ax.imshow(grid, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(col_labels)), labels=list(col_labels), rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(row_labels)), labels=list(row_labels), fontsize=7)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label=("log10 " if log10 else "") + colorbar)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
