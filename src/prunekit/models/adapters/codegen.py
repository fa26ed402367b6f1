"""CodeGen: a fused ``qkv_proj`` laid out in ``mp_num`` = 4 model-parallel blocks, each holding its
share of the query, value and key heads in that order (``[q_b | v_b | k_b]``), partial rotary, a
parallel block and an ungated MLP (``fc_in`` / ``fc_out``).

A head owns its rows in the three parts of its block and its columns of ``out_proj``. The forward
splits the fused output into blocks of ``embed_dim // mp_num`` per part, so every block must keep the
same number of heads: heads are removed equally from each of the four blocks (a partitioned unit
group, as query heads are per KV group elsewhere), and the attention's ``embed_dim`` and head count
follow. CodeGen's config derives the head width from ``n_embd / n_head``, so thinned layers reload
through ``modeling_prunekit.py``.
"""

from __future__ import annotations

import torch

from ...errors import ArgumentError
from .probed_width import ProbedWidthAdapter
from .units import UnitGroup, UnitMember


class CodeGenAdapter(ProbedWidthAdapter):
    family = "codegen"
    model_types = ("codegen",)
    attention_path = "attn"

    def _head_group(self, attention, index, head_grouping):
        by_name = {view.local_name: view for view in attention}
        qkv, out = by_name.get("attn.qkv_proj"), by_name.get("attn.out_proj")
        if qkv is None or out is None:
            raise ArgumentError(f"layer {index}: no attn.qkv_proj and attn.out_proj to prune heads by")
        module = self.decoder_layers()[index].attn
        blocks, dim = int(module.mp_num), int(module.head_dim)
        heads = out.in_features // dim
        per_block = heads // blocks
        local = per_block * dim  # one part of one block
        slot = torch.arange(dim)
        rows = {part: [] for part in ("q", "v", "k")}
        for head in range(heads):
            block, j = divmod(head, per_block)
            for offset, part in enumerate(("q", "v", "k")):
                rows[part].append(block * 3 * local + offset * local + j * dim + slot)
        members = [UnitMember(qkv, 0, torch.stack(rows[role]), role) for role in ("q", "k", "v")]
        members.append(UnitMember(out, 1, torch.arange(heads * dim).view(heads, dim), "o"))
        return UnitGroup("heads", index, heads, members, partition=blocks)

    def _query_heads(self, heads):
        return heads.units

    def _kv_heads(self, heads):
        return heads.units

    def head_attributes(self, heads, kv_heads):
        return {"attn.num_attention_heads": heads, "attn.embed_dim": heads * self.head_dim}
