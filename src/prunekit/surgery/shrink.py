"""Physical shrinking: remove whole units (heads, MLP channels) so the model is truly smaller.

One routine serves every family: a :class:`UnitGroup` says which rows or columns of which maps a
unit owns; removing units drops exactly those (and the matching bias entries), keeps everything
else in its original order — which also keeps fused layouts ([q|k|v] or per-head interleaved)
intact — and then sets the attention attributes the adapter names for the new head count.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

from ..models.adapters.base import Adapter, LinearView
from ..models.adapters.layer_config import set_own_config_fields
from ..models.adapters.units import UnitGroup


@torch.no_grad()
def resize_view(view: LinearView, axis: int, keep: torch.Tensor) -> None:
    """Keep only rows (``axis=0``, with their bias entries) or columns (``axis=1``) ``keep`` of ``view``."""
    module = view.module
    keep = keep.to(module.weight.device)
    new = view.weight.index_select(axis, keep).contiguous()
    stored = new.t().contiguous() if view.transposed else new
    module.weight = nn.Parameter(stored, requires_grad=module.weight.requires_grad)
    if axis == 0 and getattr(module, "bias", None) is not None:
        module.bias = nn.Parameter(module.bias.data.index_select(0, keep).contiguous(), requires_grad=module.bias.requires_grad)
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = new.shape
    elif hasattr(module, "nf"):  # transformers' Conv1D
        module.nf = new.shape[0]
        if hasattr(module, "nx"):
            module.nx = new.shape[1]


def remove_units(adapter: Adapter, group: UnitGroup, removed: list[int]) -> dict:
    """Drop units ``removed`` of ``group`` from its layer; return what changed for the record."""
    if not removed:
        return {"removed": [], "kept": group.units}
    if len(set(removed)) >= group.units:
        raise ValueError(f"layer {group.layer}: cannot remove every {group.kind[:-1]}")
    drop: dict[tuple[int, int], list[torch.Tensor]] = defaultdict(list)
    views: dict[int, LinearView] = {}
    index = torch.tensor(sorted(set(removed)), dtype=torch.long)
    for member in group.members:
        key = (id(member.view.module), member.axis)
        views[id(member.view.module)] = member.view
        drop[key].append(member.index[index].reshape(-1))
    if group.kind == "heads":
        _slice_head_companions(adapter, group, index)
    for (module_id, axis), parts in drop.items():
        view = views[module_id]
        size = view.weight.shape[axis]
        mask = torch.ones(size, dtype=torch.bool)
        mask[torch.cat(parts)] = False
        resize_view(view, axis, torch.nonzero(mask).squeeze(1))
    if group.kind == "heads":
        shape = adapter.layer_shape(group.layer)
        layer = adapter.decoder_layers()[group.layer]
        for path, value in adapter.head_attributes(shape["heads"], shape["kv_heads"]).items():
            owner, _, attr = path.rpartition(".")
            setattr(layer.get_submodule(owner) if owner else layer, attr, value)
        for path, fields in adapter.head_config_fields(shape["heads"], shape["kv_heads"]).items():
            set_own_config_fields(layer.get_submodule(path), fields)
    return {"removed": sorted(set(removed)), "kept": group.units - len(set(removed))}


@torch.no_grad()
def _slice_head_companions(adapter: Adapter, group: UnitGroup, removed: torch.Tensor) -> None:
    """Drop the entries of the adapter's per-head companion tensors that follow the removed q or k
    rows: one entry per row (a full-width q/k norm) or one per head (attention sinks)."""
    layer = adapter.decoder_layers()[group.layer]
    for path, role in adapter.head_companions().items():
        member = next((m for m in group.members if m.role == role), None)
        if member is None:  # query-head units leave k (and its norm) whole
            continue
        rows = member.index[removed].reshape(-1)
        owner, _, name = path.rpartition(".")
        module = layer.get_submodule(owner) if owner else layer
        tensor = getattr(module, name)
        total = member.index.numel()  # this role's rows in the group (its map may hold others too)
        if tensor.shape[0] == total:
            drop = rows - member.index.min()
        elif tensor.shape[0] * adapter.head_dim == total:
            drop = torch.unique((rows - member.index.min()) // adapter.head_dim)
        else:
            raise ValueError(f"layer {group.layer}: {path} has {tensor.shape[0]} entries, not one per {role} row "
                             f"({total}) or head ({total // adapter.head_dim})")
        keep = torch.ones(tensor.shape[0], dtype=torch.bool)
        keep[drop] = False
        new = tensor.data[keep.to(tensor.device)].contiguous()
        setattr(module, name, nn.Parameter(new, requires_grad=tensor.requires_grad))
        if hasattr(module, "normalized_shape"):
            module.normalized_shape = (new.shape[0],)
