"""BLOOM: MLP channels only.

Its attention adds ALiBi biases that ``BloomModel`` builds once for all layers from the config's
``n_head`` — one slope per head, set by the head's index among all of them — and each layer
reshapes the fused ``query_key_value`` by that same count. A layer cannot lose heads without every
other layer and the slopes changing, so width pruning removes MLP channels (``dense_h_to_4h`` rows
and biases, ``dense_4h_to_h`` columns), whose width BLOOM's config does not name (it is 4 × hidden):
thinned layers reload through ``modeling_prunekit.py``.
"""

from __future__ import annotations

from .probed_width import ProbedWidthAdapter


class BloomAdapter(ProbedWidthAdapter):
    family = "bloom"
    model_types = ("bloom",)
    attention_path = "self_attention"

    def _head_group(self, attention, index, head_grouping):
        return None  # ALiBi: see the module doc
