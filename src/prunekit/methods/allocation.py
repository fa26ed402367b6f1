"""Layer-wise sparsity allocation for the mask methods: uniform, OWL, or a user's file.

OWL (Yin et al. 2024, "Outlier Weighed Layerwise sparsity") gives layers with many outliers less
sparsity. A dense calibration pass computes Wanda's score ``|W_ij|·||X_j||₂`` for every pruned
matrix of a layer; the layer's outlier ratio is the share of those scores above ``M`` times their
mean over the layer (``--owl-m``, 5 in the paper). The ratios are min-max scaled to ``[0, 2λ]``
(``--owl-lambda``, 0.08) and centred, and a layer's sparsity is the target *minus* its centred
value: more outliers, fewer weights removed. That is the reference code's formula; prunekit adds
two guards it does not need on its own models. The centring is weighted by each layer's pruned
parameters (equal to the paper's plain mean when layers have equal size, and what keeps the
*overall* zero fraction at the target when an earlier width step made layers unequal), and each
layer is clipped to the band ``target ± λ`` (and to ``[0, 0.99]``) with the shift re-solved, so a
skewed set of ratios cannot push one layer past the band. The pass propagates the dense model's
own outputs (as the reference does), so it costs one calibration forward before pruning starts.

A file (``--allocation file.json``) gives the sparsities directly: a JSON list with one value per
pruned layer, or ``{"sparsity": [...]}`` (the ``allocation`` record prunekit writes has that key),
and its parameter-weighted mean must be the step's ``--sparsity``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..data.tasks import read_json_file
from ..errors import ArgumentError
from ..models.adapters.base import LinearView
from ..sparsity import SparsityTarget

MAX_LAYER_SPARSITY = 0.99
FILE_MEAN_TOLERANCE = 0.005  # a file's weighted mean may differ from --sparsity by this much (rounding)


@dataclass
class AllocationOptions:
    """How the target sparsity is spread over layers: mixed into every mask method's options."""

    allocation: str = field(default="uniform", metadata={
        "help": "uniform, owl (fewer zeros in layers with more outlier scores, Yin et al. 2024; calibrates even "
                "magnitude) or a .json of per-layer sparsities"})
    owl_m: float = field(default=5.0, metadata={
        "help": "owl: a score above this many times its layer's mean is an outlier (paper: 5)"})
    owl_lambda: float = field(default=0.08, metadata={
        "help": "owl: layer sparsities stay within target ± this (paper: 0.08)"})


def validate_allocation(options: AllocationOptions) -> None:
    """Checks that need neither the model nor the target: the mode, OWL's constants, a file's contents."""
    mode = options.allocation
    if options.owl_m <= 0:
        raise ArgumentError(f"--owl-m must be positive, got {options.owl_m}")
    if not 0 < options.owl_lambda < 0.5:
        raise ArgumentError(f"--owl-lambda must be in (0, 0.5), got {options.owl_lambda}")
    if mode not in ("uniform", "owl"):
        if not str(mode).endswith(".json"):
            raise ArgumentError(f"--allocation must be uniform, owl or a .json file, got '{mode}'")
        read_allocation_file(mode)


def uses_allocation(options) -> bool:
    return getattr(options, "allocation", "uniform") != "uniform"


def needs_calibration(options) -> bool:
    """OWL scores layers with activations, whatever the method itself needs."""
    return getattr(options, "allocation", "uniform") == "owl"


def read_allocation_file(path: str | Path) -> list[float]:
    """The per-layer sparsities of an allocation file, each checked to lie in [0, 0.99]."""
    file = Path(path)
    data = read_json_file(file, "--allocation file", ArgumentError, object_only=False)
    values = data.get("sparsity") if isinstance(data, dict) else data
    if isinstance(values, dict):  # {"layer index": sparsity}, as the record writes it
        values = [values[k] for k in sorted(values, key=int)]
    if not isinstance(values, list) or not values or not all(isinstance(v, (int, float)) for v in values):
        raise ArgumentError(f"--allocation file {file} must hold a list of per-layer sparsities (or {{\"sparsity\": [...]}})")
    bad = [v for v in values if not 0 <= v <= MAX_LAYER_SPARSITY]
    if bad:
        raise ArgumentError(f"--allocation file {file}: sparsities must be in [0, {MAX_LAYER_SPARSITY}], got {bad[0]}")
    return [float(v) for v in values]


def owl_sparsities(ratios: Sequence[float], target: float, lam: float, sizes: Sequence[int] | None = None) -> list[float]:
    """Per-layer sparsities from outlier ratios: the reference's min-max scaling to ``[0, 2λ]``,
    centred by a shift that makes the ``sizes``-weighted mean exactly ``target`` with every layer
    clipped to ``target ± λ`` (and ``[0, 0.99]``); equal ratios give the uniform allocation."""
    r = np.asarray(ratios, dtype=np.float64)
    w = np.ones_like(r) if sizes is None else np.asarray(sizes, dtype=np.float64)
    w = w / w.sum()
    if r.max() - r.min() <= 1e-12:
        return [float(target)] * len(r)
    d = (r - r.min()) / (r.max() - r.min()) * 2 * lam
    low = max(0.0, target - lam)
    high = min(MAX_LAYER_SPARSITY, target + lam)

    def at(shift: float) -> np.ndarray:
        return np.clip(target - d + shift, low, high)

    lo, hi = -4 * lam - 1, 4 * lam + 1  # the weighted mean is non-decreasing in the shift
    for _ in range(200):
        mid = (lo + hi) / 2
        if float(w @ at(mid)) < target:
            lo = mid
        else:
            hi = mid
    return [float(v) for v in at((lo + hi) / 2)]


@torch.no_grad()
def layer_outlier_ratio(views: list[LinearView], sqnorms: list[torch.Tensor], m: float) -> float:
    """Share of the layer's Wanda scores ``|W|·||X||`` above ``m`` × their mean over all its views."""
    from .wanda import wanda_scores

    scores = [wanda_scores(view.weight, sqnorm) for view, sqnorm in zip(views, sqnorms)]
    total = sum(float(s.sum(dtype=torch.float64)) for s in scores)
    count = sum(s.numel() for s in scores)
    threshold = m * total / count
    return sum(int((s > threshold).sum()) for s in scores) / count


@dataclass
class Allocation:
    """The sparsity each pruned layer gets, and how it was decided (for the report)."""

    mode: str
    sparsity: dict[int, float]
    outlier_ratio: dict[int, float] | None = None
    seconds: float = 0.0
    settings: dict = field(default_factory=dict)

    def targets(self, views_for: Callable[[int], list[LinearView]]) -> dict[str, SparsityTarget]:
        """Every pruned view's own target, by view name (what :meth:`Method.target_for` reads)."""
        return {view.name: SparsityTarget(sparsity=value) for index, value in self.sparsity.items()
                for view in views_for(index)}

    def to_dict(self) -> dict:
        return {"mode": self.mode, "settings": self.settings, "seconds": round(self.seconds, 3),
                "sparsity": {str(k): round(v, 6) for k, v in self.sparsity.items()},
                **({"outlier_ratio": {str(k): round(v, 6) for k, v in self.outlier_ratio.items()}}
                   if self.outlier_ratio is not None else {})}


def check_allocation_target(options, target: SparsityTarget) -> None:
    """A non-uniform allocation spreads an unstructured fraction; an N:M pattern is per group of M."""
    if uses_allocation(options) and target.is_nm:
        raise ArgumentError(f"--allocation {options.allocation} spreads an unstructured --sparsity over layers; "
                            f"an N:M pattern ({target.describe()}) is the same in every group of M")


def check_allocation_layers(options, layer_ids: list[int]) -> list[float] | None:
    """An allocation file's sparsities, checked to be one per pruned layer (None for uniform/owl):
    the CLI runs this on the config's layer count before loading any weights."""
    mode = getattr(options, "allocation", "uniform")
    if mode in ("uniform", "owl"):
        return None
    values = read_allocation_file(mode)
    if len(values) != len(layer_ids):
        span = f" ({layer_ids[0]}-{layer_ids[-1]})" if layer_ids else ""
        raise ArgumentError(f"--allocation file {mode} has {len(values)} sparsities; this step prunes "
                            f"{len(layer_ids)} layers{span}")
    return values


def allocate(loaded, options, target: SparsityTarget, layer_ids: list[int],
             views_for: Callable[[int], list[LinearView]], *, calib_ids: torch.Tensor | None, batch_size: int,
             progress: bool) -> Allocation:
    """The per-layer sparsities of a mask step (``options.allocation`` not uniform)."""
    started = time.perf_counter()
    sizes = [sum(v.weight.numel() for v in views_for(i)) for i in layer_ids]
    mode = options.allocation
    if mode == "owl":
        ratios = owl_outlier_ratios(loaded, layer_ids, views_for, calib_ids=calib_ids, batch_size=batch_size,
                                    m=options.owl_m, progress=progress)
        values = owl_sparsities([ratios[i] for i in layer_ids], target.fraction, options.owl_lambda, sizes)
        return Allocation("owl", dict(zip(layer_ids, values)), ratios, time.perf_counter() - started,
                          {"m": options.owl_m, "lambda": options.owl_lambda})
    values = check_allocation_layers(options, layer_ids)
    mean = float(np.average(values, weights=sizes))
    if abs(mean - target.fraction) > FILE_MEAN_TOLERANCE:
        raise ArgumentError(f"--allocation file {mode} averages {mean:.4f} over the pruned parameters, not "
                            f"--sparsity {target.fraction:g}: give --sparsity {mean:.4f} or fix the file")
    return Allocation("file", dict(zip(layer_ids, values)), None, time.perf_counter() - started, {"file": str(mode)})


def owl_outlier_ratios(loaded, layer_ids: list[int], views_for: Callable[[int], list[LinearView]], *,
                       calib_ids: torch.Tensor, batch_size: int, m: float, progress: bool) -> dict[int, float]:
    """Each selected layer's outlier ratio on the *dense* model: one layer-wise pass that only reads."""
    from ..capture.layerwise import layerwise

    def score(ctx) -> float:
        return layer_outlier_ratio(ctx.views, [ctx.stats_for(v).sqnorm for v in ctx.views], m)

    results = layerwise(loaded, score, calib_ids=calib_ids, needs=frozenset({"sqnorm"}), views_for=views_for,
                        layers=layer_ids, batch_size=batch_size, progress=progress)
    return {index: ratio for index, ratio, _ in results}
