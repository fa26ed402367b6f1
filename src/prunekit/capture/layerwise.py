"""The layer-wise pass: one decoder layer in flight at a time.

Run the embeddings once on the calibration batch (stopping the model at its first decoder layer
to catch that layer's inputs and keyword arguments — masks, positions, rotary embeddings — as the
model itself builds them), then walk the layers: collect the statistics the method needs through
hooks, let the method change the layer, and recompute the layer's outputs from the *pruned* layer
as the next layer's inputs (the sequential convention of SparseGPT/Wanda).

Peak memory ≈ the model's weights + two activation buffers of ``nsamples × seqlen × hidden`` +
the statistics of one layer, independent of the number of layers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol

import torch
from tqdm.auto import tqdm

from ..errors import UnsupportedArchitectureError
from ..models.adapters.base import LinearView
from ..models.loading import LoadedModel
from .statistics import InputStatistics, InputsComplete, collect_statistics


class _StopForward(Exception):
    """Raised by the hook on the first decoder layer once its inputs are caught."""


class PhaseClock:
    """Seconds spent per phase of a pruning pass (``embed``, ``statistics``, ``solve``,
    ``error_report``, ``propagate``), so a slowdown shows where it is; lands in ``prunekit.json``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds

    def timed(self, phase: str, fn: Callable, *args, **kwargs):
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.add(phase, time.perf_counter() - started)

    def as_dict(self) -> dict[str, float]:
        return {phase: round(value, 3) for phase, value in self.seconds.items()}

    def nested(self) -> float:
        """Seconds booked so far to phases that run inside a method's own call."""
        return self.seconds.get("statistics", 0.0) + self.seconds.get("error_report", 0.0)


@dataclass
class LayerContext:
    """What a method sees of one decoder layer.

    ``recollect(views)`` re-runs the layer, as it is *now*, over its calibration inputs and
    replaces the statistics of those views' input groups — what a true-sequential method calls
    after pruning the maps that feed them (q/k/v before o, gate/up before down). ``replay()`` runs
    the layer over the same inputs for whatever hooks the method has registered.
    """

    index: int
    layer: torch.nn.Module
    views: list[LinearView]
    stats: dict[str, InputStatistics] = field(default_factory=dict)
    recollect: Callable[[list[LinearView]], dict[str, InputStatistics]] | None = None
    adapter: Any = None
    replay: Callable[[], None] | None = None  # run the layer as it is now over its calibration inputs (hooks fire)
    clock: PhaseClock = field(default_factory=PhaseClock)

    def stats_for(self, view: LinearView) -> InputStatistics:
        return self.stats[view.input_group]


@dataclass
class _Inputs:
    """Calibration inputs of one decoder layer: hidden states and the arguments the model passes.

    ``extra_args``/``kwargs`` are the arguments of the layer these inputs are *for*; ``per_layer``
    holds every layer's own, because they differ by layer in many families (Gemma-2/3, Cohere-2,
    OLMo-3, GPT-Neo, Qwen-2 with sliding windows pass a sliding-window mask and — Gemma-3 — local
    rotary embeddings to some layers, the full causal mask and global rotary to the others).
    :meth:`at` gives the inputs as layer ``index`` must be called with.
    """

    hidden: torch.Tensor  # (nsamples, seqlen, hidden) in the model's dtype
    extra_args: dict[int, tuple]  # positional args after hidden_states, per batch size
    kwargs: dict[int, dict[str, Any]]  # keyword args as the model passes them, per batch size
    per_layer: list[tuple[dict[int, tuple], dict[int, dict[str, Any]]]] | None = None

    def at(self, index: int) -> "_Inputs":
        """These hidden states with the arguments decoder layer ``index`` receives (only those)."""
        if not self.per_layer:
            return self
        extra_args, kwargs = self.per_layer[index]
        return _Inputs(self.hidden, extra_args, kwargs)  # one layer's: what a worker process is sent

    def with_hidden(self, hidden: torch.Tensor) -> "_Inputs":
        return _Inputs(hidden, self.extra_args, self.kwargs, self.per_layer)


def _same_arguments(recorded: tuple[dict[int, tuple], dict[int, dict[str, Any]]], size: int, args: tuple,
                    kw: dict[str, Any]) -> None:
    """Refuse a model whose decoder layers take, besides the hidden states, inputs that change with
    the tokens (Gemma-3n/4's ``per_layer_input``): the walk records one batch's arguments per batch
    size and replays them for every batch, which is right for masks and positions only."""
    extra_args, kwargs = recorded
    old = dict(enumerate(extra_args[size]), **kwargs[size])
    for name, value in dict(enumerate(args), **kw).items():
        before = old.get(name)
        if isinstance(value, torch.Tensor) and isinstance(before, torch.Tensor) and (
                value.shape != before.shape or not torch.equal(value, before)):
            raise UnsupportedArchitectureError(
                f"decoder layer 0 takes an argument that changes with the tokens ({name!r}, shape {tuple(value.shape)}), "
                "besides its hidden states (per-layer token inputs: Gemma-3n, Gemma-4); the layer walk replays one "
                "batch's layer arguments for every batch, so it would feed the wrong ones")


def _first_layer_inputs(loaded: LoadedModel, calib_ids: torch.Tensor, batch_size: int, progress: bool) -> _Inputs:
    """The first decoder layer's hidden states on ``calib_ids`` and every layer's own arguments.

    Each layer's ``forward`` is replaced for the pass by a stand-in that records its arguments and
    hands its input on unchanged, so no decoder layer computes (a streamed model's layers need not
    be in memory). The first batch of each size runs through every stand-in to catch each
    layer's arguments; later batches stop at the first layer once its hidden states are caught.
    """
    model = loaded.model
    shared = getattr(loaded.adapter.config, "num_kv_shared_layers", 0) or 0
    if shared:
        raise UnsupportedArchitectureError(
            f"the last {shared} decoder layers read the key/value cache earlier layers leave in a shared state "
            "(num_kv_shared_layers, Gemma-3n/4): the layer walk runs one layer over every batch before the next, "
            "so a sharing layer would read the last batch's cache for all of them")
    layers = loaded.adapter.decoder_layers()
    count = len(layers)
    device = loaded.device
    nsamples, seqlen = calib_ids.shape
    hidden = torch.empty(nsamples, seqlen, loaded.adapter.hidden_size, dtype=next(model.parameters()).dtype, device=device)
    per_layer: list[tuple[dict[int, tuple], dict[int, dict[str, Any]]]] = [({}, {}) for _ in range(count)]
    complete: set[int] = set()
    state = {"start": 0, "size": 0}

    def stand_in(index: int) -> Callable:
        def forward(*args, **kw):
            if not args:  # hidden states passed by name
                args = (kw.pop("hidden_states"),)
            # (only layer 0's input is kept; what later stand-ins receive is whatever the model
            # makes of a stand-in's return — BLOOM indexes it — so only their arguments count)
            if index == 0 and (args[0].dim() != 3 or args[0].shape[-1] != loaded.adapter.hidden_size):
                raise UnsupportedArchitectureError(
                    f"decoder layer {index} takes hidden states of shape {tuple(args[0].shape)}, not "
                    f"(batch, seq, {loaded.adapter.hidden_size}) (several residual streams: Gemma-3n's AltUp, DeepSeek-V4's hyper-connections); "
                    "the layer walk carries one residual stream")
            if index == 0:
                state["size"] = args[0].shape[0]
                hidden[state["start"] : state["start"] + state["size"]] = args[0]
                if state["size"] in complete:
                    _same_arguments(per_layer[0], state["size"], args[1:], kw)
                    raise _StopForward
            extra_args, kwargs = per_layer[index]
            extra_args.setdefault(state["size"], tuple(args[1:]))
            kwargs.setdefault(state["size"], dict(kw))
            if index == count - 1:
                complete.add(state["size"])
                raise _StopForward
            return args[0]

        return forward

    own_forwards = [layer.__dict__.get("forward") for layer in layers]
    for index, layer in enumerate(layers):
        layer.forward = stand_in(index)
    try:
        with torch.inference_mode():
            for start in tqdm(range(0, nsamples, batch_size), desc="embed calibration", disable=not progress, leave=False):
                state["start"] = start
                try:
                    model(input_ids=calib_ids[start : start + batch_size].to(device), use_cache=False)
                except _StopForward:
                    pass
                except (TypeError, ValueError) as error:
                    # a layer's stand-in hands on only its hidden states; a model whose layers pass
                    # more to the next one (GLM-5's shared DSA top-k indices) fails between them
                    raise UnsupportedArchitectureError(
                        f"the model's forward fails when its decoder layers return only hidden states "
                        f"({type(error).__name__}: {error}): its layers pass more than the residual stream "
                        "on to the next, which the layer walk does not carry") from error
    finally:
        for layer, own in zip(layers, own_forwards):
            if own is None:
                del layer.forward
            else:
                layer.forward = own
    if len(complete) == 0 or any(size not in per_layer[-1][1] for size in per_layer[0][1]):
        raise RuntimeError("the model's forward did not reach every decoder layer on the calibration batch")
    return _Inputs(hidden, *per_layer[0], per_layer=per_layer)


class LayerResidency(Protocol):
    """Where decoder layers live: ``before(i)`` makes layer ``i`` usable, ``after(i)`` says the
    walk is done with it (a streamed model writes it out and frees it)."""

    def before(self, index: int) -> None: ...

    def after(self, index: int) -> None: ...


class _AlwaysResident:
    """The whole model is in memory: nothing to do."""

    def before(self, index: int) -> None:
        pass

    def after(self, index: int) -> None:
        pass


def _run_layer(layer: torch.nn.Module, inputs: _Inputs, out: torch.Tensor | None, batch_size: int) -> None:
    """Run ``layer`` over all inputs in batches, writing into ``out`` (or only firing hooks; then a
    statistics hook may end each call early with :class:`InputsComplete`)."""
    with torch.inference_mode():
        for start in range(0, inputs.hidden.shape[0], batch_size):
            batch = inputs.hidden[start : start + batch_size]
            size = batch.shape[0]
            try:
                result = layer(batch, *inputs.extra_args[size], **inputs.kwargs[size])
            except InputsComplete:
                if out is not None:
                    raise
                continue
            if out is not None:
                out[start : start + size] = result[0] if isinstance(result, tuple) else result


def dense_layer_inputs(loaded: LoadedModel, calib_ids: torch.Tensor, index: int, batch_size: int) -> _Inputs:
    """The inputs decoder layer ``index`` of the (unpruned) model sees on ``calib_ids``: what a
    diagnostic or a test needs to build one real layer's statistics without a pruning pass."""
    inputs = _first_layer_inputs(loaded, calib_ids, batch_size, False)
    out = torch.empty_like(inputs.hidden)
    for position, layer in enumerate(loaded.adapter.decoder_layers()[:index]):
        _run_layer(layer, inputs.at(position), out, batch_size)
        inputs.hidden, out = out, inputs.hidden
    return inputs.at(index)


def layerwise(
    loaded: LoadedModel,
    on_layer: Callable[[LayerContext], Any],
    *,
    calib_ids: torch.Tensor | None,
    needs: frozenset[str] = frozenset(),
    collect_upfront: bool = True,
    views_for: Callable[[int], list[LinearView]] | None = None,
    layers: Iterable[int] | None = None,
    batch_size: int = 8,
    stats_dtype: torch.dtype = torch.float32,
    progress: bool = True,
    residency: LayerResidency | None = None,
    clock: PhaseClock | None = None,
) -> list[tuple[int, Any, float]]:
    """Call ``on_layer`` once per selected decoder layer; returns ``(index, result, seconds)``.

    Without calibration data (``calib_ids is None``) the walk is data-free. With data, every
    layer up to the last selected one is run to propagate inputs; the statistics in ``needs`` are
    collected for the selected layers only — in one pass through the still-dense layer
    (``collect_upfront``), or by the method itself through ``ctx.recollect``. With a
    ``residency`` (a model streamed from disk), each layer is materialised just before the walk
    reaches it and handed back as soon as the next layer's inputs are computed. ``clock``
    collects the seconds of each phase; the method's own time is ``solve`` less what it spent in
    ``statistics`` (re-collections) and ``error_report``.
    """
    residency = residency or _AlwaysResident()
    clock = clock if clock is not None else PhaseClock()
    adapter = loaded.adapter
    total = adapter.num_layers()
    selected = sorted(set(range(total) if layers is None else layers))
    views_for = views_for or adapter.linears
    results: list[tuple[int, Any, float]] = []
    bar = tqdm(total=len(selected), desc="layers", unit="layer", disable=not progress)

    if calib_ids is None:
        for index in selected:
            started = time.perf_counter()
            residency.before(index)
            ctx = LayerContext(index, adapter.decoder_layers()[index], views_for(index), adapter=adapter, clock=clock)
            results.append((index, clock.timed("solve", on_layer, ctx), time.perf_counter() - started))
            residency.after(index)
            bar.update(1)
        bar.close()
        return results

    inputs = clock.timed("embed", _first_layer_inputs, loaded, calib_ids, batch_size, progress)
    outputs = torch.empty_like(inputs.hidden)
    last = selected[-1] if selected else -1
    for index in range(last + 1):
        residency.before(index)
        layer = adapter.decoder_layers()[index]
        started = time.perf_counter()
        if index in selected:
            views = views_for(index)

            def recollect(subset: list[LinearView], layer=layer, index=index) -> dict[str, InputStatistics]:
                began = time.perf_counter()
                with collect_statistics(subset, needs, stats_dtype, stop_layer=layer) as fresh:
                    if needs and subset:
                        _run_layer(layer, inputs.at(index), None, batch_size)
                for entry in fresh.values():
                    entry.check_finite(f"layer {index}")
                ctx.stats.update(fresh)
                clock.add("statistics", time.perf_counter() - began)
                return fresh

            ctx = LayerContext(index, layer, views, {}, recollect, adapter,
                               lambda layer=layer, index=index: _run_layer(layer, inputs.at(index), None, batch_size),
                               clock)
            if collect_upfront:
                recollect(views)
            began, nested_before = time.perf_counter(), clock.nested()
            result = on_layer(ctx)
            # re-collections (true-sequential methods) and the error report run inside on_layer
            clock.add("solve", time.perf_counter() - began - (clock.nested() - nested_before))
        if index < last:
            clock.timed("propagate", _run_layer, layer, inputs.at(index), outputs, batch_size)
            inputs.hidden, outputs = outputs, inputs.hidden
        residency.after(index)
        if index in selected:
            results.append((index, result, time.perf_counter() - started))
            bar.update(1)
            bar.set_postfix(layer=index, s=f"{results[-1][2]:.1f}")
    bar.close()
    return results
