"""Gemma 1-3 and VaultGemma: Llama's map names with Gemma's own details.

What differs from Llama does not move under width pruning, and is kept as it is: the explicit
``head_dim`` (256 in Gemma, not hidden/heads — so removing heads keeps each head's width),
per-head ``q_norm``/``k_norm`` of size ``head_dim`` (Gemma-3), the sandwich norms around attention
and MLP (``pre_``/``post_feedforward_layernorm``), the ``sqrt(hidden)`` embedding scale, logit
soft-capping (Gemma-2) and the sliding/full ``layer_types`` (a depth cut keeps each kept layer's).
"""

from __future__ import annotations

from .llama import LlamaAdapter


class GemmaAdapter(LlamaAdapter):
    family = "gemma"
    model_types = ("gemma", "gemma2", "gemma3_text", "vaultgemma")

    def norm_names(self):
        names = ("input_layernorm", "post_attention_layernorm")
        if self.config.model_type == "gemma":
            return names
        return (*names, "pre_feedforward_layernorm", "post_feedforward_layernorm")
