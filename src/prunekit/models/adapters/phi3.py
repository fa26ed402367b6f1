"""Phi-3 / Phi-3.5 / Phi-4 (``phi3``): Llama-style layers with two fused maps — ``qkv_proj``,
whose output is ``[q | k | v]`` (query heads, then KV heads, then KV heads), and ``gate_up_proj``,
``[gate | up]`` split by ``chunk(2)`` — and partial rotary in Phi-4-mini.

A KV group owns its query heads' rows of the q block, its rows of the k and v blocks and the
matching columns of ``o_proj``; an MLP channel owns row ``j`` of the gate half and row ``I + j`` of
the up half. The attention forward splits the fused output at ``config.num_attention_heads ×
head_dim`` (the shared config) and at its own ``num_key_value_heads``, so a layer that loses heads
gets its own head count over the shared config (:meth:`head_config_fields`); per-layer head
counts reload through ``modeling_prunekit.py``, one count for all layers through stock fields
(``head_dim`` written out, so rotary keeps its width).
"""

from __future__ import annotations

import torch

from .llama import LlamaAdapter


class Phi3Adapter(LlamaAdapter):
    family = "phi3"
    model_types = ("phi3",)
    channel_producers = {"mlp_mid": ("mlp.gate_up_proj",)}

    def linear_specs(self):
        return [
            ("self_attn.qkv_proj", ("q", "k", "v"), "attn_in"),
            ("self_attn.o_proj", ("o",), "attn_out"),
            ("mlp.gate_up_proj", ("gate", "up"), "mlp_in"),
            ("mlp.down_proj", ("down",), "mlp_mid"),
        ]

    def linears(self, index):
        views = super().linears(index)
        attention = self.decoder_layers()[index].self_attn
        # the layer's own head counts, read from its weights: o reads one block per query head, and
        # the fused map holds those plus two blocks per KV head
        q = attention.o_proj.weight.shape[1]
        kv = (attention.qkv_proj.weight.shape[0] - q) // 2
        for view in views:
            if view.local_name == "self_attn.qkv_proj":
                view.role_rows = {"q": torch.arange(q), "k": torch.arange(q, q + kv), "v": torch.arange(q + kv, q + 2 * kv)}
        return views

    def role_rows(self, local_name, module):
        if local_name != "mlp.gate_up_proj":
            return {}  # the fused q/k/v rows need the layer's head counts: set in linears()
        width = module.weight.shape[0] // 2  # the layer's own channel count (fewer once pruned)
        return {"gate": torch.arange(width), "up": torch.arange(width, 2 * width)}

    def head_attributes(self, heads, kv_heads):
        return {"self_attn.num_key_value_heads": kv_heads, "self_attn.num_key_value_groups": heads // kv_heads}

    def head_config_fields(self, heads, kv_heads):
        return {"self_attn": {"num_attention_heads": heads, "num_key_value_heads": kv_heads}}
