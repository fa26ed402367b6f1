"""The adapter contract: how methods see a model without knowing its architecture.

A method asks an adapter for the decoder layers and, inside a layer, for the linear maps by
*role* (``q, k, v, o, gate, up, down, fc1, fc2``). Fused projections (GPT-NeoX
``query_key_value``, GPT-2 ``c_attn``) appear as one :class:`LinearView` carrying several roles,
with the rows of each role recorded, so unstructured methods treat them as one matrix and
structured methods can still find a head's q/k/v rows.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ...allocator import file_backed, release_pages
from ...errors import ArgumentError

ALL_ROLES: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down", "fc1", "fc2")
# a mixture-of-experts router (and a shared expert's scalar gate): never pruned unless named
ROUTER_ROLE = "router"
# attributes of an embedding / linear that state the width of its weight's per-layer axis
TABLE_WIDTH_ATTRIBUTES = ("embedding_dim", "out_features")


@dataclass
class LinearView:
    """A linear map ``y = W x`` inside a decoder layer, seen as ``W ∈ R^{out×in}``.

    ``transposed`` is set for GPT-2's ``Conv1D`` which stores ``W`` as ``in×out``; the view hides
    that so every method works on ``out×in``. ``input_group`` names the tensor the map reads:
    maps in one group see the same input (q/k/v read the attention input), so calibration
    statistics are collected once per group.

    One expert's matrix inside a fused 3-D MoE parameter is a view too: ``module`` is the experts
    module, ``parameter_name`` its ``[experts, ·, ·]`` parameter and ``expert`` the slice; its input
    is caught by an :class:`~prunekit.models.adapters.experts.ExpertTap` (:meth:`hook_input`).
    """

    name: str  # qualified module name within the whole model, e.g. "model.layers.3.self_attn.q_proj"
    local_name: str  # name within the decoder layer, e.g. "self_attn.q_proj" (an expert: "mlp.experts.down_proj.5")
    roles: tuple[str, ...]
    module: nn.Module
    input_group: str
    transposed: bool = False
    role_rows: dict[str, torch.Tensor] = field(default_factory=dict)
    parameter_name: str | None = None
    expert: int | None = None

    @property
    def parameter(self) -> nn.Parameter:
        """The stored parameter (for an expert view, the whole fused ``[experts, ·, ·]`` one)."""
        return getattr(self.module, self.parameter_name) if self.parameter_name else self.module.weight

    def _stored(self) -> torch.Tensor:
        """The weight as the module stores it (an expert view: its slice of the fused parameter)."""
        return self.module.weight.data if self.expert is None else self.parameter.data[self.expert]

    @property
    def weight(self) -> torch.Tensor:
        """The weight as ``out×in`` (a view; writes go to the module's parameter)."""
        w = self._stored()
        return w.t() if self.transposed else w

    def set_weight(self, new_weight: torch.Tensor) -> None:
        """Write an ``out×in`` weight back in the module's own layout and dtype."""
        self.require_writable("rewrite its weight")
        target = self._stored()
        value = new_weight.t() if self.transposed else new_weight
        if value.shape != target.shape:
            raise ValueError(f"{self.name}: weight shape {tuple(value.shape)} != {tuple(target.shape)}")
        if self.expert is not None or not file_backed(target):  # in place (an expert: its slice of the fused parameter)
            target.copy_(value.to(dtype=target.dtype, device=target.device))
            return
        # a weight of a memory-mapped checkpoint: new memory, and the old pages handed back — writing
        # into it would copy it a page at a time (see prunekit.allocator)
        self.module.weight.data = value.to(dtype=target.dtype, device=target.device,
                                           memory_format=torch.contiguous_format, copy=True)
        release_pages(target)

    def require_writable(self, action: str) -> None:
        """Refuse to change a map stored as low-rank factors: its ``weight`` is a computed product."""
        if not isinstance(self.parameter, nn.Parameter):
            raise ArgumentError(f"{self.name} is stored as low-rank factors; a later step cannot {action}")

    def hook_input(self, callback) -> Any:
        """Call ``callback(x)`` with what this map reads on every forward; returns a removable handle."""
        if self.expert is None:
            return self.module.register_forward_pre_hook(lambda _m, args: callback(args[0]))
        from .experts import ExpertTap

        return ExpertTap.on(self.module).add(self.parameter, self.expert, callback)

    def module_path(self) -> str:
        """Local path of the module holding the weight (an expert view: the experts module)."""
        return self.local_name.rsplit(".", 2)[0] if self.expert is not None else self.local_name

    def on(self, layer: nn.Module) -> "LinearView":
        """The same map in another instance (a copy) of its decoder layer."""
        return dataclasses.replace(self, module=layer.get_submodule(self.module_path()))

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]


def views_by_input_group(views: list[LinearView]) -> list[list[LinearView]]:
    """``views`` grouped by the input they read, groups and members in data-flow order."""
    groups: dict[str, list[LinearView]] = {}
    for view in views:
        groups.setdefault(view.input_group, []).append(view)
    return list(groups.values())


class Adapter:
    """Base class of one architecture family.

    Subclasses set ``model_types`` (the ``config.model_type`` values they serve), ``layers_path``
    (dotted path of the decoder ``ModuleList``) and implement :meth:`linear_specs` — the
    linears of one layer in data-flow order.
    """

    family: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()
    layers_path: ClassVar[str] = ""
    # input group -> local names of the maps whose output rows *are* that input's channels, for
    # groups whose channels may be permuted without changing the function (the MLP intermediate).
    channel_producers: ClassVar[dict[str, tuple[str, ...]]] = {}
    depth_key: ClassVar[str] = "num_hidden_layers"  # the config field holding the number of layers
    prunable: ClassVar[bool] = True  # False for the role-less adapter that serves evaluation only
    width_prunable: ClassVar[bool] = True  # False where the coupling of heads and channels is not known
    streamable: ClassVar[bool] = True  # False where finding the maps needs the whole model in memory

    def __init__(self, model: nn.Module):
        self.model = model
        self.config = model.config

    # ---- layers -------------------------------------------------------------------------
    def decoder_layers(self) -> nn.ModuleList:
        module: nn.Module = self.model
        for part in self.layers_path.split("."):
            module = getattr(module, part)
        return module  # type: ignore[return-value]

    def num_layers(self) -> int:
        return len(self.decoder_layers())

    def layer_prefix(self, index: int) -> str:
        return f"{self.layers_path}.{index}"

    # ---- roles --------------------------------------------------------------------------
    def linear_specs(self) -> list[tuple[str, tuple[str, ...], str]]:
        """``(local module name, roles, input group)`` for each linear of a layer, data-flow order."""
        raise NotImplementedError

    def linears(self, index: int) -> list[LinearView]:
        """The linear maps of decoder layer ``index`` as views, in data-flow order."""
        layer = self.decoder_layers()[index]
        views = []
        for local_name, roles, group in self.linear_specs():
            module = layer.get_submodule(local_name)
            views.append(
                LinearView(
                    name=f"{self.layer_prefix(index)}.{local_name}",
                    local_name=local_name,
                    roles=roles,
                    module=module,
                    input_group=group,
                    transposed=self.is_transposed(module),
                    role_rows=self.role_rows(local_name, module),
                )
            )
        return views

    def producers_of(self, index: int, input_group: str) -> list[LinearView] | None:
        """The maps producing ``input_group``'s channels in layer ``index`` (None if not permutable)."""
        names = self.channel_producers.get(input_group)
        if not names:
            return None
        return [view for view in self.linears(index) if view.local_name in names]

    def roles(self) -> tuple[str, ...]:
        """Every role this family names, in data-flow order."""
        seen: list[str] = []
        for _, roles, _ in self.linear_specs():
            seen.extend(r for r in roles if r not in seen)
        return tuple(seen)

    def is_transposed(self, module: nn.Module) -> bool:
        return False

    def role_rows(self, local_name: str, module: nn.Module) -> dict[str, torch.Tensor]:
        """Rows of each role inside a fused projection; empty for single-role maps."""
        return {}

    def describe(self) -> dict | None:
        """What an adapter found by observing the model, for ``prunekit.json``; None for a family
        adapter, whose structure is its source code."""
        return None

    def norm_names(self) -> tuple[str, ...]:
        """Local names of the normalisation modules in a layer."""
        return ()

    def norms(self, index: int) -> dict[str, nn.Module]:
        layer = self.decoder_layers()[index]
        return {name: layer.get_submodule(name) for name in self.norm_names()}

    # ---- width: coupled units ----------------------------------------------------------
    def unit_groups(self, index: int, head_grouping: str = "kv") -> dict[str, Any]:
        """The attention-head and MLP-channel unit groups of layer ``index`` (see ``units.py``)."""
        from .units import channel_group, head_group

        views = self.linears(index)
        producers = self.channel_producers.get("mlp_mid", ())
        return {"heads": head_group(views, index, self.head_dim, head_grouping),
                "channels": channel_group(views, index, producers, "mlp_mid")}

    def layer_shape(self, index: int) -> dict[str, int]:
        """Current query heads, KV heads and MLP channels of layer ``index`` (read from the weights)."""
        groups = self.unit_groups(index)
        heads = groups["heads"]
        q_member = next(m for m in heads.members if m.role == "q")
        return {"heads": q_member.index.numel() // self.head_dim, "kv_heads": heads.units,
                "channels": groups["channels"].units}

    def head_companions(self) -> dict[str, str]:
        """Per-head tensors beside the q/k/v maps (dotted local path -> the role whose rows they
        follow): OLMo-2's full-width ``q_norm``/``k_norm`` weights (one entry per q or k row), GPT-OSS-style
        attention ``sinks`` (one entry per query head). Removing heads slices them alike."""
        return {}

    def head_attributes(self, heads: int, kv_heads: int) -> dict[str, int]:
        """Attributes of a layer's attention module (dotted local path -> value) that must follow
        its head count after heads are removed; empty where the forward derives them from shapes."""
        return {}

    def head_config_fields(self, heads: int, kv_heads: int) -> dict[str, dict[str, int]]:
        """Config fields a layer's module reads its head count from (dotted local path of the module
        -> fields): Phi-3's attention splits its fused q/k/v at ``config.num_attention_heads``.
        Removing heads gives that module its own values over the shared config
        (``layer_config.py``); empty where the forward reads module attributes or shapes."""
        return {}

    def stock_shape_fields(self, heads: int, kv_heads: int, channels: int) -> dict[str, int] | None:
        """Config fields that make the stock model class build these shapes in *every* layer, or
        None when the family's config cannot express them (e.g. head_dim derived from hidden/heads)."""
        return None

    # ---- depth --------------------------------------------------------------------------
    def keep_layers(self, kept: list[int], verify: bool = True) -> None:
        """Keep only the decoder layers ``kept`` (in order): renumber them and rewrite the config.

        Layers carry their index for the attention cache (``layer_idx``/``layer_id``); every per-layer
        config field follows the kept layers (``surgery/depth_config.py``), and with ``verify`` the
        new config is proven to rebuild exactly the kept layers before anything changes (a
        temporary removal, undone afterwards, skips that proof).
        """
        from ...surgery.depth_config import config_after_cut, cut_fields

        shared = getattr(self.config, "num_kv_shared_layers", 0) or 0
        if shared and len(kept) < self.num_layers():
            raise ArgumentError(
                f"the last {shared} decoder layers reuse the key/value cache of earlier layers chosen by position "
                "(num_kv_shared_layers, Gemma-3n/4): removing layers would change which cache each reads; "
                "depth removal is not supported on such a model")
        layers = self.decoder_layers()
        family = self.depth_updates(kept)
        if verify:
            updates = config_after_cut(self.model, self.config, list(layers), kept, self.depth_key, self.layers_path,
                                       family)
        else:
            updates = {**cut_fields(self.config, kept, len(layers), self.depth_key), **family}
        new = type(layers)([layers[i] for i in kept])
        parent_path, _, attr = self.layers_path.rpartition(".")
        setattr(self.model.get_submodule(parent_path), attr, new)
        for new_index, layer in enumerate(new):
            for module in layer.modules():
                for name in ("layer_idx", "layer_id"):
                    if isinstance(getattr(module, name, None), int):
                        setattr(module, name, new_index)
        for key, value in updates.items():
            setattr(self.config, key, value)
        self._cut_per_layer_tables(kept, len(layers))

    def per_layer_tables(self) -> list[tuple[nn.Module, int]]:
        """Model-level tensors that hold a slice per decoder layer (Gemma-3n/4's per-layer token
        inputs: ``embed_tokens_per_layer`` columns and ``per_layer_model_projection`` rows, each
        ``hidden_size_per_layer_input`` wide per layer), with the axis the slices lie along."""
        if not getattr(self.config, "hidden_size_per_layer_input", 0):
            return []
        parent = self.model.get_submodule(self.layers_path.rpartition(".")[0])
        tables = [(getattr(parent, name, None), axis) for name, axis in
                  (("embed_tokens_per_layer", 1), ("per_layer_model_projection", 0))]
        return [(module, axis) for module, axis in tables if module is not None]

    def _cut_per_layer_tables(self, kept: list[int], old: int) -> None:
        for module, axis in self.per_layer_tables():
            width = module.weight.shape[axis] // old
            index = torch.cat([torch.arange(i * width, (i + 1) * width) for i in kept]).to(module.weight.device)
            module.weight = nn.Parameter(module.weight.detach().index_select(axis, index),
                                         requires_grad=module.weight.requires_grad)
            for name in TABLE_WIDTH_ATTRIBUTES:
                if hasattr(module, name):
                    setattr(module, name, module.weight.shape[axis])

    def depth_updates(self, kept: list[int]) -> dict[str, Any]:
        """Config fields a family encodes per layer in its own way (beyond lists, index lists and a
        dense prefix), for the layers ``kept``."""
        return {}

    # ---- shapes -------------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @property
    def num_heads(self) -> int:
        return int(self.config.num_attention_heads)

    @property
    def num_kv_heads(self) -> int:
        return int(getattr(self.config, "num_key_value_heads", None) or self.num_heads)

    @property
    def head_dim(self) -> int:
        return int(getattr(self.config, "head_dim", None) or self.hidden_size // self.num_heads)

    @property
    def max_context(self) -> int:
        for key in ("max_position_embeddings", "n_positions", "n_ctx"):
            value = getattr(self.config, key, None)
            if value:
                return int(value)
        return 2048
