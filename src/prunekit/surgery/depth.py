"""Removing whole decoder layers, permanently or for the length of a ``with`` block."""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterator

import torch

from ..models.adapters.base import TABLE_WIDTH_ATTRIBUTES, Adapter


def remove_layers(adapter: Adapter, remove: list[int], verify: bool = True) -> list[int]:
    """Delete the layers ``remove``; return the kept original indices (``verify``: prove first that
    the rewritten config rebuilds the kept layers, see ``depth_config.py``)."""
    kept = [i for i in range(adapter.num_layers()) if i not in set(remove)]
    adapter.keep_layers(kept, verify)
    return kept


@contextmanager
def layers_removed(adapter: Adapter, remove: list[int]) -> Iterator[None]:
    """Run the model without ``remove`` inside the block, then restore it exactly."""
    layers = adapter.decoder_layers()
    config = copy.deepcopy(vars(adapter.config))
    indices = [(m, name, getattr(m, name)) for layer in layers for m in layer.modules()
               for name in ("layer_idx", "layer_id") if isinstance(getattr(m, name, None), int)]
    tables = [(module, module.weight, {name: getattr(module, name) for name in TABLE_WIDTH_ATTRIBUTES
                                       if hasattr(module, name)}) for module, _ in adapter.per_layer_tables()]
    remove_layers(adapter, remove, verify=False)
    try:
        yield
    finally:
        parent_path, _, attr = adapter.layers_path.rpartition(".")
        setattr(adapter.model.get_submodule(parent_path), attr, layers)
        vars(adapter.config).update(config)
        for module, name, value in indices:
            setattr(module, name, value)
        for module, weight, widths in tables:
            module.weight = weight
            for name, value in widths.items():
                setattr(module, name, value)


SUBLAYER_OUTPUT_ROLES = {"attn": ("o",), "mlp": ("down", "fc2")}


@torch.no_grad()
def skip_sublayers(adapter: Adapter, blocks: list[tuple[int, str]]) -> list[str]:
    """Make attention or MLP blocks exact skips by zeroing their output projection (and bias).

    The block then adds nothing to the residual stream, and the checkpoint still reloads with
    plain transformers; the block's computation is still performed, so this gives no speed-up.
    Returns the names of the zeroed modules.
    """
    zeroed = []
    for index, kind in blocks:
        roles = SUBLAYER_OUTPUT_ROLES[kind]
        view = next(v for v in adapter.linears(index) if v.roles[0] in roles)
        view.weight.zero_()
        bias = getattr(view.module, "bias", None)
        if bias is not None:
            bias.zero_()
        zeroed.append(view.name)
    return zeroed
