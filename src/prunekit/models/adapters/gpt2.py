"""GPT-2: ``Conv1D`` layers (weights stored in×out) and a fused ``c_attn`` of [q | k | v]."""

from __future__ import annotations

import torch

from .base import Adapter


class GPT2Adapter(Adapter):
    family = "gpt2"
    model_types = ("gpt2", "gpt-sw3")  # GPT-SW3 is GPT-2 with its own tokenizer
    layers_path = "transformer.h"
    depth_key = "n_layer"
    channel_producers = {"mlp_mid": ("mlp.c_fc",)}

    def linear_specs(self):
        return [
            ("attn.c_attn", ("q", "k", "v"), "attn_in"),
            ("attn.c_proj", ("o",), "attn_out"),
            ("mlp.c_fc", ("fc1",), "mlp_in"),
            ("mlp.c_proj", ("fc2",), "mlp_mid"),
        ]

    def is_transposed(self, module):
        # transformers' Conv1D computes x @ W + b with W of shape (in, out).
        return type(module).__name__ == "Conv1D"

    def role_rows(self, local_name, module):
        if local_name != "attn.c_attn":
            return {}
        width = module.weight.shape[1] // 3  # [q | k | v], each as wide as the layer's heads (fewer once pruned)
        return {role: torch.arange(i * width, (i + 1) * width) for i, role in enumerate(("q", "k", "v"))}

    def norm_names(self):
        return ("ln_1", "ln_2")

    def head_attributes(self, heads, kv_heads):
        # c_attn's output is split into q, k, v by split_size
        return {"attn.num_heads": heads, "attn.split_size": heads * self.head_dim}

    def stock_shape_fields(self, heads, kv_heads, channels):
        return {"n_inner": channels} if heads == self.num_heads else None

    @property
    def hidden_size(self) -> int:
        return int(self.config.n_embd)

    @property
    def num_heads(self) -> int:
        return int(self.config.n_head)
