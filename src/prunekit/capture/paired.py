"""The paired layer-wise pass: dense and pruned inputs of each operator side by side.

FISTAPruner fits ``Ŵ X*`` to the *dense* output ``W X``, where ``X`` is what an operator sees in
the dense model and ``X*`` what it sees once the operators before it in the same decoder layer
are pruned. For each decoder layer a frozen dense copy runs next to the layer being pruned, on
the same tokens, and hooks on one operator group at a time (q/k/v → o → gate/up → down, the
adapter's data-flow order) accumulate, in float32 and streaming form,

    D = X Xᵀ,   G = X* X*ᵀ,   K = X X*ᵀ        (``in × in``; ``C = W K``)

``correction``: ``intra`` (layer inputs from the dense model, so layers are independent);
``none`` (``X* = X``: only the dense copy runs); ``intra+inter`` (a second stream carries the
pruned model's hidden states into each layer, like SparseGPT's sequential pass). A forward is
stopped as soon as the hooked operator has its input, so early groups cost little.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..errors import NumericalError
from ..models.adapters.base import LinearView
from ..models.loading import LoadedModel
from .layerwise import _first_layer_inputs, _Inputs, _run_layer, _StopForward

CORRECTIONS = ("intra", "none", "intra+inter")


@dataclass
class PairedStatistics:
    """Sums over calibration tokens (not averages) of one operator group's input products."""

    dense_gram: torch.Tensor  # D = X Xᵀ
    gram: torch.Tensor  # G = X* X*ᵀ
    cross: torch.Tensor  # K = X X*ᵀ
    tokens: int


def _groups(views: list[LinearView]) -> list[list[LinearView]]:
    order: dict[str, list[LinearView]] = {}
    for view in views:
        order.setdefault(view.input_group, []).append(view)
    return list(order.values())


def _capture_inputs(layer: torch.nn.Module, local_name: str, inputs: _Inputs, start: int, size: int) -> torch.Tensor:
    """The input of ``layer.<local_name>`` on one batch, stopping the layer's forward right there."""
    caught: list[torch.Tensor] = []

    def hook(_module, args):
        caught.append(args[0].detach())
        raise _StopForward

    handle = layer.get_submodule(local_name).register_forward_pre_hook(hook)
    try:
        batch = inputs.hidden[start : start + size]
        with torch.inference_mode():
            layer(batch, *inputs.extra_args[size], **inputs.kwargs[size])
    except _StopForward:
        pass
    finally:
        handle.remove()
    if not caught:
        raise RuntimeError(f"operator {local_name} was not reached by its layer's forward")
    return caught[0]


def paired_statistics(dense_layer: torch.nn.Module, layer: torch.nn.Module, view: LinearView, dense: _Inputs,
                      star: _Inputs | None, batch_size: int) -> PairedStatistics:
    """``D, G, K`` for the input of ``view`` (``star is None``: no correction, ``X* = X``)."""
    width = view.in_features
    device = view.weight.device
    D = torch.zeros(width, width, dtype=torch.float32, device=device)
    G = torch.zeros_like(D) if star is not None else D
    K = torch.zeros_like(D) if star is not None else D
    tokens = 0
    for start in range(0, dense.hidden.shape[0], batch_size):
        size = min(batch_size, dense.hidden.shape[0] - start)
        x = _capture_inputs(dense_layer, view.local_name, dense, start, size).reshape(-1, width).float()
        D.addmm_(x.t(), x)
        if star is not None:
            xs = _capture_inputs(layer, view.local_name, star, start, size).reshape(-1, width).float()
            G.addmm_(xs.t(), xs)
            K.addmm_(x.t(), xs)
        tokens += x.shape[0]
    for name, value in (("D", D), ("G", G), ("K", K)):
        if not torch.isfinite(value).all():
            raise NumericalError(f"{view.name}: the calibration statistic {name} is not finite (NaN/inf activations)")
    return PairedStatistics(D, G, K, tokens)


def paired_layerwise(
    loaded: LoadedModel,
    prune_view: Callable[[LinearView, torch.Tensor, PairedStatistics], dict],
    *,
    calib_ids: torch.Tensor,
    correction: str,
    layers: list[int],
    views_for: Callable[[int], list[LinearView]],
    batch_size: int,
    progress: bool = True,
) -> list[tuple[int, dict[str, dict], float]]:
    """Prune the selected layers operator group by operator group; ``prune_view(view, dense_weight,
    stats)`` changes ``view`` in place and returns its report. Returns ``(index, reports, seconds)``."""
    if correction not in CORRECTIONS:
        raise ValueError(f"correction must be one of {CORRECTIONS}")
    adapter = loaded.adapter
    dense = _first_layer_inputs(loaded, calib_ids, batch_size, progress)
    star = _Inputs(dense.hidden.clone(), dense.extra_args, dense.kwargs) if correction == "intra+inter" else None
    dense_out = torch.empty_like(dense.hidden)
    star_out = torch.empty_like(dense.hidden) if star is not None else None
    selected = sorted(set(layers))
    last = selected[-1] if selected else -1
    results = []
    bar = tqdm(total=len(selected), desc="layers", unit="layer", disable=not progress)
    for index in range(last + 1):
        layer = adapter.decoder_layers()[index]
        started = time.perf_counter()
        dense_layer = layer
        if index in selected:
            dense_layer = copy.deepcopy(layer)  # the dense operators, for X and for the target W X
            reports: dict[str, dict] = {}
            for group in _groups(views_for(index)):
                layer_star = (star or dense) if correction != "none" else None
                stats = paired_statistics(dense_layer, layer, group[0], dense, layer_star, batch_size)
                for view in group:
                    dense_weight = view.weight.detach().float().clone()
                    reports[view.name] = prune_view(view, dense_weight, stats)
                del stats
        if index < last:
            _run_layer(dense_layer, dense, dense_out, batch_size)
            dense.hidden, dense_out = dense_out, dense.hidden
            if star is not None:
                _run_layer(layer, star, star_out, batch_size)
                star.hidden, star_out = star_out, star.hidden
        if index in selected:
            results.append((index, reports, time.perf_counter() - started))
            bar.update(1)
            bar.set_postfix(layer=index, s=f"{results[-1][2]:.1f}")
        del dense_layer
    bar.close()
    return results

