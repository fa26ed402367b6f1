"""The method contract and registry.

A method is one registered class: it declares what it consumes (``needs``: calibration
statistics, or nothing for data-free methods), its own options as a dataclass (which the CLI
turns into flags and the Python API into keyword arguments), and prunes one decoder layer at a
time, seeing the model only through adapter views. Most methods implement :meth:`prune_view`
(one linear map -> a mask and optionally an updated weight); the base class applies it and
reports sparsity and seconds per module, and with ``--report-error`` the reconstruction error on
the calibration inputs (which needs the input Gram matrix: methods whose algorithm does not use it
accumulate it only when asked, since it costs about as much as SparseGPT's statistics).
"""

from __future__ import annotations

import dataclasses
import enum
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..capture.layerwise import LayerContext
from ..errors import ArgumentError
from ..parallel import check_workers
from ..renamed import renamed_fields, upgrade_keys
from ..models.adapters.base import LinearView
from ..sparsity import SparsityTarget, select_mask
from ..surgery import apply_mask, reconstruction_error
from .allocation import AllocationOptions, validate_allocation

_REGISTRY: dict[str, type["Method"]] = {}


@dataclass
class NoOptions:
    """Methods without options of their own."""


@dataclass
class ErrorReportOptions:
    """The opt-in layer-wise error report, mixed into every mask method's options."""

    report_error: bool = field(default=False, metadata={
        "help": "report each pruned matrix's layer-wise error ||WX-ŴX||²/||WX||² on the calibration inputs "
                "(magnitude, wanda and ria then also accumulate the input Gram matrix: SparseGPT's cost)"})


@dataclass
class MaskOptions(AllocationOptions, ErrorReportOptions):
    """What every mask method shares: the per-layer allocation and the opt-in error report."""


@dataclass
class WorkerOptions:
    """Where independent layers run: options shared by every layer-parallel method."""

    workers: int = field(default=1, metadata={
        "help": "decoder layers pruned in this many workers, results identical to one worker (fista with "
                "--correction intra/none, wanda/magnitude with --inputs dense, svd; shortgpt's bi/angular "
                "splits the calibration windows instead)"})
    executor: str = field(default="process", metadata={
        "choices": ("process", "ray"),
        "help": "where --workers run: local spawned processes, or Ray tasks (a local runtime, or the cluster "
                "at RAY_ADDRESS)"})


@dataclass
class LayerParallelOptions(MaskOptions, WorkerOptions):
    """Options of methods that can decide each layer from the *dense* model's inputs, so layers run
    independently (``prunekit.capture.parallel_layers``). Mixed into a method's own options."""

    inputs: str = field(default="sequential", metadata={
        "choices": ("sequential", "dense"),
        "help": "wanda/magnitude: statistics from the pruned model's activations (sequential, the papers' "
                "convention) or from the dense model's (dense: layers independent, can run in parallel)"})


def validate_parallel(options: LayerParallelOptions) -> None:
    check_workers(options.workers)
    if options.workers > 1 and options.inputs != "dense":
        raise ArgumentError("--workers > 1 needs --inputs dense: with sequential inputs each layer waits for the "
                            "pruned layer before it")


@dataclass
class ViewResult:
    """What a method decided for one linear map: the prune mask, and new weights if it updates them."""

    mask: torch.Tensor
    weight: torch.Tensor | None = None
    extra: dict = dataclasses.field(default_factory=dict)


class Execution(str, enum.Enum):
    """How a method runs: the walk over the model that feeds it. Every method declares one through
    :attr:`Method.execution`, and :mod:`prunekit.pipeline` runs each kind; a new method picks one
    and needs nothing in ``api.py`` or ``cli.py``."""

    SEQUENTIAL = "sequential"  # layer by layer on the pruned model's own activations (the papers' convention)
    INDEPENDENT = "independent"  # each layer decided from the dense model alone: layers may run in parallel
    PAIRED = "paired"  # dense and pruned inputs of each layer side by side (FISTA's corrections)
    WHOLE_MODEL = "whole-model"  # the method walks the model itself (width: gradients, solution paths)
    DEPTH = "depth"  # layers are scored, then removed


class Method:
    """Base class of a pruning method; subclasses register with :func:`register`."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    # what the method changes: "mask" (weights in place), "lowrank" (matrices clipped or factored), "depth" (removes
    # layers), "width" (shrinks units); how it runs is :attr:`execution`
    kind: ClassVar[str] = "mask"
    needs: ClassVar[frozenset[str]] = frozenset()
    default_calib: ClassVar[str] = "c4"
    default_nsamples: ClassVar[int] = 128
    default_calib_seqlen: ClassVar[int | None] = None  # None: the model's context capped at 4096
    Options: ClassVar[type] = NoOptions
    # whether the calibration windows run through the model in batches (--calib-batch-size);
    # LLM-Pruner's Taylor pass takes its gradients one window at a time
    batches_calibration: ClassVar[bool] = True

    def __init__(self, target: SparsityTarget, options: Any = None, explicit_layers: list[int] | None = None):
        self.target = target
        self.options = options if options is not None else self.Options()
        # the step's --layers, where the method's kind takes them whole (depth: remove these; width: prune these)
        self.explicit_layers = explicit_layers
        # per-view targets set by a non-uniform allocation (see methods/allocation.py), by view name
        self.layer_targets: dict[str, SparsityTarget] = {}
        if self.reports_error:  # the error report reads the Gram matrix, whatever the method itself needs
            self.needs = self.needs | {"gram"}

    def target_for(self, view: LinearView) -> SparsityTarget:
        """The target of one matrix: its layer's allocated sparsity, else the step's target."""
        return self.layer_targets.get(view.name, self.target)

    @property
    def reports_error(self) -> bool:
        """Whether each pruned matrix's reconstruction error is computed (``--report-error``)."""
        return bool(getattr(self.options, "report_error", False))

    @property
    def collect_upfront(self) -> bool:
        """False for true-sequential methods, which call ``ctx.recollect`` group by group."""
        return True

    @property
    def stats_dtype(self) -> torch.dtype:
        """The dtype the calibration statistics accumulate in."""
        return torch.float32

    @property
    def execution(self) -> Execution:
        """The walk this method runs on as configured: sequential, or independent when every layer
        is decided from the dense model (its weights, or its inputs' statistics) alone
        (``--inputs dense``), so the layers go through the layer-parallel walk."""
        return Execution.INDEPENDENT if getattr(self.options, "inputs", "sequential") == "dense" else Execution.SEQUENTIAL

    @classmethod
    def parse_options(cls, values: dict[str, Any]) -> Any:
        """Build the options dataclass from keyword values, rejecting unknown names and bad choices."""
        known = {f.name: f for f in dataclasses.fields(cls.Options)}
        values = upgrade_keys(values, renamed_fields(cls.Options))
        unknown = sorted(set(values) - set(known))
        if unknown:
            valid = ", ".join(known) or "none"
            raise ArgumentError(f"method '{cls.name}' has no option {', '.join(unknown)} (its options: {valid})")
        for key, value in values.items():
            choices = known[key].metadata.get("choices")
            if choices and value not in choices:
                raise ArgumentError(f"--{key.replace('_', '-')} must be one of {', '.join(map(str, choices))}, got '{value}'")
        options = cls.Options(**values)
        cls.validate_options(options)
        if isinstance(options, AllocationOptions):
            validate_allocation(options)
        return options

    @classmethod
    def validate_options(cls, options: Any) -> None:
        """Range checks of a method's own options (raise :class:`ArgumentError`)."""

    def prune_layer(self, ctx: LayerContext) -> dict[str, dict]:
        """Prune the views of one layer in place; return a report per module name."""
        return self.prune_views(ctx, ctx.views)

    def prune_views(self, ctx: LayerContext, views: list[LinearView]) -> dict[str, dict]:
        """Prune ``views`` of the layer in ``ctx`` with the statistics it holds now.

        Views are decided in the batches :meth:`solve_groups` forms (one view each by default); a
        batch's seconds are shared among its views by size.
        """
        reports = {}
        # an expert no calibration token reached has empty statistics; a map whose module never
        # runs as a module (its weight read by F.linear in the parent's forward) has none at all
        unrouted = [v for v in views if self.needs and getattr(ctx.stats.get(v.input_group), "tokens", 0) == 0]
        if unrouted:
            reports.update(self.prune_unrouted(ctx, unrouted))
            views = [v for v in views if v not in unrouted]
        for batch in self.solve_groups(views):
            started = time.perf_counter()
            originals = {}
            for view in batch:
                stats = ctx.stats.get(view.input_group)
                if self.reports_error and stats is not None and stats.gram is not None:
                    originals[view.name] = view.weight.detach().float().clone()
            results = self.prune_group(batch, ctx)
            batch_reports = []
            for view, result in zip(batch, results):
                if result.weight is not None:
                    view.set_weight(result.weight)
                report = apply_mask(view, result.mask)
                if view.name in originals:
                    report["recon_error"] = ctx.clock.timed("error_report", reconstruction_error, originals[view.name],
                                                            view.weight.float(), ctx.stats[view.input_group].gram)
                report.update(result.extra)
                batch_reports.append(report)
            seconds = time.perf_counter() - started
            total = sum(view.weight.numel() for view in batch)
            for view, report in zip(batch, batch_reports):
                report["seconds"] = round(seconds * view.weight.numel() / total, 4)
                if len(batch) > 1:
                    report["solved_with"] = [v.name for v in batch if v is not view]
                reports[view.name] = report
        return reports

    def prune_unrouted(self, ctx: LayerContext, views: list[LinearView]) -> dict[str, dict]:
        """Maps without calibration statistics — MoE experts no calibration token was routed to,
        maps whose module the forward bypasses — are pruned by magnitude at their target (the
        data-free rule), and their reports say so."""
        reports = {}
        for view in views:
            report = apply_mask(view, select_mask(view.weight.abs().float(), self.target_for(view)))
            report["fallback"] = ("magnitude: no calibration token was routed to this expert" if view.expert is not None
                                  else "magnitude: the forward reads this map's weight without calling its module")
            reports[view.name] = report
        return reports

    def solve_groups(self, views: list[LinearView]) -> list[list[LinearView]]:
        """How views are batched for :meth:`prune_group` (default: one at a time)."""
        return [[view] for view in views]

    def prune_group(self, views: list[LinearView], ctx: LayerContext) -> list[ViewResult]:
        """Decide a batch of views (default: :meth:`prune_view` on each)."""
        return [self.prune_view(view, ctx) for view in views]

    def prune_view(self, view: LinearView, ctx: LayerContext) -> ViewResult:
        """Decide the mask (and optionally new weights) of one linear map."""
        raise NotImplementedError


class DepthMethod(Method):
    """A method that looks at the whole model and removes decoder layers (no sparsity target)."""

    kind = "depth"

    @property
    def execution(self) -> Execution:
        return Execution.DEPTH

    def plan(self, loaded, calib_ids, *, batch_size: int, progress: bool) -> dict:
        """``{"remove": [layer indices], ...scores for the report}`` — decided, not yet applied."""
        raise NotImplementedError

    def count(self, total: int) -> int:
        """How many of ``total`` layers the plan will remove (recipes check later steps with it
        before any work); raises :class:`ArgumentError` when that is impossible."""
        raise NotImplementedError


class WidthMethod(Method):
    """A method that removes whole units (heads, channels) and shrinks the model physically."""

    kind = "width"

    @property
    def execution(self) -> Execution:
        return Execution.WHOLE_MODEL

    def prune_width(self, loaded, calib_ids, *, progress: bool) -> dict:
        """Score, choose and cut out units in place; return the report for ``prunekit.json``."""
        raise NotImplementedError


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` available by its ``name``."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise TypeError(f"method name '{cls.name}' registered twice")
    if not dataclasses.is_dataclass(cls.Options):
        raise TypeError(f"{cls.__name__}.Options must be a dataclass")
    _REGISTRY[cls.name] = cls
    return cls


def get_method(name: str) -> type[Method]:
    from . import discover

    discover()
    if name not in _REGISTRY:
        raise ArgumentError(f"unknown method '{name}': choose {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def available_methods() -> dict[str, type[Method]]:
    from . import discover

    discover()
    return dict(sorted(_REGISTRY.items()))
