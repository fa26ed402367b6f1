"""The config of a model after a depth cut: every per-layer field rewritten, then proven.

Families say which layer is which in several ways: per-layer lists (``layer_types``,
``no_rope_layers``), lists of layer indices (``mlp_only_layers``), counts and periods
(``first_k_dense_replace``, ``decoder_sparse_step``, ``moe_layer_freq``). After keeping layers
``kept`` of ``old``, lists are filtered, index lists renumbered and a dense prefix recounted. A
period cannot follow an arbitrary cut; where the family also takes an explicit index list, the
cut is written as that list instead. Then the stock model class is built from the new config on
the meta device and each of its layers compared, parameter by parameter and shape by shape, with
the layer it stands for; a config that would rebuild a different model is refused (naming the
first layer that differs) rather than saved.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..errors import ArgumentError

INDEX_LIST_SUFFIXES = ("_layers", "_idxs", "_indices", "_layer_ids")
PERIOD_KEYS = ("decoder_sparse_step", "moe_layer_freq", "interleave_moe_layer_step")


def _is_index_list(key: str, value: Any, old: int) -> bool:
    return (isinstance(value, list) and key.endswith(INDEX_LIST_SUFFIXES) and len(value) != old
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < old for v in value))


def cut_fields(config: Any, kept: list[int], old: int, depth_key: str) -> dict[str, Any]:
    """The config fields that change when only layers ``kept`` (of ``old``) remain."""
    position = {original: new for new, original in enumerate(kept)}
    updates: dict[str, Any] = {depth_key: len(kept)}
    for key, value in vars(config).items():
        if key == depth_key or key.startswith("_"):
            continue
        if isinstance(value, list) and len(value) == old:
            updates[key] = [value[i] for i in kept]
        elif _is_index_list(key, value, old):
            updates[key] = [position[i] for i in value if i in position]
    k = getattr(config, "first_k_dense_replace", None)
    if isinstance(k, int) and not isinstance(k, bool) and k > 0:
        updates["first_k_dense_replace"] = sum(1 for i in kept if i < k)
    overrides = per_layer_overrides(config)
    if overrides:
        updates["per_layer_config"] = {position[i]: values for i, values in overrides.items() if i in position}
    return updates


def per_layer_overrides(config: Any) -> dict[int, dict]:
    """transformers' heterogeneous configs (Gemma-4: ``per_layer_config``, layer index -> the fields
    that layer sets differently, e.g. a full-attention layer's head_dim), keyed by int."""
    if not hasattr(type(config), "per_layer_config") or not hasattr(config, "to_dict"):
        return {}
    return {int(i): dict(values) for i, values in (config.to_dict().get("per_layer_config") or {}).items()}


def _as_reloaded(config: Any) -> Any:
    """``config`` as ``from_pretrained`` will read it back: the class's own checks run again on load
    (Gemma-4 turns the last layer into full attention), which setting fields one by one skips."""
    try:
        return type(config).from_dict(config.to_dict())
    except Exception:  # a config that does not round-trip is judged as it stands
        return config


def _signature(layer: nn.Module) -> dict[str, tuple]:
    return {name: tuple(t.shape) for name, t in layer.state_dict(keep_vars=True).items()}


def _skeleton_layers(model: nn.Module, config: Any, layers_path: str) -> list[nn.Module] | None:
    """The decoder layers the stock class builds from ``config`` (on meta: no memory), or None
    where the class cannot be built that way (custom code, composite models)."""
    try:
        with torch.device("meta"):
            skeleton = type(model)(config)
    except Exception:  # noqa: BLE001 - a class that needs more than its config is not verified
        return None
    module: nn.Module = skeleton
    for part in layers_path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return list(module)


def _first_mismatch(skeleton: list[nn.Module], layers: list[nn.Module]) -> int | None:
    if len(skeleton) < len(layers):
        return len(skeleton)
    for index, (built, real) in enumerate(zip(skeleton, layers)):
        if _signature(built) != _signature(real):
            return index
    return None


def stock_class_builds(model: nn.Module, config: Any, layers_path: str) -> bool:
    """Whether the model's stock class, built from ``config`` (on meta), has exactly the decoder
    layers ``model`` has now — every parameter and buffer the same shape."""
    skeleton = _skeleton_layers(model, config, layers_path)
    module: nn.Module = model
    for part in layers_path.split("."):
        module = getattr(module, part)
    return skeleton is not None and len(skeleton) == len(module) and _first_mismatch(skeleton, list(module)) is None


def _as_index_list(config: Any, kept_layers: list[nn.Module]) -> dict[str, Any] | None:
    """A period that the cut broke, rewritten as the family's explicit list of dense layers."""
    if not hasattr(config, "mlp_only_layers") or not any(hasattr(config, k) for k in PERIOD_KEYS):
        return None
    dense = [i for i, layer in enumerate(kept_layers) if _is_dense(layer)]
    return {**{k: 1 for k in PERIOD_KEYS if hasattr(config, k)}, "mlp_only_layers": dense}


def _is_dense(layer: nn.Module) -> bool:
    return not any("expert" in name for name, _ in layer.named_modules())


def config_after_cut(model: nn.Module, config: Any, layers: list[nn.Module], kept: list[int], depth_key: str,
                     layers_path: str, family_updates: dict[str, Any] | None = None) -> dict[str, Any]:
    """The field updates that make ``config`` describe only layers ``kept`` (``family_updates``: what
    the family's adapter adds); verified on a meta skeleton of the stock class when the original
    config rebuilds the original layers."""
    old = len(layers)
    updates = {**cut_fields(config, kept, old, depth_key), **(family_updates or {})}
    original = _skeleton_layers(model, config, layers_path)
    if original is None or _first_mismatch(original, layers) is not None:
        return updates  # the model is not what its config builds (custom code, factored maps): not checkable
    kept_layers = [layers[i] for i in kept]
    attempts = [updates]
    fallback = _as_index_list(config, kept_layers)
    if fallback is not None:
        attempts.append({**updates, **fallback})
    skeleton, rewritten = None, None
    for attempt in attempts:
        candidate = copy.deepcopy(config)
        for key, value in attempt.items():
            setattr(candidate, key, value)
        reloaded = _as_reloaded(candidate)
        changed = next((key for key, value in attempt.items()
                        if isinstance(value, list) and getattr(reloaded, key, value) != value), None)
        if changed is not None:  # the class rewrites a per-layer field on load (Gemma-4: the last layer is full attention)
            rewritten = (changed, getattr(reloaded, changed), attempt[changed])
            continue
        skeleton = _skeleton_layers(model, reloaded, layers_path)
        if skeleton is not None and _first_mismatch(skeleton, kept_layers) is None:
            return attempt
    if rewritten is not None:
        raise ArgumentError(
            f"removing these layers leaves a config that model type '{getattr(config, 'model_type', '?')}' rewrites "
            f"when it is loaded ({rewritten[0]}: {rewritten[1]} instead of {rewritten[2]}), so the saved model "
            "would not be the pruned one; choose other layers")
    if skeleton is None:
        raise ArgumentError(f"removing these layers leaves a config that model type '{getattr(config, 'model_type', '?')}' "
                            "cannot build (its per-layer fields no longer agree); choose other layers")
    bad = _first_mismatch(skeleton, kept_layers)
    raise ArgumentError(
        f"removing these layers leaves a model that model type '{getattr(config, 'model_type', '?')}' cannot describe: "
        f"its config would rebuild kept layer {bad} (originally {kept[bad] if bad < len(kept) else '?'}) with different "
        f"weights (fields tried: {', '.join(sorted(set(k for a in attempts for k in a)))}); choose other layers")


def removal_describable(adapter: Any, remove: list[int]) -> bool:
    """Whether removing layers ``remove`` leaves a config that rebuilds the kept layers (the check
    ``keep_layers`` makes before cutting), without changing the model."""
    layers = list(adapter.decoder_layers())
    kept = [i for i in range(len(layers)) if i not in set(remove)]
    try:
        config_after_cut(adapter.model, adapter.config, layers, kept, adapter.depth_key, adapter.layers_path,
                         adapter.depth_updates(kept))
    except ArgumentError:
        return False
    return True
