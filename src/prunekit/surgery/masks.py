"""Zeroing weights by mask, in place, and measuring what the change costs on calibration inputs."""

from __future__ import annotations

import torch

from ..allocator import file_backed
from ..models.adapters.base import LinearView


@torch.no_grad()
def apply_mask(view: LinearView, mask: torch.Tensor) -> dict:
    """Zero the weights of ``view`` where ``mask`` is True; report the sparsity the mask imposed."""
    view.require_writable("mask it (prune before a --factored SVD)")
    weight = view.weight
    if file_backed(weight):  # a memory-mapped checkpoint's weight: see LinearView.set_weight
        view.set_weight(weight.masked_fill(mask.to(weight.device), 0))
    else:
        weight.masked_fill_(mask.to(weight.device), 0)
    return {"sparsity": float(mask.sum()) / mask.numel(), "shape": list(weight.shape)}


@torch.no_grad()
def reconstruction_error(original: torch.Tensor, pruned: torch.Tensor, gram: torch.Tensor) -> float:
    """``||W X − Ŵ X||² / ||W X||²`` from the Gram matrix ``G = X Xᵀ`` (no raw inputs needed).

    ``||A X||² = tr(A G Aᵀ) = sum((A G) ∘ A)``, accumulated in float64 for a stable ratio.
    """
    g = gram.to(torch.float64)
    w = original.to(device=g.device, dtype=torch.float64)
    delta = w - pruned.to(device=g.device, dtype=torch.float64)
    denominator = float(((w @ g) * w).sum())
    if denominator <= 0:
        return 0.0
    return float(((delta @ g) * delta).sum()) / denominator
