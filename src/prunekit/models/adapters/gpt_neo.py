"""GPT-Neo (EleutherAI): separate q/k/v without bias, ``out_proj``, ``c_fc``/``c_proj`` MLP."""

from __future__ import annotations

from .base import Adapter


class GPTNeoAdapter(Adapter):
    family = "gpt_neo"
    model_types = ("gpt_neo",)
    layers_path = "transformer.h"
    depth_key = "num_layers"
    channel_producers = {"mlp_mid": ("mlp.c_fc",)}

    def linear_specs(self):
        return [
            ("attn.attention.q_proj", ("q",), "attn_in"),
            ("attn.attention.k_proj", ("k",), "attn_in"),
            ("attn.attention.v_proj", ("v",), "attn_in"),
            ("attn.attention.out_proj", ("o",), "attn_out"),
            ("mlp.c_fc", ("fc1",), "mlp_in"),
            ("mlp.c_proj", ("fc2",), "mlp_mid"),
        ]

    def depth_updates(self, kept):
        # GPT-Neo derives attention_layers from attention_types: rewrite both, one entry per kept layer
        kinds = [self.config.attention_layers[i] for i in kept]
        return {"attention_types": [[[kind], 1] for kind in kinds], "attention_layers": kinds}

    def norm_names(self):
        return ("ln_1", "ln_2")

    def head_attributes(self, heads, kv_heads):
        return {"attn.attention.num_heads": heads}

    def stock_shape_fields(self, heads, kv_heads, channels):
        return {"intermediate_size": channels} if heads == self.num_heads else None

    @property
    def num_heads(self) -> int:
        return int(self.config.num_heads)

    @property
    def max_context(self) -> int:
        return int(self.config.max_position_embeddings)
