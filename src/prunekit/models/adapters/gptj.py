"""GPT-J: a parallel block — one LayerNorm ``ln_1`` feeds attention (``q/k/v_proj``, ``out_proj``,
no biases, partial rotary over ``rotary_dim``) and the ungated MLP (``fc_in``, ``fc_out``).

The attention forward reshapes by its head width (``n_embd / n_head``) and infers the head count,
but the stock model builds every attention map ``n_embd → n_embd``: a cut that removes heads is
saved with per-layer shapes, and only an MLP-only cut as the stock ``n_inner`` field.
"""

from __future__ import annotations

from .base import Adapter


class GPTJAdapter(Adapter):
    family = "gptj"
    model_types = ("gptj",)
    layers_path = "transformer.h"
    depth_key = "n_layer"
    channel_producers = {"mlp_mid": ("mlp.fc_in",)}

    def linear_specs(self):
        return [
            ("attn.q_proj", ("q",), "block_in"),
            ("attn.k_proj", ("k",), "block_in"),
            ("attn.v_proj", ("v",), "block_in"),
            ("attn.out_proj", ("o",), "attn_out"),
            ("mlp.fc_in", ("up",), "block_in"),
            ("mlp.fc_out", ("down",), "mlp_mid"),
        ]

    def norm_names(self):
        return ("ln_1",)

    def stock_shape_fields(self, heads, kv_heads, channels):
        return {"n_inner": channels} if heads == self.num_heads else None
