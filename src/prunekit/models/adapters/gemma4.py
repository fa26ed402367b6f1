"""Gemma-4: heads whose width differs by layer type.

A Gemma-4 config sets ``head_dim`` per layer (transformers' heterogeneous ``per_layer_config``:
sliding-attention layers 256 wide, full-attention ones 512 in the released shapes), and reading
the global ``head_dim`` raises. A head here is that layer's own ``self_attn.head_dim`` rows of
q/k/v and columns of o; the per-head q/k norms are one vector shared by every head, so they keep
their width. Layers are found and the MLP coupled by the structural probe
(:class:`ProbedWidthAdapter`); stock config fields are the head counts only, written when the
stock class built from them has every layer's shapes.
"""

from __future__ import annotations

from .probed_width import ATTENTION, ProbedWidthAdapter


class Gemma4Adapter(ProbedWidthAdapter):
    family = "gemma4"
    model_types = ("gemma4_text", "gemma4_unified_text")

    def layer_head_dim(self, index: int) -> int:
        return int(self.decoder_layers()[index].get_submodule(ATTENTION).head_dim)

    @property
    def head_dim(self) -> int:  # the first layer's; per layer: layer_head_dim
        return self.layer_head_dim(0)

    def stock_head_fields(self, heads, kv_heads):
        return {"num_attention_heads": heads, "num_key_value_heads": kv_heads}  # head_dim is per layer
