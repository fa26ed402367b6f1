"""The structural fallback: an adapter found from the model itself, for types without a family file.

Mask methods (magnitude, Wanda, SparseGPT, RIA, FISTA) and depth removal need to know, per decoder
layer, its linear maps in data-flow order and which of them read the same tensor (one set of
calibration statistics per shared input). Both can be *observed*: one probe forward of a few
tokens with a pre-hook on every linear map of the decoder layers records the order the maps run in
and the tensor each reads. Roles are then read from the maps' names where a name says it
(``q_proj`` → q, ``down_proj`` → down, a map with one output per expert → router); a map whose name
says nothing keeps its own name as its role, so ``--roles`` can still select it.

What observation cannot give is the coupling that structured width pruning needs (which rows of
which maps make one head, which maps produce and consume an MLP channel, how the config must
change): width methods refuse this adapter. MoE experts stored as fused 3-D parameters rather than
linear maps are not seen here (they are listed as such in :meth:`describe`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from ...errors import UnsupportedArchitectureError
from .base import ROUTER_ROLE, LinearView
from .experts import ExpertTap, expert_count, expert_modules, expert_parameters
from .generic import GenericAdapter

PROBE_TOKENS = 16
# layer kinds that are not attention: recurrent, state-space, convolution or linear-attention blocks
NON_ATTENTION_LAYER_TYPES = {"linear_attention", "hybrid", "hybrid_sliding", "conv", "mamba", "recurrent"}
STATE_SPACE_KEYS = ("state_size", "ssm_state_size", "mamba_d_state", "conv_L_cache", "rescale_every")
# HRM cycles two small stacks many times per token (its 24 "layers" are 2 stacks x cycles)
RECURRENT_MODEL_TYPES = {"rwkv", "xlstm", "mamba", "mamba2", "falcon_mamba", "lfm2", "lfm2_moe", "hrm_text"}


def unprunable_reason(config) -> str | None:
    """Why the structural fallback cannot prune a decoder-only model type, or None.

    Its maps are found by role inside attention + MLP layers and its depth is cut in whole layers;
    recurrent, state-space and hybrid models (Mamba, RWKV, Jamba, Zamba, Falcon-H1, Nemotron-H,
    LFM2, Qwen3-Next, ...) carry state through layers whose maps play other parts.
    """
    layer_types = getattr(config, "layer_types", None)
    kinds = sorted({str(t) for t in layer_types} & NON_ATTENTION_LAYER_TYPES) if isinstance(layer_types, (list, tuple)) else []
    keys = [key for key in STATE_SPACE_KEYS if getattr(config, key, None) is not None]
    if kinds or keys or getattr(config, "model_type", None) in RECURRENT_MODEL_TYPES:
        what = f"layer_types {', '.join(kinds)}" if kinds else (f"config {', '.join(keys)}" if keys else "recurrent layers")
        return (f"a recurrent / state-space / hybrid model ({what}); prunekit prunes decoder layers built of "
                "attention and MLP maps")
    return None

# leaf name -> role(s); the first table whose pattern matches wins
_NAME_ROLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (r"(q_proj|query|wq|q_lin|q|q_a_proj|q_b_proj)", ("q",)),
    (r"(k_proj|key|wk|k_lin|k)", ("k",)),
    (r"(v_proj|value|wv|v_lin|v)", ("v",)),
    (r"(query_key_value|qkv_proj|qkv|c_attn|wqkv|w_pack)", ("q", "k", "v")),
    (r"(kv_a_proj_with_mqa|kv_b_proj|kv_proj)", ("k", "v")),
    (r"(gate_up_proj|w13)", ("gate", "up")),
    (r"(gate_proj|w1|gate)", ("gate",)),
    (r"(up_proj|w3|up)", ("up",)),
    (r"(down_proj|w2|down)", ("down",)),
    (r"(fc1|c_fc|fc_in|dense_h_to_4h|linear_1|wi|ffn_up|up_layer)", ("fc1",)),
    (r"(fc2|fc_out|dense_4h_to_h|linear_2|ffn_down|down_layer)", ("fc2",)),
)
_ATTENTION_OUTPUT = re.compile(r"(o_proj|out_proj|c_proj|dense|wo|out_lin|o)")
_MLP_OUTPUT = re.compile(r"(c_proj|dense|wo|out_proj)")


def _is_conv1d(module: nn.Module) -> bool:
    """transformers' ``Conv1D`` (GPT-2 style): a linear map stored in×out."""
    return type(module).__name__ == "Conv1D"


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or _is_conv1d(module)


def _experts_path(local_name: str) -> str:
    """``mlp.experts.down_proj.5`` -> ``mlp.experts``: the module holding an expert's fused parameter."""
    return local_name.rsplit(".", 2)[0]


def infer_roles(local_name: str, out_features: int, experts: int | None) -> tuple[str, ...]:
    """Roles of a map from its name inside the decoder layer (``self_attn.q_proj`` → ``("q",)``).

    A map producing one value per expert (or a single gating scalar, like Qwen-MoE's
    ``shared_expert_gate``) inside a mixture-of-experts block is a router: role ``router``.
    """
    parts = local_name.lower().split(".")
    leaf, parents = parts[-1], parts[:-1]
    in_moe = any(p in ("experts", "moe", "block_sparse_moe", "mlp", "feed_forward", "ffn") for p in parents)
    if experts and in_moe and (out_features == experts or (out_features == 1 and "gate" in leaf)):
        return (ROUTER_ROLE,)
    if "router" in leaf or leaf == "gating" or (experts and any("router" in p for p in parents)):
        return (ROUTER_ROLE,)
    in_attention = any("attn" in p or "attention" in p for p in parents)
    if in_attention and _ATTENTION_OUTPUT.fullmatch(leaf):
        return ("o",)
    for pattern, roles in _NAME_ROLES:
        if re.fullmatch(pattern, leaf):
            if roles[0] in ("q", "k", "v") and not in_attention and len(roles) == 1:
                break  # a lone "q"/"k"/"v" outside attention says nothing
            return roles
    if not in_attention and _MLP_OUTPUT.fullmatch(leaf):
        return ("fc2",)
    return (leaf,)


@dataclass
class _ProbedMap:
    local_name: str
    group: str
    reached: bool
    roles: tuple[str, ...]
    parameter_name: str | None = None  # an expert's slice of a fused [experts, ·, ·] parameter
    expert: int | None = None
    transposed: bool = False


class StructuralAdapter(GenericAdapter):
    """Decoder layers and their linear maps as observed in one probe forward (see module doc)."""

    family = "structural"
    prunable = True
    width_prunable = False
    streamable = False  # the probe runs the whole model

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.decoder_layers()  # pruning needs the layers: a model whose layers were not found stops here
        self._probed: list[list[_ProbedMap]] | None = None

    # ---- the probe -------------------------------------------------------------------------
    def _probe(self) -> list[list[_ProbedMap]]:
        """Run the model once on a few tokens; per layer, its linear maps (and MoE experts' slices
        of fused parameters) in the order they ran, each with the input it shares with others."""
        if self._probed is not None:
            return self._probed
        layers = self.decoder_layers()
        experts = expert_count(self.config)
        calls: list[list[tuple[str, torch.Tensor]]] = [[] for _ in layers]
        orientation: dict[str, bool] = {}  # "path.parameter" -> stored in×out
        handles = []
        for index, layer in enumerate(layers):
            for name, module in layer.named_modules():
                if _is_linear(module):
                    handles.append(module.register_forward_pre_hook(
                        lambda _m, args, i=index, n=name: calls[i].append((n, args[0]))))
            for path, module in expert_modules(layer, experts).items():
                for pname, parameter in expert_parameters(module, experts).items():
                    def seen(call, i=index, key=f"{path}.{pname}"):
                        orientation[key] = call.stored_in_by_out
                        calls[i].append((f"{key}.{call.expert}", call.raw))
                    handles.append(ExpertTap.on(module).add(parameter, None, seen))
        vocab = int(getattr(self.config, "vocab_size", 0) or 0) or 256
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(0, min(vocab, 1024), (1, PROBE_TOKENS), generator=generator)
        device = next(self.model.parameters()).device
        try:
            with torch.inference_mode():
                self.model(input_ids=ids.to(device), use_cache=False)
        except Exception as exc:  # noqa: BLE001 - any failure means the structure cannot be observed
            raise UnsupportedArchitectureError(
                f"model type '{getattr(self.model.config, 'model_type', '?')}': the probe forward that finds its "
                f"linear maps failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})"
            ) from exc
        finally:
            for handle in handles:
                handle.remove()
        self._probed = [self._layer_maps(layer, calls[i], orientation, experts) for i, layer in enumerate(layers)]
        return self._probed

    def _layer_maps(self, layer: nn.Module, calls: list[tuple[str, torch.Tensor]], orientation: dict[str, bool],
                    experts: int | None) -> list[_ProbedMap]:
        """One layer's maps in call order, grouped by the tensor they read. Every expert of a fused
        parameter gets a map, reached or not (an expert the probe's tokens missed is still pruned,
        from its own calibration tokens); its input group follows the pattern of the experts seen."""
        group_of: dict[str, str] = {}
        inputs: list[torch.Tensor] = []  # kept alive, so a storage address names one tensor
        order: list[str] = []
        for name, x in calls:
            if name in group_of:
                continue
            key = next((g for g, other in enumerate(inputs) if other.data_ptr() == x.data_ptr()
                        and other.shape == x.shape and other.stride() == x.stride()), None)
            if key is None:
                inputs.append(x)
                key = len(inputs) - 1
            group_of[name] = f"in{key}"
            order.append(name)
        fused = {path: expert_parameters(module, experts) for path, module in expert_modules(layer, experts).items()}
        maps: list[_ProbedMap] = []
        placed: set[str] = set()
        for name in order:
            path_parameter = name.rsplit(".", 1)[0]
            path = path_parameter.rsplit(".", 1)[0]
            if path in fused and path_parameter.rsplit(".", 1)[1] in fused[path]:
                if path not in placed:  # every expert of this module, expert by expert, where it first ran
                    placed.add(path)
                    maps.extend(self._expert_maps(path, fused[path], group_of, orientation))
                continue
            maps.append(_ProbedMap(name, group_of[name], True, self._linear_roles(layer, name, experts)))
        for path, parameters in fused.items():
            if path not in placed:
                maps.extend(self._expert_maps(path, parameters, group_of, orientation))
        for name, module in layer.named_modules():
            if _is_linear(module) and name not in group_of:
                maps.append(_ProbedMap(name, f"unreached:{name}", False, self._linear_roles(layer, name, experts)))
        return maps

    @staticmethod
    def _linear_roles(layer: nn.Module, name: str, experts: int | None) -> tuple[str, ...]:
        module = layer.get_submodule(name)
        return infer_roles(name, module.weight.shape[1 if _is_conv1d(module) else 0], experts)

    def _expert_maps(self, path: str, parameters: dict[str, nn.Parameter], group_of: dict[str, str],
                     orientation: dict[str, bool]) -> list[_ProbedMap]:
        count = next(iter(parameters.values())).shape[0]
        seen_expert = next((e for e in range(count) if all(f"{path}.{p}.{e}" in group_of for p in parameters)), None)
        slots: dict[str, int] = {}  # parameters reading one tensor share a slot (gate and up as two tensors)
        for pname in parameters:
            group = group_of.get(f"{path}.{pname}.{seen_expert}") if seen_expert is not None else None
            shared = next((q for q in slots if group is not None and group_of.get(f"{path}.{q}.{seen_expert}") == group), None)
            slots[pname] = slots[shared] if shared is not None else len(set(slots.values()))
        # a parameter named "weight" is named by its module (JetMoE's input_linear / output_linear)
        roles = {p: infer_roles(p if p != "weight" else path.rsplit(".", 1)[-1], 0, None) for p in parameters}
        maps = []
        for expert in range(count):
            for pname, parameter in parameters.items():
                key = f"{path}.{pname}"
                in_by_out = orientation.get(key, parameter.shape[1] == self.hidden_size != parameter.shape[2])
                maps.append(_ProbedMap(f"{key}.{expert}", f"{path}.e{expert}.in{slots[pname]}",
                                       f"{key}.{expert}" in group_of, roles[pname], pname, expert, in_by_out))
        return maps

    # ---- the adapter contract ---------------------------------------------------------------
    def linear_specs(self) -> list[tuple[str, tuple[str, ...], str]]:
        return [(entry.local_name, entry.roles, entry.group) for entry in self._probe()[0]]

    def linears(self, index: int) -> list[LinearView]:
        layer = self.decoder_layers()[index]
        views = []
        for entry in self._probe()[index]:
            if entry.expert is not None:
                module, transposed = layer.get_submodule(_experts_path(entry.local_name)), entry.transposed
            else:
                module = layer.get_submodule(entry.local_name)
                transposed = _is_conv1d(module)
            views.append(LinearView(name=f"{self.layer_prefix(index)}.{entry.local_name}", local_name=entry.local_name,
                                    roles=entry.roles, module=module, input_group=entry.group, transposed=transposed,
                                    parameter_name=entry.parameter_name, expert=entry.expert))
        return views

    def roles(self) -> tuple[str, ...]:
        seen: list[str] = []
        for layer in self._probe():
            for entry in layer:
                seen.extend(r for r in entry.roles if r not in seen)
        return tuple(seen)

    def keep_layers(self, kept: list[int], verify: bool = True) -> None:
        super().keep_layers(kept, verify)
        if self._probed is not None:
            self._probed = [self._probed[i] for i in kept]

    def describe(self) -> dict:
        """What the probe found, for the log and ``prunekit.json``: layers, the maps of layer 0 with
        their roles and input groups (experts summarised), the roles, and maps the probe did not
        reach (an expert no probe token was routed to is listed, yet pruned from its own tokens)."""
        unreached = [f"{self.layer_prefix(i)}.{e.local_name}" for i, layer in enumerate(self._probe())
                     for e in layer if not e.reached]
        first, experts = [], {}
        for entry in self._probe()[0]:
            if entry.expert is None:
                first.append({"map": entry.local_name, "roles": list(entry.roles), "input": entry.group})
                continue
            info = experts.setdefault(_experts_path(entry.local_name), {"experts": 0, "parameters": {}})
            info["experts"] = max(info["experts"], entry.expert + 1)
            info["parameters"][entry.parameter_name] = {"roles": list(entry.roles),
                                                        "stored": "in x out" if entry.transposed else "out x in"}
        return {"layers_path": self.layers_path, "layers": self.num_layers(), "depth_key": self.depth_key,
                "layer0": first, "layer0_experts": experts, "roles": list(self.roles()), "unreached": unreached}
