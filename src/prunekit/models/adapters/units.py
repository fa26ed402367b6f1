"""Coupled structures inside a decoder layer: attention heads and MLP channels as *unit groups*.

Removing one unit must remove everything that depends on it. A :class:`UnitGroup` lists, for
every member linear map, which rows (outputs) or columns (inputs) each unit owns, so importance
scoring and physical shrinking are written once for every family: the adapter only says which
views are q/k/v/o and which maps produce and consume the MLP intermediate.

Grouped-query attention: with ``grouping="kv"`` a unit is one KV head together with the query
heads that share it (rows of q, k, v and columns of o); with ``grouping="query"`` a unit is one
query head (rows of q, columns of o) and k/v stay, so units are removed in equal numbers from
every KV group (``partition``) — otherwise the query→KV head mapping would break.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import ArgumentError
from .base import LinearView


@dataclass
class UnitMember:
    """``index[u]`` are the rows (``axis=0``) or columns (``axis=1``) of ``view`` owned by unit ``u``."""

    view: LinearView
    axis: int
    index: torch.Tensor  # (units, width), long
    role: str


@dataclass
class UnitGroup:
    """One kind of coupled unit (``heads`` or ``channels``) in one decoder layer."""

    kind: str
    layer: int
    units: int
    members: list[UnitMember]
    partition: int = 1  # units form this many equal consecutive blocks; removal must be equal per block

    @property
    def block(self) -> int:
        return self.units // self.partition


def _rows(view: LinearView, role: str) -> torch.Tensor:
    return view.role_rows[role] if view.role_rows else torch.arange(view.out_features)


def head_group(views: list[LinearView], layer: int, head_dim: int, grouping: str = "kv") -> UnitGroup:
    """Attention units of one layer from its q/k/v/o views (fused or separate)."""
    by_role: dict[str, LinearView] = {}
    for view in views:
        for role in view.roles:
            if role in ("q", "k", "v", "o"):
                by_role[role] = view
    missing = [r for r in ("q", "k", "v", "o") if r not in by_role]
    if missing:
        raise ArgumentError(f"layer {layer}: no {'/'.join(missing)} projection to prune heads by")
    q_rows = _rows(by_role["q"], "q").view(-1, head_dim)
    k_rows = _rows(by_role["k"], "k").view(-1, head_dim)
    v_rows = _rows(by_role["v"], "v").view(-1, head_dim)
    heads, kv_heads = q_rows.shape[0], k_rows.shape[0]
    if heads % kv_heads:
        raise ArgumentError(f"layer {layer}: {heads} query heads are not divisible into {kv_heads} KV groups")
    rep = heads // kv_heads
    o_cols = torch.arange(by_role["o"].in_features).view(-1, head_dim)
    if o_cols.shape[0] != heads:
        raise ArgumentError(f"layer {layer}: o projection reads {o_cols.shape[0]} heads, q produces {heads}")
    if grouping == "kv" or (grouping == "query" and rep == 1):  # without GQA both are one head per unit
        members = [
            UnitMember(by_role["q"], 0, q_rows.reshape(kv_heads, rep * head_dim), "q"),
            UnitMember(by_role["k"], 0, k_rows, "k"),
            UnitMember(by_role["v"], 0, v_rows, "v"),
            UnitMember(by_role["o"], 1, o_cols.reshape(kv_heads, rep * head_dim), "o"),
        ]
        return UnitGroup("heads", layer, kv_heads, members)
    if grouping == "query":
        members = [UnitMember(by_role["q"], 0, q_rows, "q"), UnitMember(by_role["o"], 1, o_cols, "o")]
        return UnitGroup("heads", layer, heads, members, partition=kv_heads)
    raise ArgumentError(f"unknown head grouping '{grouping}' (kv or query)")


def channel_group(views: list[LinearView], layer: int, producers: tuple[str, ...], consumer_group: str) -> UnitGroup:
    """MLP intermediate channels: rows of the producing maps (each role's rows of a fused one),
    columns of the consuming map."""
    makers = [v for v in views if v.local_name in producers]
    consumers = [v for v in views if v.input_group == consumer_group]
    if not makers or len(consumers) != 1:
        raise ArgumentError(f"layer {layer}: cannot find the MLP maps that produce and consume '{consumer_group}'")
    consumer = consumers[0]
    width = consumer.in_features
    cols = torch.arange(width).view(width, 1)
    # a fused producer (Phi-3 / GLM ``gate_up_proj``) owns one row per channel in each of its roles
    members = [UnitMember(v, 0, _rows(v, role).view(-1, 1), role) for v in makers
               for role in (v.roles if v.role_rows else v.roles[:1])]
    members.append(UnitMember(consumer, 1, cols, consumer.roles[0]))
    for member in members[:-1]:
        if member.index.shape[0] != width:
            raise ArgumentError(f"{member.view.name} produces {member.index.shape[0]} channels, {consumer.name} reads {width}")
    return UnitGroup("channels", layer, width, members)
