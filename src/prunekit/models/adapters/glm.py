"""GLM and GLM-4: Llama-style attention (q/k/v biases, partial rotary) and a fused
``gate_up_proj`` whose output is ``[gate | up]``, split by ``chunk(2)``; GLM-4 adds post-norms
after attention and MLP (a sandwich).

A channel owns row ``j`` of the gate half and row ``I + j`` of the up half, so removing channels
keeps both halves aligned. The forward reshapes by ``head_dim`` (an explicit config field).
"""

from __future__ import annotations

import torch

from .llama import LlamaAdapter


class GlmAdapter(LlamaAdapter):
    family = "glm"
    model_types = ("glm", "glm4")
    channel_producers = {"mlp_mid": ("mlp.gate_up_proj",)}

    def linear_specs(self):
        attention = [spec for spec in super().linear_specs() if spec[0].startswith("self_attn.")]
        return attention + [("mlp.gate_up_proj", ("gate", "up"), "mlp_in"), ("mlp.down_proj", ("down",), "mlp_mid")]

    def role_rows(self, local_name, module):
        if local_name != "mlp.gate_up_proj":
            return {}
        width = module.weight.shape[0] // 2  # the layer's own channel count (fewer once pruned)
        return {"gate": torch.arange(width), "up": torch.arange(width, 2 * width)}

    def norm_names(self):
        if self.config.model_type == "glm4":
            return ("input_layernorm", "post_self_attn_layernorm", "post_attention_layernorm", "post_mlp_layernorm")
        return super().norm_names()
