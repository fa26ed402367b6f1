"""Mixture-of-experts families whose attention is Llama's: width pruning beside the routed experts.

Mixtral, PhiMoE, Qwen2-MoE, Qwen3-MoE, OLMoE, FlexOlmo, Granite-MoE (and its shared-MLP variant),
GPT-OSS, ERNIE-4.5-MoE, HunYuan-MoE, GLM-4-MoE, dots.llm1 and Llama-4's text model keep
``self_attn.{q,k,v,o}_proj`` as Llama does — head counts read from the weights' shapes, an explicit
``head_dim`` field, ``num_key_value_groups`` on the module — and put their experts in fused 3-D
parameters with a router beside them. The maps (experts included, each from its own routed tokens)
are found as the structural adapter finds them, from one probe forward; what this file adds is the
coupling width pruning needs:

- **heads**: a KV group (or one query head) owns rows of q/k/v and columns of o, plus the per-head
  tensors some families keep beside them — OLMoE/FlexOlmo's full-width q/k norms, GPT-OSS's
  attention sinks (:attr:`HEAD_COMPANIONS`);
- **channels**: a layer's *dense* MLP — Qwen2-MoE's ``shared_expert``, Llama-4's
  ``shared_expert``, GLM-4-MoE/dots/ERNIE's ``shared_experts``, and the dense layers of models that
  start or interleave them (``mlp_only_layers``, ``first_k_dense_replace``) — one channel being a
  row of gate and up and a column of down. Routed experts keep their width: removing whole experts
  is ``expert-prune``, and mask methods prune inside them.

A layer with routed experts only (Mixtral, Qwen3-MoE, OLMoE) has heads as its one unit kind. One
head count in every layer is written as stock config fields; anything else (per-layer heads, any
channel cut — a shared expert's width and a dense layer's are separate config fields) as
per-layer shapes that ``modeling_prunekit.py`` rebuilds. Multi-head latent attention
(DeepSeek-V2/V3, Kimi) couples heads through low-rank maps and is not served here.
"""

from __future__ import annotations

import copy

from .base import ROUTER_ROLE, LinearView
from .structural import StructuralAdapter
from .units import channel_group, head_group

ATTENTION = "self_attn"
# per-head tensors beside q/k/v that follow removed heads (dotted local path -> role whose rows they follow)
HEAD_COMPANIONS = {
    "olmoe": {"self_attn.q_norm.weight": "q", "self_attn.k_norm.weight": "k"},
    "flex_olmo": {"self_attn.q_norm.weight": "q", "self_attn.k_norm.weight": "k"},
    "gpt_oss": {"self_attn.sinks": "q"},
}
_PRODUCER_ROLES = ("gate", "up", "fc1")
_CONSUMER_ROLES = ("down", "fc2")


class MoeAdapter(StructuralAdapter):
    family = "moe"
    model_types = ("mixtral", "phimoe", "qwen2_moe", "qwen3_moe", "olmoe", "flex_olmo", "granitemoe",
                   "granitemoeshared", "gpt_oss", "ernie4_5_moe", "hunyuan_v1_moe", "glm4_moe", "dots1",
                   "llama4_text")
    width_prunable = True

    # ---- width: coupled units ----------------------------------------------------------
    def unit_groups(self, index, head_grouping="kv"):
        views = [v for v in self.linears(index) if v.expert is None and ROUTER_ROLE not in v.roles]
        attention = [v for v in views if v.local_name.startswith(ATTENTION + ".")]
        groups = {"heads": head_group(attention, index, self.head_dim, head_grouping)}
        mlp = self._dense_mlp(views)
        if mlp is not None:
            producers, consumer = mlp
            groups["channels"] = channel_group(producers + [consumer], index,
                                               tuple(p.local_name for p in producers), consumer.input_group)
        return groups

    @staticmethod
    def _dense_mlp(views: list[LinearView]) -> tuple[list[LinearView], LinearView] | None:
        """The layer's dense MLP outside attention — gate/up (or fc1) maps and the one down (fc2)
        map beside them in the same module — or None (a layer of routed experts only)."""
        by_parent: dict[str, list[LinearView]] = {}
        for view in views:
            if not view.local_name.startswith(ATTENTION + "."):
                by_parent.setdefault(view.local_name.rpartition(".")[0], []).append(view)
        found = []
        for members in by_parent.values():
            producers = [v for v in members if v.roles[0] in _PRODUCER_ROLES and len(v.roles) == 1]
            consumers = [v for v in members if v.roles[0] in _CONSUMER_ROLES]
            if producers and len(consumers) == 1 and len({p.input_group for p in producers}) == 1:
                found.append((producers, consumers[0]))
        return found[0] if len(found) == 1 else None

    def layer_shape(self, index):
        groups = self.unit_groups(index)
        heads = groups["heads"]
        q_member = next(m for m in heads.members if m.role == "q")
        return {"heads": q_member.index.numel() // self.head_dim, "kv_heads": heads.units,
                "channels": groups["channels"].units if "channels" in groups else 0}

    def head_companions(self):
        return HEAD_COMPANIONS.get(self.config.model_type, {})

    def head_attributes(self, heads, kv_heads):
        attention = self.decoder_layers()[0].get_submodule(ATTENTION)
        values = {"num_key_value_groups": heads // kv_heads, "num_heads": heads, "num_attention_heads": heads,
                  "num_key_value_heads": kv_heads}
        # only the attributes this family's attention keeps (Llama-4 also stores its head counts)
        return {f"{ATTENTION}.{name}": value for name, value in values.items()
                if isinstance(getattr(attention, name, None), int)}

    def stock_shape_fields(self, heads, kv_heads, channels):
        """Head fields, when the stock class built from them has every layer's shapes: a channel
        cut (a shared expert's width and a dense layer's are separate fields) or full-width q/k
        norms (built at the hidden size) are per-layer shapes."""
        from ...io.shapes import SHAPES_KEY
        from ...surgery.depth_config import stock_class_builds

        fields = {"num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": self.head_dim}
        config = copy.deepcopy(self.config)
        for key, value in fields.items():
            setattr(config, key, value)
        if hasattr(config, SHAPES_KEY):
            delattr(config, SHAPES_KEY)
        return fields if stock_class_builds(self.model, config, self.layers_path) else None
