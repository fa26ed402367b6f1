"""Removing whole decoder layers, permanently or for the length of a ``with`` block."""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterator

from ..models.adapters.base import Adapter


def remove_layers(adapter: Adapter, remove: list[int]) -> list[int]:
    """Delete the layers ``remove``; return the kept original indices."""
    kept = [i for i in range(adapter.num_layers()) if i not in set(remove)]
    adapter.keep_layers(kept)
    return kept


@contextmanager
def layers_removed(adapter: Adapter, remove: list[int]) -> Iterator[None]:
    """Run the model without ``remove`` inside the block, then restore it exactly."""
    layers = adapter.decoder_layers()
    config = copy.deepcopy(vars(adapter.config))
    indices = [(m, name, getattr(m, name)) for layer in layers for m in layer.modules()
               for name in ("layer_idx", "layer_id") if isinstance(getattr(m, name, None), int)]
    remove_layers(adapter, remove)
    try:
        yield
    finally:
        parent_path, _, attr = adapter.layers_path.rpartition(".")
        setattr(adapter.model.get_submodule(parent_path), attr, layers)
        vars(adapter.config).update(config)
        for module, name, value in indices:
            setattr(module, name, value)
