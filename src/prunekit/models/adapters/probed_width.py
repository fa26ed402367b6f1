"""Width pruning on top of the structural probe, for families whose maps the probe finds well.

The structural adapter (``structural.py``) observes a layer's linear maps, their input groups and
MoE expert slices in one probe forward, which serves mask methods and depth; width methods also
need the *coupling* — which rows and columns make one attention head, which maps make one MLP
channel — and which config fields follow. :class:`ProbedWidthAdapter` adds that from the maps'
names: heads from the attention module's q/k/v/o (a family with a fused or latent layout overrides
:meth:`_head_group`), channels from the one dense MLP of a layer outside attention (gate/up or fc1
rows with the down or fc2 column beside them; routed experts keep their width), and stock config
fields only when the model's own class, built from them on the meta device, has exactly the
layers the model has now. Families: ``moe.py`` (mixture-of-experts with Llama-style or latent
attention), ``falcon.py``, ``bloom.py``, ``codegen.py``.
"""

from __future__ import annotations

import copy

from .base import ROUTER_ROLE, LinearView
from .structural import StructuralAdapter
from .units import UnitGroup, channel_group, head_group

ATTENTION = "self_attn"
_PRODUCER_ROLES = ("gate", "up", "fc1")
_CONSUMER_ROLES = ("down", "fc2")


class ProbedWidthAdapter(StructuralAdapter):
    """The structural probe's maps with head and channel coupling (see the module doc)."""

    width_prunable = True
    attention_path = ATTENTION  # the attention module of a decoder layer

    # ---- width: coupled units ----------------------------------------------------------
    def unit_groups(self, index, head_grouping="kv"):
        views = [v for v in self.linears(index) if v.expert is None and ROUTER_ROLE not in v.roles]
        attention = [v for v in views if v.local_name.startswith(self.attention_path + ".")]
        heads = self._head_group(attention, index, head_grouping)
        groups = {"heads": heads} if heads is not None else {}
        mlp = self._dense_mlp(views, self.attention_path)
        if mlp is not None:
            producers, consumer = mlp
            groups["channels"] = channel_group(producers + [consumer], index,
                                               tuple(p.local_name for p in producers), consumer.input_group)
        return groups

    def layer_head_dim(self, index: int) -> int:
        """Layer ``index``'s head width (one for every layer unless the family sets it per layer)."""
        return self.head_dim

    def _head_group(self, attention: list[LinearView], index: int, head_grouping: str) -> UnitGroup | None:
        """The layer's attention units (None where heads cannot be removed)."""
        return head_group(attention, index, self.layer_head_dim(index), head_grouping)

    def _query_heads(self, heads: UnitGroup) -> int:
        q_member = next(m for m in heads.members if m.role == "q")
        return q_member.index.numel() // self.layer_head_dim(heads.layer)

    def _kv_heads(self, heads: UnitGroup) -> int:
        """KV heads: the k rows' blocks, or — units of query heads that leave k whole — one per
        partition block (a multi-query layer's one)."""
        k_member = next((m for m in heads.members if m.role == "k"), None)
        return k_member.index.numel() // self.layer_head_dim(heads.layer) if k_member is not None else heads.partition

    @staticmethod
    def _dense_mlp(views: list[LinearView], attention_path: str) -> tuple[list[LinearView], LinearView] | None:
        """The layer's dense MLP outside attention — gate/up (or fc1) maps and the one down (fc2)
        map beside them in the same module — or None (a layer of routed experts only)."""
        by_parent: dict[str, list[LinearView]] = {}
        for view in views:
            if not view.local_name.startswith(attention_path + "."):
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
        heads = groups.get("heads")
        return {"heads": self._query_heads(heads) if heads else self.num_heads,
                "kv_heads": self._kv_heads(heads) if heads else self.num_kv_heads,
                "channels": groups["channels"].units if "channels" in groups else 0}

    def head_attributes(self, heads, kv_heads):
        attention = self.decoder_layers()[0].get_submodule(self.attention_path)
        values = {"num_key_value_groups": heads // kv_heads, "num_heads": heads, "num_attention_heads": heads,
                  "num_key_value_heads": kv_heads}
        # only the attributes this family's attention keeps (Llama-4 also stores its head counts)
        return {f"{self.attention_path}.{name}": value for name, value in values.items()
                if isinstance(getattr(attention, name, None), int)}

    def stock_head_fields(self, heads: int, kv_heads: int) -> dict:
        """The config fields that state a layer's heads."""
        return {"num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": self.head_dim}

    def stock_shape_fields(self, heads, kv_heads, channels):
        """Head fields, when the stock class built from them has every layer's shapes: a channel
        cut (a shared expert's width and a dense layer's are separate fields) or full-width q/k
        norms (built at the hidden size) are per-layer shapes."""
        from ...io.shapes import SHAPES_KEY
        from ...surgery.depth_config import stock_class_builds

        fields = self.stock_head_fields(heads, kv_heads)
        config = copy.deepcopy(self.config)
        for key, value in fields.items():
            if isinstance(getattr(type(config), key, None), property):  # derived (Falcon's head_dim): not a field
                return None
            setattr(config, key, value)
        if hasattr(config, SHAPES_KEY):
            delattr(config, SHAPES_KEY)
        return fields if stock_class_builds(self.model, config, self.layers_path) else None
