"""StableLM: Llama's map names with LayerNorms, partial rotary and a head width derived from
``hidden_size / num_attention_heads``.

The attention module reshapes by its own ``num_heads`` / ``num_key_value_heads``, so a layer with
fewer heads keeps its head width when those attributes follow it; the stock config, though,
cannot say "fewer heads of the same width" (it derives the width), so head removal is saved with
per-layer shapes and only an MLP-only cut is written as stock fields. StableLM-2's optional
per-head q/k LayerNorms (``qk_layernorm``) are module lists with one norm per head, which width
pruning does not slice: those checkpoints are refused for head removal.
"""

from __future__ import annotations

from ...errors import UnsupportedArchitectureError
from .llama import LlamaAdapter


class StableLmAdapter(LlamaAdapter):
    family = "stablelm"
    model_types = ("stablelm",)

    def unit_groups(self, index, head_grouping="kv"):
        if getattr(self.config, "qk_layernorm", False):
            raise UnsupportedArchitectureError("this StableLM checkpoint has per-head q/k LayerNorms (qk_layernorm), "
                                               "which width pruning does not slice")
        return super().unit_groups(index, head_grouping)

    def head_attributes(self, heads, kv_heads):
        return {"self_attn.num_heads": heads, "self_attn.num_key_value_heads": kv_heads,
                "self_attn.num_key_value_groups": heads // kv_heads}

    def stock_shape_fields(self, heads, kv_heads, channels):
        if (heads, kv_heads) != (self.num_heads, self.num_kv_heads):
            return None
        return {"intermediate_size": channels}
