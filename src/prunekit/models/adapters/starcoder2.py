"""StarCoder2: Llama's attention names (with biases) and an ungated MLP ``c_proj(act(c_fc(x)))``.

The attention forward reshapes by ``head_dim`` (read from the config when it names one), so fewer
heads are stock fields with the head width written out explicitly.
"""

from __future__ import annotations

from .llama import LlamaAdapter


class StarCoder2Adapter(LlamaAdapter):
    family = "starcoder2"
    model_types = ("starcoder2",)
    channel_producers = {"mlp_mid": ("mlp.c_fc",)}

    def linear_specs(self):
        attention = [spec for spec in super().linear_specs() if spec[0].startswith("self_attn.")]
        return attention + [("mlp.c_fc", ("up",), "mlp_in"), ("mlp.c_proj", ("down",), "mlp_mid")]
