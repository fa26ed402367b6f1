"""Runs a configured method on the walk its :class:`~prunekit.methods.base.Execution` names.

``api.prune`` validates the step, draws the calibration windows and writes the record; what
happens in between is here, one function per kind of execution, so adding a method means
choosing one of them, and adding a kind of walk means one function in :data:`LAYER_WALKS` (or a
branch of :func:`run`), not edits in the API or the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .allocator import freed_memory_retained
from .capture import layerwise
from .capture.layerwise import PhaseClock
from .capture.paired import paired_layerwise
from .capture.parallel_layers import parallel_layerwise
from .methods.base import Execution, Method
from .surgery import remove_layers, skip_sublayers


@dataclass
class LayerRun:
    """What a layer walk hands back: per layer ``(index, module reports, seconds)``, and the
    phase timings where the walk measures them."""

    results: list[tuple[int, dict[str, dict], float]]
    phases: dict[str, float] | None = None


@dataclass
class WalkInputs:
    """Everything a layer walk needs besides the method."""

    loaded: Any
    calib_ids: Any
    views_for: Callable
    layer_ids: list[int]
    batch_size: int
    progress: bool
    residency: Any = None


def _sequential(pruner: Method, inputs: WalkInputs) -> LayerRun:
    clock = PhaseClock()
    results = layerwise(inputs.loaded, pruner.prune_layer, calib_ids=inputs.calib_ids, needs=pruner.needs,
                        collect_upfront=pruner.collect_upfront, views_for=inputs.views_for, layers=inputs.layer_ids,
                        batch_size=inputs.batch_size, stats_dtype=pruner.stats_dtype, progress=inputs.progress,
                        residency=inputs.residency, clock=clock)
    return LayerRun(list(results), clock.as_dict())


def _independent(pruner: Method, inputs: WalkInputs) -> LayerRun:
    options = pruner.options
    return LayerRun(list(parallel_layerwise(inputs.loaded, pruner, calib_ids=inputs.calib_ids,
                                            views_for=inputs.views_for, layers=inputs.layer_ids,
                                            batch_size=inputs.batch_size, workers=options.workers,
                                            executor=options.executor, progress=inputs.progress)))


def _paired(pruner: Method, inputs: WalkInputs) -> LayerRun:
    options = pruner.options
    return LayerRun(list(paired_layerwise(inputs.loaded, pruner.prune_paired, calib_ids=inputs.calib_ids,
                                          correction=options.correction, layers=inputs.layer_ids,
                                          views_for=inputs.views_for, batch_size=inputs.batch_size,
                                          progress=inputs.progress, workers=options.workers,
                                          executor=options.executor)))


# the executions that visit decoder layers one by one and change their weights in place
LAYER_WALKS: dict[Execution, Callable[[Method, WalkInputs], LayerRun]] = {
    Execution.SEQUENTIAL: _sequential,
    Execution.INDEPENDENT: _independent,
    Execution.PAIRED: _paired,
}


def run_layers(pruner: Method, inputs: WalkInputs) -> LayerRun:
    """Prune the selected layers on the walk the method declares."""
    walk = LAYER_WALKS.get(pruner.execution)
    if walk is None:
        raise TypeError(f"{type(pruner).__name__} declares {pruner.execution}, which is not a layer walk")
    with freed_memory_retained():  # each layer's batches reuse the last one's buffers (prunekit.allocator)
        return walk(pruner, inputs)


def run_depth(pruner: Method, loaded, calib_ids, *, batch_size: int, progress: bool, param_count: Callable) -> dict:
    """Score the layers, remove the planned ones (or skip sublayers); the plan with its effect."""
    adapter = loaded.adapter
    params_before = param_count(loaded)
    with freed_memory_retained():
        plan = pruner.plan(loaded, calib_ids, batch_size=batch_size, progress=progress)
    kept = remove_layers(adapter, plan["remove"])
    if plan.get("skip_sublayers"):
        plan["zeroed_modules"] = skip_sublayers(adapter, [tuple(b) for b in plan["skip_sublayers"]])
    plan.update({"kept": kept, "layers_after": adapter.num_layers(), "params_before": params_before,
                 "params_after": param_count(loaded)})
    return plan


def run_width(pruner: Method, loaded, calib_ids, *, progress: bool) -> dict:
    """The method walks the model itself and cuts units out; its report."""
    with freed_memory_retained():
        return pruner.prune_width(loaded, calib_ids, progress=progress)


def is_streamable(pruner: Method) -> bool:
    """Streaming keeps one decoder layer in memory and the checkpoint's tensor names, so only the
    sequential walk of a method that changes weights in place (no new modules) can stream."""
    return pruner.execution is Execution.SEQUENTIAL and pruner.kind in ("mask", "lowrank") \
        and not getattr(pruner.options, "factored", False)
