"""SVD clipping (the NeurIPS 2024 in-context-learning finding): keep the largest singular values.

For each selected matrix ``W = U Σ Vᵀ`` (exact SVD, float32), clipping rate ``ξ`` keeps
``r = max(1, round((1 − ξ)·n))`` components. The rank-r product is written back dense, or with
``--factored`` the map becomes two linears (fewer parameters when r is small). Which matrices:
``--modules`` (q, k, v, o, attn, mlp, all, fc1/up+gate, fc2/down) × ``--layers`` (indices,
negative from the end, ``first:2``, ``last:2``), optionally narrowed to the ``--top-k`` matrices
with the largest condition number ``σ_max/σ_min`` (``--select top-k-condition``, within the deeper
half with ``--deeper-half``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from ..io.shapes import require_remote_class
from ..models.adapters.base import Adapter, LinearView
from ..sparsity import zero_fraction
from ..surgery.lowrank import Spectrum, factor, install, kept_rank, record_factored
from ..errors import ArgumentError
from ..parallel import check_workers
from .base import Execution, Method, WorkerOptions, register

SELECTIONS = ("all", "top-k-condition")


@dataclass
class SvdOptions(WorkerOptions):
    rate: float = field(default=0.5, metadata={"help": "clipping rate ξ in [0, 1): keep max(1, round((1-ξ)·n)) "
                                                        "singular values of each selected matrix"})
    modules: str = field(default="all", metadata={"help": "matrices to clip: q,k,v,o,attn,mlp,all,fc1/up+gate,fc2/down"})
    factored: bool = field(default=False, metadata={"help": "store clipped maps as two factors in->r->out "
                                                            "(fewer parameters; reloads with trust_remote_code)"})
    select: str = field(default="all", metadata={"help": "all selected matrices, or the --top-k with the largest "
                                                         "condition number", "choices": SELECTIONS})
    top_k: int = field(default=2, metadata={"help": "matrices kept by --select top-k-condition"})
    deeper_half: bool = field(default=False, metadata={"help": "with top-k-condition: only the deeper half of the layers"})


def condition_ranking(adapter: Adapter, layer_ids: list[int], views_for: Callable[[int], list[LinearView]],
                      deeper_half: bool = False) -> list[tuple[float, int, str]]:
    """``(condition number, layer, module name)`` of every selected matrix, largest first."""
    if deeper_half:
        half = adapter.num_layers() // 2
        layer_ids = [i for i in layer_ids if i >= half]
    ranking = [(Spectrum.of(view.weight).condition_number(), index, view.name)
               for index in layer_ids for view in views_for(index)]
    return sorted(ranking, key=lambda entry: (-entry[0], entry[1], entry[2]))


@register
class SvdClip(Method):
    name = "svd"
    summary = "SVD clipping: keep the top (1-ξ) singular values per matrix (dense or factored); data-free"
    kind = "lowrank"
    Options = SvdOptions

    @classmethod
    def validate_options(cls, options: SvdOptions) -> None:
        kept_rank(options.rate, 1)  # range check with the spec's message
        if options.top_k < 1:
            raise ArgumentError(f"--top-k must be at least 1 (got {options.top_k})")
        if options.deeper_half and options.select != "top-k-condition":
            raise ArgumentError("--deeper-half narrows --select top-k-condition; give both or neither")
        check_workers(options.workers)
        if options.workers > 1 and options.factored:
            raise ArgumentError("--factored installs new modules into the model, which a worker's layer copy cannot "
                                "hand back: use --workers 1")

    @property
    def execution(self) -> Execution:
        """Data-free: every matrix's clipping depends on that matrix alone, so workers take layers
        independently; one worker walks them in order."""
        return Execution.INDEPENDENT if self.options.workers > 1 else Execution.SEQUENTIAL

    def restrict(self, adapter: Adapter, layer_ids: list[int], views_for: Callable[[int], list[LinearView]]):
        """Narrow the selection to the top-k matrices by condition number when asked."""
        if self.options.select != "top-k-condition":
            return layer_ids, views_for
        ranking = condition_ranking(adapter, layer_ids, views_for, self.options.deeper_half)
        if not ranking:
            raise ArgumentError("--deeper-half: no selected layer lies in the deeper half of the model")
        chosen = {name for _, _, name in ranking[: self.options.top_k]}
        self.condition_choice = [{"layer": i, "module": n, "condition_number": c} for c, i, n in ranking[: self.options.top_k]]
        return (sorted({i for _, i, n in ranking if n in chosen}),
                lambda index: [v for v in views_for(index) if v.name in chosen])

    def prune_layer(self, ctx) -> dict[str, dict]:
        reports = {}
        for view in ctx.views:
            started = time.perf_counter()
            spectrum = Spectrum.of(view.weight)
            rank = kept_rank(self.options.rate, spectrum.size)
            params_before = view.out_features * view.in_features
            report = {"shape": [view.out_features, view.in_features], "rank": rank, "full_rank": spectrum.size,
                      "condition_number": spectrum.condition_number(),
                      "discarded_energy": spectrum.discarded_energy(rank) / max(spectrum.discarded_energy(0), 1e-30)}
            if self.options.factored:
                module = factor(view, spectrum, rank)
                install(ctx.adapter.model, view.name, module)
                record_factored(ctx.adapter.config, view.name, module)
                report["params"] = [params_before, module[0].weight.numel() + module[1].weight.numel()]
                report["sparsity"] = 0.0
            else:
                view.set_weight(spectrum.product(rank))
                report["params"] = [params_before, params_before]
                report["sparsity"] = zero_fraction(view.weight)
            report["seconds"] = round(time.perf_counter() - started, 4)
            reports[view.name] = report
        if self.options.factored:
            require_remote_class(ctx.adapter)
        return reports
