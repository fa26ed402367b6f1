"""Mixture-of-experts matrices stored as fused 3-D parameters, seen one expert at a time.

transformers keeps most MoE experts as ``experts.gate_up_proj [E, 2I, H]`` and
``experts.down_proj [E, H, I]`` (or transposed, ``[E, H, 2I]``, for gpt-oss and Llama-4) and runs
them with ``F.linear``/``@``/``bmm`` on slices, not through ``nn.Linear`` modules, so forward hooks
cannot see what each expert reads. An :class:`ExpertTap` on the experts module runs its forward
inside a :class:`~torch.overrides.TorchFunctionMode` that recognises a weight argument as expert
``e``'s slice of a registered parameter (by its storage address) and hands that call's input to
the callbacks of ``(parameter, e)`` — only the tokens routed to that expert.

While a tap is active the module runs its *eager* per-expert loop (the function the
``use_experts_implementation`` decorator wraps), whatever fused kernel the config selects.

Routing weights: an expert's output enters the residual stream scaled by its router weight, so
its error does too. When the module's arguments carry the top-k indices and weights, each row an
expert reads is matched (by an exact hash of its bits) to its token and scaled by that token's
weight for the expert, and the expert's later maps (``down`` after ``gate_up``) reuse the scale.
Where the module itself feeds pre-scaled inputs (Llama-4) no row matches and none is scaled.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .generic import text_config

_MATMULS = {torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.mm, torch.Tensor.mm}
_BATCHED = {torch.bmm, torch.Tensor.bmm}
_LINEAR = {torch.nn.functional.linear}

Callback = Callable[[torch.Tensor], None]
EXPERT_COUNT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
TOP_K_KEYS = ("num_experts_per_tok", "moe_topk", "top_k", "num_selected_experts")


def expert_count(config) -> int | None:
    """Routed experts per MoE layer as the config declares them (None for a dense model, also one
    whose config says ``is_moe: false`` or ``enable_moe_block: false`` beside an expert count, as
    Doge's and Gemma-4's defaults do)."""
    config = text_config(config)
    if getattr(config, "is_moe", None) is False or getattr(config, "enable_moe_block", None) is False:
        return None
    return next((getattr(config, k) for k in EXPERT_COUNT_KEYS if isinstance(getattr(config, k, None), int)
                 and getattr(config, k) > 1), None)


def experts_per_token(config) -> int | None:
    """How many experts each token is routed to (top-k), where the config says."""
    config = text_config(config)
    value = next((getattr(config, k) for k in TOP_K_KEYS if isinstance(getattr(config, k, None), int)), None)
    return value if isinstance(value, int) and value > 0 else None


@dataclass
class SliceCall:
    """One use of an expert's matrix seen in a forward: the input and how the weight was read."""

    parameter: nn.Parameter
    expert: int
    x: torch.Tensor  # the rows the expert reads, scaled by their router weights where known
    stored_in_by_out: bool  # the slice is stored in×out (the forward computes x @ W)
    raw: torch.Tensor | None = None  # the tensor as the forward passed it (unscaled, same storage)


def expert_parameters(module: nn.Module, experts: int) -> dict[str, nn.Parameter]:
    """The module's own 3-D parameters with one matrix per expert (``[experts, a, b]``)."""
    return {name: p for name, p in module.named_parameters(recurse=False) if p.dim() == 3 and p.shape[0] == experts}


def expert_modules(layer: nn.Module, experts: int | None) -> dict[str, nn.Module]:
    """Local path -> module, for every module of ``layer`` holding fused expert parameters."""
    if not experts:
        return {}
    return {name: module for name, module in layer.named_modules() if expert_parameters(module, experts)}


def _slice_of(weight: torch.Tensor, parameters: list[nn.Parameter]) -> tuple[nn.Parameter, int | None, bool] | None:
    """``(parameter, expert, is_transposed_view)`` when ``weight`` is one expert's slice (or, expert
    None, the whole stacked parameter) of one of ``parameters``; None otherwise."""
    if not isinstance(weight, torch.Tensor) or weight.dim() not in (2, 3):
        return None
    pointer = weight.data_ptr()
    for parameter in parameters:
        base, size = parameter.data_ptr(), parameter.element_size()
        if not base <= pointer < base + parameter.numel() * size:
            continue
        if weight.dim() == 3:
            return (parameter, None, weight.stride()[1:] != parameter.stride()[1:]) if pointer == base else None
        offset = (pointer - base) // size
        expert, within = divmod(offset, parameter.stride(0))
        if within or tuple(sorted(weight.shape)) != tuple(sorted(parameter.shape[1:])):
            return None
        return parameter, expert, weight.stride() != parameter.stride()[1:]
    return None


def _row_keys(rows: torch.Tensor) -> torch.Tensor:
    """An exact, order-free hash of each row's bits (a gathered copy of a row hashes the same)."""
    bits = rows.detach().contiguous()
    bits = bits.view(torch.int32) if bits.element_size() == 4 else bits.view(torch.int16)
    bits = bits.reshape(rows.shape[0], -1).to(torch.int64)
    multipliers = torch.arange(1, bits.shape[1] + 1, dtype=torch.int64, device=bits.device) * 2654435761 % 1000003
    return (bits * multipliers).sum(-1) + (bits * bits).sum(-1) * 1000033


class _Routing:
    """Top-k indices and weights of one experts-module call, to scale each expert's rows."""

    def __init__(self, args: tuple, kwargs: dict):
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        self.hidden = tensors[0] if tensors else None
        self.indices = next((t for t in tensors[1:] if t.dim() == 2 and not t.is_floating_point()), None)
        self.weights = next((t for t in tensors[1:] if self.indices is not None and t.is_floating_point()
                             and t.shape == self.indices.shape), None)
        self._keys: dict[int, int] | None = None
        self.scales: dict[int, torch.Tensor] = {}  # expert -> per-row scale of its current rows

    def scale_for(self, expert: int, x: torch.Tensor) -> torch.Tensor | None:
        """Per-row router weights of the rows ``x`` expert ``expert`` reads (None if unknown)."""
        rows = x.reshape(-1, x.shape[-1])
        known = self.scales.get(expert)
        if known is not None and known.shape[0] == rows.shape[0]:
            return known  # a later map of the same expert: the same tokens in the same order
        if self.weights is None or self.hidden is None or rows.shape[-1] != self.hidden.shape[-1]:
            return None
        hidden = self.hidden.reshape(-1, self.hidden.shape[-1])
        if self._keys is None:
            self._keys = {int(k): i for i, k in enumerate(_row_keys(hidden).tolist())}
        tokens = [self._keys.get(int(k)) for k in _row_keys(rows).tolist()]
        if any(t is None for t in tokens):
            return None
        token_ids = torch.tensor(tokens, dtype=torch.long, device=rows.device)
        chosen = self.indices.reshape(hidden.shape[0], -1)[token_ids] == expert
        weights = (self.weights.reshape(hidden.shape[0], -1)[token_ids] * chosen).sum(-1)
        self.scales[expert] = weights.to(rows.dtype)
        return self.scales[expert]


class _SliceMode(TorchFunctionMode):
    def __init__(self, tap: "ExpertTap", routing: _Routing):
        super().__init__()
        self.tap, self.routing = tap, routing

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if (func in _LINEAR or func in _MATMULS or func in _BATCHED) and len(args) >= 2:
            hit = _slice_of(args[1], self.tap.parameters())
            if hit is not None:
                parameter, expert, transposed_view = hit
                stored_in_by_out = (func not in _LINEAR) != transposed_view
                if expert is None:  # one batched product over every expert's (pre-weighted) rows
                    for e in range(args[0].shape[0]):
                        rows = args[0][e].reshape(-1, args[0].shape[-1])
                        self.tap.deliver(SliceCall(parameter, e, rows[rows.abs().amax(-1) > 0], stored_in_by_out,
                                                   args[0]))
                else:
                    x = args[0].reshape(-1, args[0].shape[-1])
                    scale = self.routing.scale_for(expert, x)
                    self.tap.deliver(SliceCall(parameter, expert, x if scale is None else x * scale[:, None],
                                               stored_in_by_out, args[0]))
        return func(*args, **kwargs)


class _Handle:
    def __init__(self, remove: Callable[[], None]):
        self.remove = remove


class ExpertTap:
    """Callbacks on what each expert's matrices read, for one experts module (see module doc).

    :meth:`add` registers a callback for ``(parameter, expert)`` (``expert=None``: every expert of
    the parameter, called with a :class:`SliceCall`); the module's forward is wrapped while any
    callback is registered and restored when the last is removed.
    """

    _taps: "weakref.WeakKeyDictionary[nn.Module, ExpertTap]" = weakref.WeakKeyDictionary()

    def __init__(self, module: nn.Module):
        self.module = module
        self.callbacks: dict[tuple[int, int | None], list[Callable]] = {}
        self._tracked: dict[int, nn.Parameter] = {}
        self._own_forward = None

    @classmethod
    def on(cls, module: nn.Module) -> "ExpertTap":
        tap = cls._taps.get(module)
        if tap is None:
            tap = cls._taps[module] = cls(module)
        return tap

    def parameters(self) -> list[nn.Parameter]:
        return list(self._tracked.values())

    def add(self, parameter: nn.Parameter, expert: int | None, callback: Callable) -> _Handle:
        key = (id(parameter), expert)
        self._tracked[id(parameter)] = parameter
        self.callbacks.setdefault(key, []).append(callback)
        if self._own_forward is None:
            self._wrap()

        def remove() -> None:
            callbacks = self.callbacks.get(key, [])
            if callback in callbacks:
                callbacks.remove(callback)
            if not callbacks:
                self.callbacks.pop(key, None)
            if not any(k[0] == id(parameter) for k in self.callbacks):
                self._tracked.pop(id(parameter), None)
            if not self.callbacks:
                self._unwrap()

        return _Handle(remove)

    def deliver(self, call: SliceCall) -> None:
        for callback in list(self.callbacks.get((id(call.parameter), call.expert), ())):
            callback(call.x)
        for callback in list(self.callbacks.get((id(call.parameter), None), ())):
            callback(call)

    def _wrap(self) -> None:
        module = self.module
        own = module.__dict__.get("forward")
        self._own_forward = own if own is not None else False
        class_forward = type(module).forward
        eager = getattr(class_forward, "__wrapped__", class_forward)  # the eager loop under a kernel dispatcher

        def forward(*args, **kwargs):
            with _SliceMode(self, _Routing(args, kwargs)):
                if own is not None:
                    return own(*args, **kwargs)
                return eager(module, *args, **kwargs)

        module.forward = forward

    def _unwrap(self) -> None:
        if self._own_forward is None:
            return
        if self._own_forward is False:
            del self.module.forward
        else:
            self.module.forward = self._own_forward
        self._own_forward = None
