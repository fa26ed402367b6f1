"""Keep a structurally pruned model's config truthful, so its checkpoint reloads.

Transformers configs hold one head count and one MLP width for all layers. After width pruning:
- if every layer has the same shape and the family's config can express it (Llama-like configs
  carry an explicit ``head_dim``; every family has an MLP-width field), the stock config fields
  are rewritten and the checkpoint loads with plain ``AutoModelForCausalLM.from_pretrained``;
- otherwise (per-layer shapes, or head counts a config would turn into a different head width)
  the exact shape of every decoder linear and the attention attributes are stored in the config
  under ``prunekit_shapes``, and a small ``modeling_prunekit.py`` registered through ``auto_map``
  rebuilds those shapes — ``from_pretrained(..., trust_remote_code=True)`` then loads it. The file
  depends on torch and transformers only, not on prunekit.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # type hints only: io is imported by models, so a runtime import would be a cycle
    from ..models.adapters.base import Adapter

SHAPES_KEY = "prunekit_shapes"
FACTORED_KEY = "prunekit_factored"  # low-rank maps stored as two factors (see surgery/lowrank.py)
REMOTE_FILE = "modeling_prunekit.py"

_REMOTE_CODE = '''"""Written by prunekit: rebuild the per-layer shapes of a structurally pruned checkpoint.

The config's ``prunekit_shapes`` lists the shape of every decoder linear map, the attention
attributes that follow the head count and the per-head tensors beside the maps; the stock model is built, then those maps are replaced by
maps of the stored shapes before the weights are loaded. Load with
``AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)``.
"""

from typing import Any

import transformers
from torch import nn
from transformers.pytorch_utils import Conv1D


def rebuild_pruned_shapes(model, spec):
    for name, entry in spec.get("linears", {{}}).items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        old = getattr(parent, child)
        stored = (entry["in"], entry["out"]) if entry["class"] == "Conv1D" else (entry["out"], entry["in"])
        if tuple(old.weight.shape) == stored and (getattr(old, "bias", None) is not None) == entry["bias"]:
            continue  # built as it is stored (and of its own class: a router's forward is not a plain Linear's)
        if entry["class"] == "Conv1D":
            new = Conv1D(entry["out"], entry["in"])
        else:
            new = nn.Linear(entry["in"], entry["out"], bias=entry["bias"])
        setattr(parent, child, new.to(device=old.weight.device, dtype=old.weight.dtype))
    for path, value in spec.get("attributes", {{}}).items():
        owner, _, attr = path.rpartition(".")
        setattr(model.get_submodule(owner), attr, value)
    for path, shape in spec.get("parameters", {{}}).items():  # per-head tensors (q/k norms, sinks)
        owner_name, _, attr = path.rpartition(".")
        owner = model.get_submodule(owner_name)
        old = getattr(owner, attr)
        setattr(owner, attr, nn.Parameter(old.data.new_empty(shape), requires_grad=old.requires_grad))
        if hasattr(owner, "normalized_shape"):
            owner.normalized_shape = tuple(shape)


{layer_config_class}

def rebuild_layer_configs(model, spec):
    """Modules that read their head count from the config get their own values of those fields."""
    for path, fields in spec.get("configs", {{}}).items():
        module = model.get_submodule(path)
        module.config = LayerConfig(module.config, fields)


def rebuild_factored(model, spec):
    """Low-rank maps saved as two factors: in -> rank (no bias), rank -> out."""
    for name, entry in spec.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        old = getattr(parent, child)
        reference = next(old.parameters())
        new = nn.Sequential(nn.Linear(entry["in"], entry["rank"], bias=False),
                            nn.Linear(entry["rank"], entry["out"], bias=entry["bias"]))
        setattr(parent, child, new.to(device=reference.device, dtype=reference.dtype))


# transformers renames legacy checkpoint keys (e.g. GPT-NeoX's embed_out -> lm_head) only for its own
# classes; give this subclass the same renaming as the class it extends.
try:
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping

    _renames = get_checkpoint_conversion_mapping("{base}") or get_checkpoint_conversion_mapping("{model_type}")
    if _renames:
        register_checkpoint_conversion_mapping("{name}", _renames, overwrite=True)
except ImportError:  # older transformers: no conversion registry, nothing to rename
    pass


class {name}(transformers.{base}):
    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        rebuild_pruned_shapes(self, getattr(config, "{key}", None) or {{}})
        rebuild_layer_configs(self, getattr(config, "{key}", None) or {{}})
        rebuild_factored(self, getattr(config, "{factored_key}", None) or {{}})
'''


def layer_shapes(adapter: Adapter) -> list[dict[str, int]]:
    return [adapter.layer_shape(i) for i in range(adapter.num_layers())]


def sync_config_shapes(adapter: Adapter) -> str:
    """Rewrite ``adapter``'s config for the model's current layer shapes; ``"stock"`` or ``"per-layer"``."""
    config = adapter.config
    shapes = layer_shapes(adapter)
    uniform = all(shape == shapes[0] for shape in shapes)
    fields = adapter.stock_shape_fields(**shapes[0]) if uniform and shapes else None
    if fields is not None:
        for key, value in fields.items():
            setattr(config, key, value)
        if hasattr(config, SHAPES_KEY):
            delattr(config, SHAPES_KEY)
        auto_map = dict(getattr(config, "auto_map", None) or {})
        if auto_map.get("AutoModelForCausalLM", "").startswith("modeling_prunekit.") and not needs_remote_code(config):
            del auto_map["AutoModelForCausalLM"]
            config.auto_map = auto_map or None
        return "stock"
    linears, attributes, parameters, configs = {}, {}, {}, {}
    for index, shape in enumerate(shapes):
        for view in adapter.linears(index):
            if view.expert is not None:  # routed experts keep the width the config gives them
                continue
            module = view.module
            linears[view.name] = {"class": "Conv1D" if view.transposed else "Linear", "out": view.out_features,
                                  "in": view.in_features, "bias": getattr(module, "bias", None) is not None}
        prefix = adapter.layer_prefix(index)
        for path, value in adapter.head_attributes(shape["heads"], shape["kv_heads"]).items():
            attributes[f"{prefix}.{path}"] = value
        for path, fields in adapter.head_config_fields(shape["heads"], shape["kv_heads"]).items():
            configs[f"{prefix}.{path}"] = fields
        layer = adapter.decoder_layers()[index]
        for path in adapter.head_companions():
            owner, _, name = path.rpartition(".")
            parameters[f"{prefix}.{path}"] = list(getattr(layer.get_submodule(owner) if owner else layer, name).shape)
    spec = {"linears": linears, "attributes": attributes}
    if parameters:
        spec["parameters"] = parameters
    if configs:
        spec["configs"] = configs
    setattr(config, SHAPES_KEY, spec)
    require_remote_class(adapter)
    return "per-layer"


def _stock_class(model) -> str:
    """The transformers class a (possibly already prunekit-rebuilt) model derives from."""
    import transformers

    for cls in type(model).__mro__:
        if not cls.__name__.startswith("Prunekit") and getattr(transformers, cls.__name__, None) is cls:
            return cls.__name__
    raise TypeError(f"{type(model).__name__} does not derive from a transformers model class")


def _remote_class(adapter: Adapter) -> str:
    return "Prunekit" + _stock_class(adapter.model)


def has_per_layer_shapes(config) -> bool:
    return getattr(config, SHAPES_KEY, None) is not None


def needs_remote_code(config) -> bool:
    """Per-layer shapes or factored low-rank maps: the stock class cannot build the checkpoint."""
    return has_per_layer_shapes(config) or bool(getattr(config, FACTORED_KEY, None))


def require_remote_class(adapter: Adapter) -> None:
    """Point the config's ``auto_map`` at ``modeling_prunekit.py`` (written by the saver)."""
    auto_map = dict(getattr(adapter.config, "auto_map", None) or {})
    auto_map["AutoModelForCausalLM"] = f"modeling_prunekit.{_remote_class(adapter)}"
    adapter.config.auto_map = auto_map


def remote_code_text(base: str, model_type: str) -> str:
    """The ``modeling_prunekit.py`` source for a model deriving from ``transformers.<base>``."""
    import inspect

    from ..models.adapters.layer_config import LayerConfig

    return _REMOTE_CODE.format(name="Prunekit" + base, base=base, model_type=model_type, key=SHAPES_KEY,
                               factored_key=FACTORED_KEY, layer_config_class=inspect.getsource(LayerConfig).rstrip())


def write_remote_code(model, directory: Path) -> None:
    """Write ``modeling_prunekit.py`` beside a per-layer-shaped checkpoint."""
    (directory / REMOTE_FILE).write_text(remote_code_text(_stock_class(model), model.config.model_type))
