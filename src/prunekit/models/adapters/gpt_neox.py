"""GPT-NeoX / Pythia: fused ``query_key_value`` with per-head interleaved q, k, v rows."""

from __future__ import annotations

import torch

from .base import Adapter


class GPTNeoXAdapter(Adapter):
    family = "gpt_neox"
    model_types = ("gpt_neox",)
    layers_path = "gpt_neox.layers"
    channel_producers = {"mlp_mid": ("mlp.dense_h_to_4h",)}

    def linear_specs(self):
        return [
            ("attention.query_key_value", ("q", "k", "v"), "attn_in"),
            ("attention.dense", ("o",), "attn_out"),
            ("mlp.dense_h_to_4h", ("fc1",), "mlp_in"),
            ("mlp.dense_4h_to_h", ("fc2",), "mlp_mid"),
        ]

    def role_rows(self, local_name, module):
        if local_name != "attention.query_key_value":
            return {}
        # The fused output is viewed as [heads, 3 * head_dim]: head h holds q, k, v back to back.
        dim = self.head_dim
        heads = module.weight.shape[0] // (3 * dim)  # the layer's own head count (fewer once pruned)
        base = torch.arange(heads).unsqueeze(1) * 3 * dim
        offsets = torch.arange(dim).unsqueeze(0)
        return {role: (base + i * dim + offsets).reshape(-1) for i, role in enumerate(("q", "k", "v"))}

    def norm_names(self):
        return ("input_layernorm", "post_attention_layernorm")

    def stock_shape_fields(self, heads, kv_heads, channels):
        # the forward derives heads from the fused width; head_size comes from hidden / heads
        return {"intermediate_size": channels} if heads == self.num_heads else None
