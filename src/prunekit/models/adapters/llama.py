"""Llama-like decoders: every family whose layers name their maps exactly as Llama does.

``self_attn.{q,k,v,o}_proj`` with grouped-query attention and a gated MLP ``mlp.{gate,up,down}_proj``,
head counts taken from the weight shapes in the forward and an explicit ``head_dim`` field: Llama
1-3, Mistral/Ministral, Qwen2/Qwen3, SmolLM3, OLMo, Granite, InternLM3, EXAONE 3/4, ERNIE-4.5,
Seed-OSS, HunYuan dense, HyperCLOVA X, IQuest-Coder, CWM. Each type here passed LLM-Pruner width
pruning, save and reload to identical logits in the architecture zoo (``benchmarks/zoo.py``).
Families that share the names but differ in what width pruning must touch have their own files
(``gemma.py``, ``cohere.py``, ``olmo2.py``, ``granite_swa.py``, ``ungated.py``, ``stablelm.py``,
``helium.py``, ``starcoder2.py``, ``phi.py``, ``glm.py``); GPT-J and GPT-BigCode have theirs (``gptj.py``,
``gpt_bigcode.py``).
"""

from __future__ import annotations

from .base import Adapter


class LlamaAdapter(Adapter):
    family = "llama"
    model_types = ("llama", "mistral", "ministral", "ministral3", "qwen2", "qwen3", "smollm3", "olmo", "granite",
                   "internlm3", "exaone", "exaone4", "ernie4_5", "seed_oss", "hunyuan_v1_dense", "hyperclovax",
                   "iquestcoder", "cwm")
    layers_path = "model.layers"
    channel_producers = {"mlp_mid": ("mlp.gate_proj", "mlp.up_proj")}

    def linear_specs(self):
        return [
            ("self_attn.q_proj", ("q",), "attn_in"),
            ("self_attn.k_proj", ("k",), "attn_in"),
            ("self_attn.v_proj", ("v",), "attn_in"),
            ("self_attn.o_proj", ("o",), "attn_out"),
            ("mlp.gate_proj", ("gate",), "mlp_in"),
            ("mlp.up_proj", ("up",), "mlp_in"),
            ("mlp.down_proj", ("down",), "mlp_mid"),
        ]

    def norm_names(self):
        return ("input_layernorm", "post_attention_layernorm")

    def head_attributes(self, heads, kv_heads):
        return {"self_attn.num_key_value_groups": heads // kv_heads}

    def stock_shape_fields(self, heads, kv_heads, channels):
        # head_dim is an explicit config field here, so fewer heads keep their width
        return {"num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": self.head_dim,
                "intermediate_size": channels}
