"""Sparsity targets, exact mask selection, and the checker used by tests and ``prunekit check``.

Contract (architecture.md): unstructured ``p`` removes exactly ``round(p·n)`` weights in every
comparison group; N:M keeps at most N non-zeros in every group of M consecutive inputs of a row.
All selections are batched tensor ops (one sort per matrix, never a Python loop over rows).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from .errors import ArgumentError


@dataclass(frozen=True)
class SparsityTarget:
    """Either an unstructured fraction ``sparsity`` or an ``n:m`` pattern."""

    sparsity: float | None = None
    n: int | None = None
    m: int | None = None

    @property
    def is_nm(self) -> bool:
        return self.n is not None

    @property
    def fraction(self) -> float:
        """The fraction of weights removed (``1 - n/m`` for a pattern)."""
        return 1.0 - self.n / self.m if self.is_nm else float(self.sparsity)  # type: ignore[operator]

    def describe(self) -> str:
        return f"{self.n}:{self.m}" if self.is_nm else f"{self.sparsity:g}"

    def to_dict(self) -> dict:
        return {"pattern": f"{self.n}:{self.m}"} if self.is_nm else {"sparsity": self.sparsity}

    @classmethod
    def parse(cls, sparsity: float | None = None, pattern: str | None = None) -> "SparsityTarget":
        """Validate the CLI/API pair ``--sparsity``/``--pattern`` (exactly one of them)."""
        if pattern is not None:
            if sparsity is not None:
                raise ArgumentError("give either --sparsity or --pattern, not both")
            n, m = parse_pattern(pattern)
            return cls(n=n, m=m)
        if sparsity is None:
            raise ArgumentError("give a target: --sparsity P (0 <= P < 1) or --pattern N:M")
        if not (0.0 <= float(sparsity) < 1.0):
            raise ArgumentError(f"--sparsity must be in [0, 1), got {sparsity}")
        return cls(sparsity=float(sparsity))


def parse_pattern(pattern: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(pattern))
    if not match:
        raise ArgumentError(f"pattern must look like N:M (e.g. 2:4), got '{pattern}'")
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise ArgumentError(f"pattern N:M needs 0 < N < M, got {n}:{m}")
    return n, m


def prune_count(size: int, fraction: float) -> int:
    """Weights removed from a group of ``size`` at ``fraction`` (the contract's ``round(p·n)``)."""
    return int(round(fraction * size))


def lowest_mask(scores: torch.Tensor, fraction: float, per_row: bool) -> torch.Tensor:
    """Boolean *prune* mask: the ``round(p·n)`` lowest scores per matrix, or per row."""
    rows = scores if per_row else scores.reshape(1, -1)
    return lowest_count_mask(rows, prune_count(rows.shape[1], fraction)).view_as(scores)


def lowest_count_mask(rows: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the ``k`` lowest entries of every row of the 2-D ``rows``.

    Ties are broken by position, exactly as a stable sort would, so the same scores always give
    the same mask — but in O(n): a k-th value selection gives the threshold, everything below it
    is taken, and of the entries equal to it the first ones (by position) fill the count.
    """
    if k <= 0:
        return torch.zeros_like(rows, dtype=torch.bool)
    threshold = kth_smallest(rows, k)
    mask = rows < threshold
    ties = rows == threshold
    need = k - mask.sum(dim=1, keepdim=True)
    mask |= ties & (torch.cumsum(ties, dim=1) <= need)
    return mask


def kth_smallest(rows: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k``-th smallest value (1-based) of every row of ``rows``, as a ``rows×1`` column.

    On the CPU, NumPy's introselect (``np.partition``) is an order of magnitude faster than
    ``torch.kthvalue`` (0.4 vs 4.6 ms for 393k float32 here); both return an element of the row.
    """
    if rows.device.type == "cpu" and rows.dtype in (torch.float32, torch.float64):
        values = np.partition(rows.detach().numpy(), k - 1, axis=1)[:, k - 1 : k]
        return torch.from_numpy(np.ascontiguousarray(values))
    return torch.kthvalue(rows, k, dim=1, keepdim=True).values


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Boolean *prune* mask keeping the N highest scores in each group of M consecutive inputs."""
    rows, cols = scores.shape
    if cols % m:
        raise ArgumentError(f"N:M pattern needs M={m} to divide the input width {cols}")
    groups = scores.reshape(rows, cols // m, m)
    idx = torch.sort(groups, dim=-1, stable=True).indices[..., : m - n]
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(-1, idx, True)
    return mask.view(rows, cols)


def select_mask(scores: torch.Tensor, target: SparsityTarget, per_row: bool = False) -> torch.Tensor:
    """The prune mask for ``target`` from ``scores`` (higher score = more important)."""
    if target.is_nm:
        return nm_mask(scores, target.n, target.m)  # type: ignore[arg-type]
    return lowest_mask(scores, target.fraction, per_row)


def check_nm(weight: torch.Tensor, n: int, m: int) -> bool:
    """True when every group of ``m`` consecutive inputs of each row has at most ``n`` non-zeros."""
    rows, cols = weight.shape
    if cols % m:
        return False
    nonzero = (weight != 0).reshape(rows, cols // m, m).sum(-1)
    return bool((nonzero <= n).all())


def zero_fraction(weight: torch.Tensor) -> float:
    return float((weight == 0).sum()) / weight.numel()


def validate_nm_width(target: SparsityTarget, widths: dict[str, int]) -> None:
    """Fail before any work when M does not divide the input width of a targeted matrix."""
    if not target.is_nm:
        return
    for name, width in widths.items():
        if width % target.m:  # type: ignore[operator]
            raise ArgumentError(f"pattern {target.describe()}: M={target.m} does not divide the input width {width} of {name}")
