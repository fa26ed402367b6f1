"""Helium: Llama's map names, but ``o_proj`` is built ``hidden → hidden`` whatever the head count.

Stock Helium therefore cannot rebuild a layer with fewer heads from its config (its ``o_proj``
would read ``hidden_size`` columns); a cut that removes heads is saved with per-layer shapes, and
only an MLP-only cut as stock fields.
"""

from __future__ import annotations

from .llama import LlamaAdapter


class HeliumAdapter(LlamaAdapter):
    family = "helium"
    model_types = ("helium",)

    def stock_shape_fields(self, heads, kv_heads, channels):
        if (heads, kv_heads) != (self.num_heads, self.num_kv_heads):
            return None
        return super().stock_shape_fields(heads, kv_heads, channels)
