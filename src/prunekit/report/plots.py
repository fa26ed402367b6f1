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


def allocation_plot(layers: Sequence[int], sparsity: Sequence[float], path: Path, *, target: float,
                    outlier_ratio: Sequence[float] | None = None, recon_error: Sequence[float] | None = None,
                    title: str = "Layer-wise sparsity allocation") -> Path:
    """Allocated sparsity per layer (bars, the target dashed, outlier ratio on a second axis) and,
    beside it, each layer's mean reconstruction error — to see whether the layers given fewer
    zeros are the ones whose error would have grown most."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if recon_error is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 3.8), dpi=120, squeeze=False)
    ax = axes[0][0]
    ax.bar(list(layers), list(sparsity), color="#1f77b4", label="sparsity")
    ax.axhline(target, color="black", linestyle="--", linewidth=1, label=f"target {target:g}")
    low = min(min(sparsity), target)
    ax.set_ylim(max(0.0, low - 0.05), min(1.0, max(max(sparsity), target) + 0.05))
    ax.set_xlabel("layer")
    ax.set_ylabel("sparsity")
    ax.set_title(title)
    if outlier_ratio is not None:
        twin = ax.twinx()
        twin.plot(list(layers), [100 * v for v in outlier_ratio], color="#d62728", marker=".", label="outlier ratio")
        twin.set_ylabel("outlier ratio (%)", color="#d62728")
    ax.legend(fontsize=8, loc="lower left")
    if recon_error is not None:
        right = axes[0][1]
        right.plot(list(layers), list(recon_error), marker=".", color="#2ca02c")
        right.set_yscale("log")
        right.set_xlabel("layer")
        right.set_ylabel("mean ||WX - ŴX||² / ||WX||²")
        right.set_title("Reconstruction error per layer")
        right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def recovery_loss_plot(report: dict, path: Path) -> Path:
    """A recovery run's training loss; a distillation run's also split into its KD, hidden-state
    and next-token parts (each unweighted, as the report records them)."""
    series = {"total (weighted)": report["losses"]}
    parts = report.get("loss_parts") or {}
    names = {"kd": "KL(teacher‖student)", "hidden": "relative hidden-state error", "ce": "next-token CE"}
    if report.get("objective") == "kd":
        series.update({names.get(k, k): v for k, v in parts.items()})
        return line_plot(series, path, title="Distillation recovery", xlabel="step", ylabel="loss", logy=True)
    return line_plot({"training loss": report["losses"]}, path, title="LoRA recovery", xlabel="step",
                     ylabel="causal-LM loss")
