"""Cohere Command-R / Command-R7B (cohere, cohere2): a parallel block with Llama's map names.

Attention and the MLP both read the one ``input_layernorm`` output and their results are added
to the residual together, so the attention and MLP inputs are the same tensor; width pruning
still removes heads (q/k/v rows with o columns) and channels (gate/up rows with down columns)
independently. Cohere-2 interleaves sliding and full attention through ``layer_types``.
"""

from __future__ import annotations

from .llama import LlamaAdapter


class CohereAdapter(LlamaAdapter):
    family = "cohere"
    model_types = ("cohere", "cohere2")

    def norm_names(self):
        return ("input_layernorm",)
