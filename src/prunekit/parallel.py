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
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Callable

import torch

from .errors import ArgumentError

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


def make_pool(workers: int, executor: str = "process"):
    """A pool of ``workers`` for layer jobs; each job gets ``cpu_count // workers`` threads."""
    if executor not in EXECUTORS:
        raise ArgumentError(f"--executor must be one of {', '.join(EXECUTORS)} (got '{executor}')")
    threads = max(1, (os.cpu_count() or 1) // workers)
    if executor == "ray":
        return RayPool(workers, threads)
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_set_threads, initargs=(threads,))
