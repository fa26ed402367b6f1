"""GPT-BigCode (SantaCoder, StarCoder 1): fused ``c_attn`` of ``[q | k | v]`` with multi-query
attention (one shared key/value head) by default, ``nn.Linear`` maps, an ungated MLP.

With multi-query attention every query head shares the one KV head, so heads are removed as
single query heads (``--head-grouping query``); the forward splits ``c_attn``'s output by the
attention module's ``embed_dim`` (the query width) and ``kv_dim``, which follow the head count.
The stock model builds ``c_attn`` from ``n_embd``: a cut that removes heads is saved with
per-layer shapes, an MLP-only cut as the stock ``n_inner`` field.
"""

from __future__ import annotations

import torch

from .base import Adapter


class GPTBigCodeAdapter(Adapter):
    family = "gpt_bigcode"
    model_types = ("gpt_bigcode",)
    layers_path = "transformer.h"
    depth_key = "n_layer"
    channel_producers = {"mlp_mid": ("mlp.c_fc",)}

    def linear_specs(self):
        return [
            ("attn.c_attn", ("q", "k", "v"), "attn_in"),
            ("attn.c_proj", ("o",), "attn_out"),
            ("mlp.c_fc", ("up",), "mlp_in"),
            ("mlp.c_proj", ("down",), "mlp_mid"),
        ]

    def role_rows(self, local_name, module):
        if local_name != "attn.c_attn":
            return {}
        kv = self.num_kv_heads * self.head_dim
        query = module.weight.shape[0] - 2 * kv  # the layer's own query width (narrower once pruned)
        return {"q": torch.arange(query), "k": torch.arange(query, query + kv),
                "v": torch.arange(query + kv, query + 2 * kv)}

    def norm_names(self):
        return ("ln_1", "ln_2")

    def head_attributes(self, heads, kv_heads):
        return {"attn.num_heads": heads, "attn.embed_dim": heads * self.head_dim,
                "attn.num_key_value_groups": heads // kv_heads}

    def stock_shape_fields(self, heads, kv_heads, channels):
        return {"n_inner": channels} if heads == self.num_heads else None

    @property
    def num_kv_heads(self) -> int:
        return 1 if getattr(self.config, "multi_query", True) else self.num_heads
