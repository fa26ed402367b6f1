"""Wanda (Sun et al., 2023): prune by ``|W_ij| · ||X_j||₂`` within each output row, no weight update."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..sparsity import select_mask
from .base import LayerParallelOptions, Method, ViewResult, register, validate_parallel


@dataclass
class WandaOptions(LayerParallelOptions):
    wanda_variant: bool = field(
        default=False,
        metadata={"was": "variant", "help": "Wanda's per-row cumulative-score variant: prune the entries whose sorted cumulative "
                          "score stays below alpha x row sum, alpha bisected per matrix on [0, 0.8] to the target"},
    )


def wanda_scores(weight: torch.Tensor, sqnorm: torch.Tensor) -> torch.Tensor:
    """``S_ij = |W_ij| · ||X_j||₂`` in float32."""
    return weight.abs().float() * sqnorm.float().sqrt().to(weight.device).unsqueeze(0)


def cumulative_variant_mask(scores: torch.Tensor, fraction: float, tolerance: float = 1e-3, steps: int = 50) -> torch.Tensor:
    """Per row, prune the smallest entries whose cumulative score is below ``alpha · row sum``.

    One ``alpha`` per matrix, bisected on [0, 0.8] until the matrix sparsity is within
    ``tolerance`` of ``fraction`` (Wanda's ``use_variant``).
    """
    sorted_scores, order = torch.sort(scores, dim=1, stable=True)
    cumulative = sorted_scores.cumsum(dim=1)
    row_sum = scores.sum(dim=1, keepdim=True)
    lo, hi = 0.0, 0.8

    def mask_for(alpha: float) -> torch.Tensor:
        prune_sorted = cumulative <= alpha * row_sum
        mask = torch.zeros_like(scores, dtype=torch.bool)
        mask.scatter_(1, order, prune_sorted)
        return mask

    alpha = (lo + hi) / 2
    mask = mask_for(alpha)
    for _ in range(steps):
        achieved = float(mask.float().mean())
        if abs(achieved - fraction) <= tolerance:
            break
        lo, hi = (alpha, hi) if achieved < fraction else (lo, alpha)
        alpha = (lo + hi) / 2
        mask = mask_for(alpha)
    return mask


@register
class Wanda(Method):
    name = "wanda"
    summary = "|W|·||X||₂ per output row (Sun et al. 2023); N:M per row; no weight update"
    needs = frozenset({"sqnorm"})
    Options = WandaOptions

    @classmethod
    def validate_options(cls, options):
        validate_parallel(options)

    def prune_view(self, view, ctx):
        scores = wanda_scores(view.weight, ctx.stats_for(view).sqnorm)
        target = self.target_for(view)
        if self.options.wanda_variant and not target.is_nm:
            mask = cumulative_variant_mask(scores, target.fraction)
            return ViewResult(mask, extra={"variant": True})
        return ViewResult(select_mask(scores, target, per_row=True))

