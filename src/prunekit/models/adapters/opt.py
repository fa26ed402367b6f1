"""OPT (Meta): separate q/k/v projections, ``out_proj``, ``fc1``/``fc2`` MLP."""

from __future__ import annotations

from .base import Adapter


class OPTAdapter(Adapter):
    family = "opt"
    model_types = ("opt",)
    layers_path = "model.decoder.layers"
    channel_producers = {"mlp_mid": ("fc1",)}

    def linear_specs(self):
        return [
            ("self_attn.q_proj", ("q",), "attn_in"),
            ("self_attn.k_proj", ("k",), "attn_in"),
            ("self_attn.v_proj", ("v",), "attn_in"),
            ("self_attn.out_proj", ("o",), "attn_out"),
            ("fc1", ("fc1",), "mlp_in"),
            ("fc2", ("fc2",), "mlp_mid"),
        ]

    def norm_names(self):
        return ("self_attn_layer_norm", "final_layer_norm")

    def head_attributes(self, heads, kv_heads):
        return {"self_attn.num_heads": heads}

    def stock_shape_fields(self, heads, kv_heads, channels):
        # OPT derives head_dim from hidden_size / heads: only the MLP width is expressible
        return {"ffn_dim": channels} if heads == self.num_heads else None
