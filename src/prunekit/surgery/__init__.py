"""Applying what methods decide: masks, channel permutations, layer removal; shrinking and low-rank factors later."""

from .depth import layers_removed, remove_layers, skip_sublayers
from .masks import apply_mask, reconstruction_error
from .permute import permute_input_channels

__all__ = ["apply_mask", "layers_removed", "remove_layers", "skip_sublayers", "permute_input_channels", "reconstruction_error"]
