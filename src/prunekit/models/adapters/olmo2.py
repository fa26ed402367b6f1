"""OLMo-2 and OLMo-3: Llama's map names with post-norms and full-width q/k norms.

Each layer normalises the *outputs* of attention and MLP (``post_attention_layernorm``,
``post_feedforward_layernorm``; no input norm), and ``q_norm``/``k_norm`` are RMSNorms over all
query / key heads together (width ``heads × head_dim``), not per head as in Qwen3 — so removing a
head must drop that head's entries from their weights too (:meth:`head_companions`). OLMo-3's
sliding/full ``layer_types`` follow a depth cut as in every family.
"""

from __future__ import annotations

from .llama import LlamaAdapter


class Olmo2Adapter(LlamaAdapter):
    family = "olmo2"
    model_types = ("olmo2", "olmo3")

    def norm_names(self):
        return ("post_attention_layernorm", "post_feedforward_layernorm")

    def head_companions(self):
        return {"self_attn.q_norm.weight": "q", "self_attn.k_norm.weight": "k"}
