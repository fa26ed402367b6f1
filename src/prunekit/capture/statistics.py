"""Streaming per-input statistics collected by forward hooks on a layer's linear maps.

Statistics accumulate in float32 (float64 on request) batch by batch, so the calibration size is
bounded by time, not memory. Maps that read the same tensor (q/k/v, gate/up) share one entry.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ..errors import NumericalError
from ..models.adapters.base import LinearView

STATISTICS = ("gram", "sqnorm")


@dataclass
class InputStatistics:
    """Statistics of the input ``X ∈ R^{in×tokens}`` seen by one input group of a layer.

    ``gram`` is ``X Xᵀ`` (summed, not averaged), ``sqnorm`` the per-feature sum of squares
    ``||X_j||²``, ``tokens`` the number of columns of ``X``.
    """

    width: int
    tokens: int = 0
    gram: torch.Tensor | None = None
    sqnorm: torch.Tensor | None = None
    dtype: torch.dtype = torch.float32
    needs: frozenset[str] = field(default_factory=frozenset)

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, self.width).to(self.dtype)
        self.tokens += x.shape[0]
        if "sqnorm" in self.needs:
            if self.sqnorm is None:
                self.sqnorm = torch.zeros(self.width, dtype=self.dtype, device=x.device)
            self.sqnorm += (x * x).sum(0)
        if "gram" in self.needs:
            if self.gram is None:
                self.gram = torch.zeros(self.width, self.width, dtype=self.dtype, device=x.device)
            self.gram.addmm_(x.t(), x)

    @property
    def norm(self) -> torch.Tensor:
        """``||X_j||₂`` per input feature (Wanda's activation norm)."""
        assert self.sqnorm is not None, "sqnorm was not collected"
        return self.sqnorm.sqrt()

    def check_finite(self, where: str) -> None:
        for name in ("gram", "sqnorm"):
            value = getattr(self, name)
            if value is not None and not torch.isfinite(value).all():
                raise NumericalError(f"{where}: the calibration statistic '{name}' is not finite (NaN/inf activations)")


@contextmanager
def collect_statistics(views: list[LinearView], needs: frozenset[str], dtype: torch.dtype = torch.float32):
    """Hook the first map of every input group; yields ``{input_group: InputStatistics}``."""
    unknown = set(needs) - set(STATISTICS)
    if unknown:
        raise ValueError(f"unknown statistics {sorted(unknown)}; known: {STATISTICS}")
    stats: dict[str, InputStatistics] = {}
    handles = []
    for view in views:
        if view.input_group in stats:
            continue
        entry = InputStatistics(width=view.in_features, dtype=dtype, needs=frozenset(needs))
        stats[view.input_group] = entry
        handles.append(view.module.register_forward_hook(lambda _m, args, _out, e=entry: e.update(args[0])))
    try:
        yield stats
    finally:
        for handle in handles:
            handle.remove()
