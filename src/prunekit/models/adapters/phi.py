"""Phi-1/1.5/2: a parallel block — one LayerNorm feeds both attention (``q/k/v_proj``, ``dense``)
and the ungated MLP (``fc1``, ``fc2``) — with partial rotary and biases everywhere.

Attention and MLP read the same normalised input, so their first maps form one input group for
the calibration statistics. The forward reshapes by ``head_dim`` (read from the config when it
names one), and the optional q/k LayerNorms are over one head's width, shared by all heads: fewer
heads are stock fields with the head width written out.
"""

from __future__ import annotations

from .llama import LlamaAdapter


class PhiAdapter(LlamaAdapter):
    family = "phi"
    model_types = ("phi",)
    channel_producers = {"mlp_mid": ("mlp.fc1",)}

    def linear_specs(self):
        return [
            ("self_attn.q_proj", ("q",), "block_in"),
            ("self_attn.k_proj", ("k",), "block_in"),
            ("self_attn.v_proj", ("v",), "block_in"),
            ("self_attn.dense", ("o",), "attn_out"),
            ("mlp.fc1", ("up",), "block_in"),
            ("mlp.fc2", ("down",), "mlp_mid"),
        ]

    def norm_names(self):
        return ("input_layernorm",)
