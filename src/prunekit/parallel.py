"""Executors for layer-parallel work: local spawned processes, or a Ray cluster.

A layer whose inputs come from the dense model is a pure function of (layer weights, inputs,
arguments), so it can run anywhere. Both executors take ``submit(fn, *args)`` and return a
``concurrent.futures.Future``; the caller bounds how many layers are in flight.

Ray: with ``RAY_ADDRESS`` set (or a Ray runtime already initialised) the work goes to that
cluster — several machines or GPUs — otherwise a local Ray instance with ``workers × threads``
CPUs is started for the run and stopped after it.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Callable

import torch

from .errors import ArgumentError
from .models.adapters.base import LinearView

EXECUTORS = ("process", "ray")


def _set_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def _call_with_threads(threads: int, fn: Callable, *args: Any) -> Any:
    torch.set_num_threads(threads)
    return fn(*args)


class RayPool:
    """``submit`` runs ``fn(*args)`` as a Ray task using ``threads`` CPUs; results come back as futures."""

    def __init__(self, workers: int, threads: int):
        try:
            import ray
        except ImportError as exc:
            raise ArgumentError("--executor ray needs Ray: pip install 'prunekit[ray]' (or ray)") from exc
        self._ray = ray
        self._owns_runtime = not ray.is_initialized()
        if self._owns_runtime:
            address = os.environ.get("RAY_ADDRESS")
            ray.init(address=address, num_cpus=None if address else workers * threads, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
        self._threads = threads
        self._task = ray.remote(num_cpus=threads)(_call_with_threads)

    def submit(self, fn: Callable, *args: Any) -> Future:
        return self._task.remote(self._threads, fn, *args).future()

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        if self._owns_runtime:
            self._ray.shutdown()


def check_workers(workers: int) -> None:
    """The one range check of ``--workers`` (methods, ``analyze``, the API)."""
    if workers < 1:
        raise ArgumentError(f"--workers must be at least 1 (got {workers})")


def make_pool(workers: int, executor: str = "process"):
    """A pool of ``workers`` for layer jobs; each job gets ``cpu_count // workers`` threads."""
    if executor not in EXECUTORS:
        raise ArgumentError(f"--executor must be one of {', '.join(EXECUTORS)} (got '{executor}')")
    threads = max(1, (os.cpu_count() or 1) // workers)
    if executor == "ray":
        return RayPool(workers, threads)
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_set_threads, initargs=(threads,))


def view_specs(views: list[LinearView]) -> list[tuple]:
    """What a worker needs to find a layer's linear maps again in its copy of the layer."""
    return [(v.name, v.local_name, v.roles, v.input_group, v.transposed, v.parameter_name, v.expert) for v in views]


def rebuild_views(layer: torch.nn.Module, specs: list[tuple]) -> list[LinearView]:
    """The views of ``view_specs`` on (a copy of) the decoder layer."""
    views = []
    for name, local, roles, group, transposed, parameter_name, expert in specs:
        spec = LinearView(name=name, local_name=local, roles=roles, module=layer, input_group=group,
                          transposed=transposed, parameter_name=parameter_name, expert=expert)
        views.append(spec.on(layer))
    return views


class LayerJobs:
    """Bookkeeping of layer jobs, shared by every layer-parallel walk.

    A job returns ``(weights by view name, reports)``; its weights are written back through
    ``views_for(index)`` when it finishes, and ``(index, reports, seconds)`` joins ``results``. At
    most ``workers`` jobs (each holding a layer copy and its inputs or statistics) are in flight:
    ``submit`` waits for the oldest first. With one worker there is no pool and the walk calls
    ``finish`` on a result it computed itself.
    """

    def __init__(self, workers: int, executor: str, views_for: Callable[[int], list[LinearView]], bar=None):
        self.workers = workers
        self.views_for = views_for
        self.bar = bar
        self.pool = make_pool(workers, executor) if workers > 1 else None
        self.pending: dict[Future, tuple[int, float]] = {}
        self.results: list[tuple[int, dict[str, dict], float]] = []

    @property
    def parallel(self) -> bool:
        return self.pool is not None

    def submit(self, index: int, started: float, fn: Callable, *args: Any) -> None:
        self.drain(block=False)
        self.pending[self.pool.submit(fn, *args)] = (index, started)

    def finish(self, index: int, started: float, weights: dict[str, torch.Tensor], reports: dict[str, dict]) -> None:
        views = {v.name: v for v in self.views_for(index)}
        for name, weight in weights.items():
            views[name].set_weight(weight)
        self.results.append((index, reports, time.perf_counter() - started))
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(layer=index, s=f"{self.results[-1][2]:.1f}")

    def drain(self, block: bool) -> None:
        """Finish jobs in submission order: all of them (``block``), or until one slot is free."""
        while self.pending and (block or len(self.pending) >= self.workers):
            future = next(iter(self.pending))
            index, started = self.pending.pop(future)
            self.finish(index, started, *future.result())

    def ordered_results(self) -> list[tuple[int, dict[str, dict], float]]:
        self.drain(block=True)
        return sorted(self.results, key=lambda r: r[0])

    def __enter__(self) -> "LayerJobs":
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        if self.bar is not None:
            self.bar.close()
