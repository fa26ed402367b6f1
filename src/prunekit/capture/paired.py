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
from ..models.adapters.base import LinearView, views_by_input_group
from ..models.loading import LoadedModel
from ..parallel import LayerJobs, rebuild_views, view_specs
from .layerwise import _first_layer_inputs, _Inputs, _run_layer, _StopForward

CORRECTIONS = ("intra", "none", "intra+inter")


@dataclass
class PairedStatistics:
    """Sums over calibration tokens (not averages) of one operator group's input products."""

    dense_gram: torch.Tensor  # D = X Xᵀ
    gram: torch.Tensor  # G = X* X*ᵀ
    cross: torch.Tensor  # K = X X*ᵀ
    tokens: int


def _capture_inputs(layer: torch.nn.Module, view: LinearView, inputs: _Inputs, start: int, size: int) -> torch.Tensor:
    """The input of ``view`` (as found in ``layer``) on one batch, stopping the layer's forward right
    there. An MoE expert no token of the batch is routed to reads nothing: zero rows."""
    caught: list[torch.Tensor] = []

    def hook(x):
        caught.append(x.detach())
        raise _StopForward

    handle = view.on(layer).hook_input(hook)
    try:
        batch = inputs.hidden[start : start + size]
        with torch.inference_mode():
            layer(batch, *inputs.extra_args[size], **inputs.kwargs[size])
    except _StopForward:
        pass
    finally:
        handle.remove()
    if not caught:
        if view.expert is not None:
            return inputs.hidden.new_zeros(0, view.in_features)
        raise RuntimeError(f"operator {view.local_name} was not reached by its layer's forward")
    return caught[0]


def paired_statistics(dense_layer: torch.nn.Module, layer: torch.nn.Module, view: LinearView, dense: _Inputs,
                      star: _Inputs | None, batch_size: int) -> PairedStatistics:
    """``D, G, K`` for the input of ``view`` (``star is None``: no correction, ``X* = X``).

    An MoE expert's rows are the tokens routed to it, and routing may differ between the dense
    and the pruned stream, so rows of ``X`` and ``X*`` would not pair up: experts use ``X* = X``.
    """
    if view.expert is not None:
        star = None
    width = view.in_features
    device = view.weight.device
    D = torch.zeros(width, width, dtype=torch.float32, device=device)
    G = torch.zeros_like(D) if star is not None else D
    K = torch.zeros_like(D) if star is not None else D
    tokens = 0
    for start in range(0, dense.hidden.shape[0], batch_size):
        size = min(batch_size, dense.hidden.shape[0] - start)
        x = _capture_inputs(dense_layer, view, dense, start, size).reshape(-1, width).float()
        D.addmm_(x.t(), x)
        if star is not None:
            xs = _capture_inputs(layer, view, star, start, size).reshape(-1, width).float()
            G.addmm_(xs.t(), xs)
            K.addmm_(x.t(), xs)
        tokens += x.shape[0]
    for name, value in (("D", D), ("G", G), ("K", K)):
        if not torch.isfinite(value).all():
            raise NumericalError(f"{view.name}: the calibration statistic {name} is not finite (NaN/inf activations)")
    return PairedStatistics(D, G, K, tokens)


def prune_layer_paired(layer: torch.nn.Module, views: list[LinearView], prune_view: Callable, dense: _Inputs,
                       star: _Inputs | None, correction: str, batch_size: int,
                       dense_layer: torch.nn.Module | None = None) -> dict[str, dict]:
    """Prune one decoder layer in place, operator group by operator group — a pure function of the
    layer, its inputs and the arguments, so it runs the same in this process or in a worker.
    ``dense_layer``: an unpruned copy of ``layer`` (made here when not given)."""
    dense_layer = dense_layer if dense_layer is not None else copy.deepcopy(layer)  # for X and the target W X
    reports: dict[str, dict] = {}
    for group in views_by_input_group(views):
        layer_star = (star or dense) if correction != "none" else None
        stats = paired_statistics(dense_layer, layer, group[0], dense, layer_star, batch_size)
        for view in group:
            dense_weight = view.weight.detach().float().clone()
            reports[view.name] = prune_view(view, dense_weight, stats)
        del stats
    return reports


def _worker_job(layer: torch.nn.Module, specs: list[tuple], prune_view: Callable, dense: _Inputs, correction: str,
                batch_size: int) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """Worker side: rebuild the views on the received layer copy, prune, return the new weights."""
    views = rebuild_views(layer, specs)
    reports = prune_layer_paired(layer, views, prune_view, dense, None, correction, batch_size)
    return {view.name: view.weight.detach().clone() for view in views}, reports


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
    workers: int = 1,
    executor: str = "process",
) -> list[tuple[int, dict[str, dict], float]]:
    """Prune the selected layers; ``prune_view(view, dense_weight, stats)`` changes ``view`` in place
    and returns its report. Returns ``(index, reports, seconds)`` per selected layer.

    ``workers > 1`` (``intra``/``none`` only — their layer inputs come from the dense model, so
    layers are independent): this process walks the dense model and hands each selected layer,
    with a copy of its inputs, to a pool of spawned processes; at most ``workers`` layers (and
    their input copies) are in flight. Each worker uses ``cpu_count // workers`` threads.
    ``executor="ray"`` sends the layers to Ray tasks instead (a local runtime, or the cluster at
    ``RAY_ADDRESS``): same jobs, same results.
    """
    if correction not in CORRECTIONS:
        raise ValueError(f"correction must be one of {CORRECTIONS}")
    if workers > 1 and correction == "intra+inter":
        raise ValueError("intra+inter feeds each layer the pruned model's states: its layers cannot run in parallel")
    adapter = loaded.adapter
    dense = _first_layer_inputs(loaded, calib_ids, batch_size, progress)
    star = dense.with_hidden(dense.hidden.clone()) if correction == "intra+inter" else None
    dense_out = torch.empty_like(dense.hidden)
    star_out = torch.empty_like(dense.hidden) if star is not None else None
    selected = sorted(set(layers))
    last = selected[-1] if selected else -1
    bar = tqdm(total=len(selected), desc="layers", unit="layer", disable=not progress)
    with LayerJobs(workers, executor, views_for, bar) as jobs:
        for index in range(last + 1):
            layer = adapter.decoder_layers()[index]
            started = time.perf_counter()
            if index in selected and jobs.parallel:
                job = dense.at(index).with_hidden(dense.hidden.clone())
                jobs.submit(index, started, _worker_job, copy.deepcopy(layer), view_specs(views_for(index)), prune_view,
                            job, correction, batch_size)
                if index < last:  # the layer here is still dense: it gives the next layer's dense inputs
                    _run_layer(layer, dense.at(index), dense_out, batch_size)
                    dense.hidden, dense_out = dense_out, dense.hidden
                continue
            dense_layer = layer
            if index in selected:
                dense_layer = copy.deepcopy(layer)
                reports = prune_layer_paired(layer, views_for(index), prune_view, dense.at(index),
                                             star.at(index) if star is not None else None, correction, batch_size,
                                             dense_layer)
            if index < last:
                _run_layer(dense_layer, dense.at(index), dense_out, batch_size)
                dense.hidden, dense_out = dense_out, dense.hidden
                if star is not None:
                    _run_layer(layer, star.at(index), star_out, batch_size)
                    star.hidden, star_out = star_out, star.hidden
            if index in selected:
                jobs.finish(index, started, {}, reports)
            del dense_layer
        return jobs.ordered_results()
