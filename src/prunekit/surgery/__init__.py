"""Applying what methods decide: masks, channel permutations; shrinking and low-rank factors later."""

from .masks import apply_mask, reconstruction_error
from .permute import permute_input_channels

__all__ = ["apply_mask", "permute_input_channels", "reconstruction_error"]
