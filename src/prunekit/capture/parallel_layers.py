"""Layer-parallel pruning for methods whose layers are independent given *dense* inputs.

Wanda and magnitude (and any method that decides a layer from its weights and the statistics of
its inputs) need not see the pruned model's activations: fed the dense model's, every layer is a
pure function of (layer weights, input statistics, method). This walk runs each decoder layer of
the dense model once — the same pass collects the layer's statistics and produces the next
layer's inputs — and hands (layer copy, statistics) to a pool of workers (spawned processes or
Ray tasks, see :mod:`prunekit.parallel`). With one worker the job runs in this process: the same
code, so a serial run and a parallel one give identical weights.
"""

from __future__ import annotations

import copy
import time
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from ..models.adapters.base import LinearView
from ..models.loading import LoadedModel
from ..parallel import LayerJobs, rebuild_views, view_specs
from .layerwise import LayerContext, _first_layer_inputs, _run_layer
from .statistics import InputStatistics, collect_statistics


def prune_layer_job(method: Any, index: int, layer: torch.nn.Module, specs: list[tuple],
                    stats: dict[str, InputStatistics]) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """Worker side: prune the received layer copy with ``method``; the new weights and the reports."""
    views = rebuild_views(layer, specs)
    reports = method.prune_layer(LayerContext(index, layer, views, stats))
    return {view.name: view.weight.detach().clone() for view in views}, reports


def parallel_layerwise(
    loaded: LoadedModel,
    method: Any,
    *,
    calib_ids: torch.Tensor | None,
    views_for: Callable[[int], list[LinearView]],
    layers: list[int],
    batch_size: int = 8,
    workers: int = 1,
    executor: str = "process",
    progress: bool = True,
) -> list[tuple[int, dict[str, dict], float]]:
    """Prune the selected layers from dense-model statistics (or from the weights alone, when
    ``calib_ids`` is None); ``(index, reports, seconds)`` per layer.

    At most ``workers`` layers (each a copy plus its statistics) are in flight at once.
    """
    adapter = loaded.adapter
    selected = sorted(set(layers))
    last = selected[-1] if selected else -1
    bar = tqdm(total=len(selected), desc="layers", unit="layer", disable=not progress)
    with LayerJobs(workers, executor, views_for, bar) as jobs:

        def dispatch(index: int, layer: torch.nn.Module, views: list[LinearView], stats: dict, started: float) -> None:
            if not jobs.parallel:  # in this process the layer itself is pruned (its outputs are already computed)
                jobs.finish(index, started, *prune_layer_job(method, index, layer, view_specs(views), stats))
            else:
                jobs.submit(index, started, prune_layer_job, method, index, copy.deepcopy(layer), view_specs(views), stats)

        if calib_ids is None:  # data-free: nothing to propagate
            for index in selected:
                dispatch(index, adapter.decoder_layers()[index], views_for(index), {}, time.perf_counter())
            return jobs.ordered_results()
        inputs = _first_layer_inputs(loaded, calib_ids, batch_size, progress)
        outputs = torch.empty_like(inputs.hidden)
        for index in range(last + 1):
            layer = adapter.decoder_layers()[index]
            started = time.perf_counter()
            views = views_for(index) if index in selected else []
            with collect_statistics(views, method.needs, method.stats_dtype) as stats:
                _run_layer(layer, inputs.at(index), outputs if index < last else None, batch_size)
            for entry in stats.values():
                entry.check_finite(f"layer {index}")
            if index < last:
                inputs.hidden, outputs = outputs, inputs.hidden
            if index in selected:
                dispatch(index, layer, views, stats, started)
        return jobs.ordered_results()
