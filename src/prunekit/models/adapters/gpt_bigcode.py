"""GPT-BigCode (SantaCoder, StarCoder 1): GPT-2's layout — fused ``c_attn``, ``c_proj``, an ungated
``c_fc``/``c_proj`` MLP, ``ln_1``/``ln_2`` — in ``nn.Linear`` maps, with multi-query attention (one
shared key/value head) by default: ``c_attn`` is ``[q | k | v]`` with k and v one head wide.

With multi-query attention every query head shares the one KV head, so heads are removed as
single query heads (``--head-grouping query``); the forward splits ``c_attn``'s output by the
attention module's ``embed_dim`` (the query width) and ``kv_dim``, which follow the head count.
As for GPT-2, a cut that removes heads is saved with per-layer shapes, an MLP-only cut as the
stock ``n_inner`` field.
"""

from __future__ import annotations

import torch

from .gpt2 import GPT2Adapter


class GPTBigCodeAdapter(GPT2Adapter):
    family = "gpt_bigcode"
    model_types = ("gpt_bigcode",)

    def role_rows(self, local_name, module):
        if local_name != "attn.c_attn":
            return {}
        kv = self.num_kv_heads * self.head_dim
        query = module.weight.shape[0] - 2 * kv  # the layer's own query width (narrower once pruned)
        return {"q": torch.arange(query), "k": torch.arange(query, query + kv),
                "v": torch.arange(query + kv, query + 2 * kv)}

    def head_attributes(self, heads, kv_heads):
        return {"attn.num_heads": heads, "attn.embed_dim": heads * self.head_dim,
                "attn.num_key_value_groups": heads // kv_heads}

    @property
    def num_kv_heads(self) -> int:
        return 1 if getattr(self.config, "multi_query", True) else self.num_heads
