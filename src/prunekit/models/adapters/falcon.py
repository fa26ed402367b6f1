"""Falcon: one fused ``query_key_value`` map in three layouts, a parallel or serial block, and an
ungated MLP (``dense_h_to_4h`` / ``dense_4h_to_h``).

The fused rows are laid out, by config:

- ``new_decoder_architecture`` (Falcon-40B/180B, Falcon-3): per KV group, its query heads then its
  key and value head — a unit is one KV group with its queries;
- ``multi_query`` (Falcon-7B): all query heads, then the one shared key and value head — a unit is
  one query head (the shared key and value stay);
- otherwise: per head, its query, key and value — a unit is one head.

The attention reads its head counts from module attributes (``num_heads``, ``num_kv_heads``) and
keeps ``head_dim`` from construction, so fewer heads keep their width; per-layer counts reload
through ``modeling_prunekit.py``. ALiBi variants (Falcon-RW) build one bias per head at the model
level from the config's head count: their heads are not removed, only MLP channels.
"""

from __future__ import annotations

import dataclasses

import torch

from .probed_width import ProbedWidthAdapter
from .units import head_group


class FalconAdapter(ProbedWidthAdapter):
    family = "falcon"
    model_types = ("falcon",)
    attention_path = "self_attention"

    @property
    def num_kv_heads(self) -> int:
        config = self.config
        if config.new_decoder_architecture or not config.multi_query:
            return int(config.num_kv_heads or config.num_attention_heads)
        return 1

    def _head_group(self, attention, index, head_grouping):
        if self.config.alibi:
            return None
        fused = next(v for v in attention if v.local_name == f"{self.attention_path}.query_key_value")
        output = next(v for v in attention if v.local_name == f"{self.attention_path}.dense")
        dim = self.head_dim
        # the layer's own counts, read from its weights: the output map reads one block per query head,
        # the fused map holds those plus two blocks per KV head
        heads = output.in_features // dim
        kv_heads = (fused.out_features // dim - heads) // 2
        rows = torch.arange(fused.out_features).view(-1, dim)
        if self.config.new_decoder_architecture:  # [kv groups, its queries + key + value, head_dim]
            grouped = rows.view(kv_heads, heads // kv_heads + 2, dim)
            q, k, v = grouped[:, :-2], grouped[:, -2], grouped[:, -1]
        elif self.config.multi_query:  # [all queries, the key, the value]
            q, k, v = rows[:heads], rows[heads], rows[heads + 1]
            head_grouping = "query"  # one KV head for all: units are query heads
        else:  # [heads, (query, key, value), head_dim]
            grouped = rows.view(heads, 3, dim)
            q, k, v = grouped[:, 0], grouped[:, 1], grouped[:, 2]
        fused = dataclasses.replace(fused, role_rows={"q": q.reshape(-1), "k": k.reshape(-1), "v": v.reshape(-1)})
        views = [fused if view.local_name == fused.local_name else view for view in attention]
        return head_group(views, index, dim, head_grouping)

    def head_attributes(self, heads, kv_heads):
        return {**super().head_attributes(heads, kv_heads), f"{self.attention_path}.num_kv_heads": kv_heads}
