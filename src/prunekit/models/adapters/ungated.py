"""Llama attention with an ungated MLP ``down(act(up(x)))``: Arcee (ReLU²), Apertus (xIELU),
Nemotron (ReLU², LayerNorm1P).

The MLP intermediate has one producer, ``up_proj``; width pruning removes its rows with the
matching ``down_proj`` columns. Apertus's per-head q/k norms (width ``head_dim``) and Nemotron's
partial rotary do not change with the head count.
"""

from __future__ import annotations

from .llama import LlamaAdapter


class UngatedMLPAdapter(LlamaAdapter):
    family = "ungated-mlp"
    model_types = ("arcee", "apertus", "nemotron")
    channel_producers = {"mlp_mid": ("mlp.up_proj",)}

    def linear_specs(self):
        return [spec for spec in super().linear_specs() if spec[0] != "mlp.gate_proj"]

    def norm_names(self):
        if self.config.model_type == "apertus":
            return ("attention_layernorm", "feedforward_layernorm")
        return super().norm_names()
