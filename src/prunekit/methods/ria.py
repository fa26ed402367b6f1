"""RIA — Relative Importance and Activations (Zhang et al., ICLR 2024).

``S_ij = (|W_ij| / Σ_k |W_ik| + |W_ij| / Σ_k |W_kj|) · ||X_j||₂^a`` with ``a = 0.5``: a weight's
share of its row and of its column, times the activation norm to a power. One threshold per
matrix by default (the reference), per output row as an option; N:M is per row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..sparsity import nm_mask, select_mask
from ..surgery import permute_input_channels
from .base import MaskOptions, Method, ViewResult, register


@dataclass
class RIAOptions(MaskOptions):
    group: str = field(default="matrix", metadata={"choices": ("matrix", "row"),
                                                   "help": "comparison group: per matrix (RIA default) or per output row"})
    ria_activation_exponent: float = field(default=0.5, metadata={
        "was": "alpha_power", "help": "RIA: exponent a of the activation norm (default 0.5)"})
    permute: bool = field(default=False, metadata={
        "help": "RIA, N:M only: reallocate input channels before choosing the mask (heuristic channel "
                "reallocation), applied physically where it is exact (MLP down-projection and its producers)"})


def ria_scores(weight: torch.Tensor, sqnorm: torch.Tensor, power: float = 0.5) -> torch.Tensor:
    magnitude = weight.abs().float()
    row_share = magnitude / magnitude.sum(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    col_share = magnitude / magnitude.sum(dim=0, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    activation = sqnorm.float().sqrt().to(weight.device).pow(power).unsqueeze(0)
    return (row_share + col_share) * activation


def reallocation_order(scores: torch.Tensor, m: int) -> torch.Tensor:
    """RIA's heuristic channel reallocation: columns sorted by total score, dealt into the M slots of
    every group from alternating ends (slot i takes the i-th 1/M of the order, odd slots reversed),
    so each group gets a mix of strong and weak channels. New column ``j`` is old column ``order[j]``."""
    cols = scores.shape[1]
    ranked = torch.sort(scores.sum(dim=0), stable=True).indices
    order = torch.empty_like(ranked)
    for slot in range(m):
        chunk = ranked[cols * slot // m : cols * (slot + 1) // m]
        order[slot::m] = chunk if slot % 2 == 0 else chunk.flip(0)
    return order


def kept_score(scores: torch.Tensor, n: int, m: int) -> float:
    return float(scores.masked_fill(nm_mask(scores, n, m), 0).sum())


@register
class RIA(Method):
    name = "ria"
    summary = "relative importance in row and column x ||X||^0.5 (Zhang et al. 2024); per matrix or row; N:M"
    needs = frozenset({"sqnorm"})
    Options = RIAOptions

    def prune_layer(self, ctx):
        permuted = {}
        if self.options.permute and self.target.is_nm and ctx.adapter is not None:
            for view in ctx.views:
                producers = ctx.adapter.producers_of(ctx.index, view.input_group)
                if producers:
                    permuted[view.name] = self._reallocate(view, producers, ctx)
        reports = super().prune_layer(ctx)
        for name, info in permuted.items():
            reports[name].update(info)
        return reports

    def _reallocate(self, view, producers, ctx) -> dict:
        """Permute ``view``'s inputs (and its producers' rows and the statistics) when that keeps more score."""
        n, m = self.target.n, self.target.m
        stats = ctx.stats_for(view)
        scores = ria_scores(view.weight, stats.sqnorm, self.options.ria_activation_exponent)
        order = reallocation_order(scores, m)
        before, after = kept_score(scores, n, m), kept_score(scores[:, order], n, m)
        if after <= before:
            return {"permuted": False, "kept_score_gain": 0.0}
        permute_input_channels(view, producers, order)
        stats.sqnorm = stats.sqnorm[order.to(stats.sqnorm.device)]
        if stats.gram is not None:
            idx = order.to(stats.gram.device)
            stats.gram = stats.gram[idx][:, idx]
        return {"permuted": True, "kept_score_gain": (after - before) / before}

    def prune_view(self, view, ctx):
        scores = ria_scores(view.weight, ctx.stats_for(view).sqnorm, self.options.ria_activation_exponent)
        return ViewResult(select_mask(scores, self.target_for(view), per_row=self.options.group == "row"))
