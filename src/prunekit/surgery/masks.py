"""Zeroing weights by mask, in place, in the module's own layout and dtype."""

from __future__ import annotations

import torch

from ..models.adapters.base import LinearView


@torch.no_grad()
def apply_mask(view: LinearView, mask: torch.Tensor) -> dict:
    """Zero the weights of ``view`` where ``mask`` is True; report the sparsity the mask imposed."""
    weight = view.weight
    weight.masked_fill_(mask.to(weight.device), 0)
    return {"sparsity": float(mask.sum()) / mask.numel(), "shape": list(weight.shape)}
