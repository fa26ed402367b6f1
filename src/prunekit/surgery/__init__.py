"""Applying what methods decide: masks now; shrinking, layer removal and low-rank factors later."""

from .masks import apply_mask

__all__ = ["apply_mask"]
