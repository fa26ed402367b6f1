"""Mixture-of-experts families: width pruning beside the routed experts.

Mixtral, PhiMoE, Qwen2-MoE, Qwen3-MoE, OLMoE, FlexOlmo, Granite-MoE (and its shared-MLP variant),
GPT-OSS, ERNIE-4.5-MoE, HunYuan-MoE, GLM-4-MoE, dots.llm1 and Llama-4's text model keep
``self_attn.{q,k,v,o}_proj`` as Llama does — head counts read from the weights' shapes, an explicit
``head_dim`` field, ``num_key_value_groups`` on the module — and put their experts in fused 3-D
parameters with a router beside them. The maps (experts included, each pruned from its own routed
tokens by mask methods) are found by the structural probe; :class:`ProbedWidthAdapter` adds the
coupling width pruning needs:

- **heads**: a KV group (or one query head) owns rows of q/k/v and columns of o, plus the per-head
  tensors some families keep beside them — OLMoE/FlexOlmo's full-width q/k norms, GPT-OSS's
  attention sinks (:data:`HEAD_COMPANIONS`); DeepSeek-V2/V3's latent attention has its own layout
  (:class:`MlaAdapter`);
- **channels**: a layer's *dense* MLP — Qwen2-MoE's and Llama-4's ``shared_expert``,
  GLM-4-MoE/dots/ERNIE/DeepSeek's ``shared_experts``, and the dense layers of models that start or
  interleave them (``mlp_only_layers``, ``first_k_dense_replace``). Routed experts keep their
  width: removing whole experts is ``expert-prune``.

A layer of routed experts only (Mixtral, Qwen3-MoE, OLMoE) has heads as its one unit kind.
"""

from __future__ import annotations

import torch

from ...errors import ArgumentError
from .probed_width import ATTENTION, ProbedWidthAdapter
from .units import UnitGroup, UnitMember

# per-head tensors beside q/k/v that follow removed heads (dotted local path -> role whose rows they follow)
HEAD_COMPANIONS = {
    "olmoe": {"self_attn.q_norm.weight": "q", "self_attn.k_norm.weight": "k"},
    "flex_olmo": {"self_attn.q_norm.weight": "q", "self_attn.k_norm.weight": "k"},
    "gpt_oss": {"self_attn.sinks": "q"},
}


class MoeAdapter(ProbedWidthAdapter):
    family = "moe"
    model_types = ("mixtral", "phimoe", "qwen2_moe", "qwen3_moe", "olmoe", "flex_olmo", "granitemoe",
                   "granitemoeshared", "gpt_oss", "ernie4_5_moe", "hunyuan_v1_moe", "glm4_moe", "dots1",
                   "llama4_text")

    def head_companions(self):
        return HEAD_COMPANIONS.get(self.config.model_type, {})


class MlaAdapter(MoeAdapter):
    """DeepSeek-V2/V3's multi-head latent attention beside their experts: a head owns its
    ``qk_nope + qk_rope`` rows of ``q_b_proj`` (``q_proj`` without a query LoRA rank), its
    ``qk_nope + v`` rows of ``kv_b_proj`` (the key and value it expands from the shared latent) and
    its ``v_head_dim`` columns of ``o_proj``. The latent maps (``q_a_proj``, ``kv_a_proj_with_mqa``,
    the rotary key shared by all heads) keep their width. Every query head has its own key and
    value once expanded, so a unit is one head and grouping does not apply."""

    family = "mla"
    model_types = ("deepseek_v2", "deepseek_v3")

    def _head_group(self, attention, index, head_grouping):
        by_name = {view.local_name: view for view in attention}
        q = by_name.get(f"{ATTENTION}.q_b_proj") or by_name.get(f"{ATTENTION}.q_proj")
        kv, o = by_name.get(f"{ATTENTION}.kv_b_proj"), by_name.get(f"{ATTENTION}.o_proj")
        if q is None or kv is None or o is None:
            raise ArgumentError(f"layer {index}: no q_b_proj/q_proj, kv_b_proj and o_proj to prune heads by")
        config = self.config
        widths = {"q": config.qk_nope_head_dim + config.qk_rope_head_dim,
                  "k": config.qk_nope_head_dim + config.v_head_dim, "o": config.v_head_dim}
        heads = o.in_features // widths["o"]
        members = [UnitMember(view, axis, torch.arange(heads * widths[role]).view(heads, widths[role]), role)
                   for view, axis, role in ((q, 0, "q"), (kv, 0, "k"), (o, 1, "o"))]
        return UnitGroup("heads", index, heads, members)

    def _query_heads(self, heads):
        return heads.units

    def _kv_heads(self, heads):
        return heads.units  # each head expands its own key and value from the latent
