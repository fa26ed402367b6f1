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
