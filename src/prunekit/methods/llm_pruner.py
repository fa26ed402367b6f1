"""LLM-Pruner (Ma et al., 2023): remove coupled attention-head and MLP-channel groups by Taylor importance.

Units come from the adapter (:mod:`prunekit.models.adapters.units`): a head group is the rows of
q/k/v of one head (or one KV group under GQA) plus the matching columns of o; a channel group is a
row of gate/up (fc1) plus a column of down (fc2). Each member's importance is summed over the
unit's weights, then the members are aggregated into the group's score:

- ``element1``: ``|w · ∂L/∂w|`` (first-order Taylor; the reference default);
- ``element2``: ``|w · ∂L/∂w − ½ w² F|`` with the Fisher diagonal ``F = mean(gᵢ²)`` over windows;
- ``vector``: ``|Σ_{w ∈ unit} w · ∂L/∂w|`` over the whole unit — a variant of the reference's
  vectorised Taylor, which takes ``|Σ|`` per channel (row or column) and then sums; the two agree
  for MLP channels (one line per member) and differ for heads (``head_dim`` lines);
- ``ria``: RIA's relative importance ``(|w|/Σrow + |w|/Σcol) · ||x||^½`` summed over the unit —
  the one-shot "RIA group score" that SPP's path starts from (calibration norms, no gradients);
- ``l1`` / ``l2``: weight-norm baselines; ``random``: seeded baseline.

``ratio`` is the fraction of heads (KV groups) and of MLP channels removed in each layer of the
``layer_range`` (the reference keeps the first layers and the last ones: LLaMA-7B layers 4–30 of
32, here expressed as fractions of depth); ``param_ratio`` instead chooses the per-layer ratio
whose removal is closest to that fraction of *all* parameters. ``global_ranking`` ranks units of
all selected layers together, never emptying a layer. Removed units are cut out physically.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from ..capture.gradients import weight_gradients
from ..errors import ArgumentError
from ..io.shapes import sync_config_shapes
from ..models.adapters.experts import expert_count
from ..models.adapters.units import UnitGroup
from ..surgery.shrink import remove_units
from ..capture.layerwise import layerwise
from .base import WidthMethod, register
from .unit_plan import (parse_unit_kinds, plan_removals, present_kinds, removal_count, require_kinds, unit_params,
                        validate_round_to, width_layers)
from .ria import ria_scores

# --param-ratio: the closest per-layer ratio must remove at least this share of the asked fraction (a tiny
# model's units are coarse; a MoE model's heads and dense channels may hold a few percent of it)
PARAM_RATIO_FLOOR = 0.5
IMPORTANCES = ("element1", "element2", "vector", "ria", "l1", "l2", "random")
AGGREGATES = ("sum", "mean", "max", "prod", "last")





@dataclass
class LLMPrunerOptions:
    ratio: float | None = field(default=None, metadata={
        "help": "width: fraction of heads (KV groups) and MLP channels removed in each selected layer"})
    param_ratio: float | None = field(default=None, metadata={
        "help": "width: instead of --ratio, the fraction of all parameters to remove (per-layer ratio solved for)"})
    importance: str = field(default="element1", metadata={"choices": IMPORTANCES,
                                                           "help": "width: Taylor element1/element2/vector (vector: |sum| over the whole unit, a variant of the "
                                                                   "reference's per-channel |sum|), RIA group score, or l1/l2/random"})
    aggregate: str = field(default="sum", metadata={"choices": AGGREGATES,
                                                    "help": "width: how member importances form a group's score"})
    layer_range: str = field(default="0.125:0.9375", metadata={
        "help": "width: START:END layers to prune, as fractions of depth (with a '.') or indices, END exclusive "
                "(default 0.125:0.9375 = LLaMA-7B's 4:30 of 32)"})
    global_ranking: bool = field(default=False, metadata={"help": "width: rank units of all selected layers together"})
    head_grouping: str = field(default="kv", metadata={
        "choices": ("kv", "query"),
        "help": "width: GQA unit = a KV head with its query heads (kv) or one query head, removed equally per KV group (query)"})
    units: str = field(default="heads,channels", metadata={"help": "width: which units to prune: heads, channels or both"})
    random_baseline_seed: int = field(default=0, metadata={
        "was": "random_seed", "help": "width: seed of --importance random"})
    checkpointing: bool = field(default=False, metadata={"help": "width: gradient checkpointing for the Taylor pass"})
    round_to: int = field(default=1, metadata={
        "help": "width: keep each layer's MLP channels a multiple of N (a later N:M step needs M to divide them; "
                "recipes set it from such a step) (default 1)"})





def member_scores(group: UnitGroup, importance: str, grads: dict | None, fishers: dict | None, generator,
                  sqnorms: dict | None = None) -> torch.Tensor:
    """(members, units) importance of each member of each unit (``sqnorms``: input group -> ||x_j||², for ria)."""
    if importance == "random":
        return torch.rand(1, group.units, generator=generator)
    rows = []
    for member in group.members:
        view = member.view
        w = view.weight.detach().float()
        if importance in ("l1", "l2"):
            elements = w.abs() if importance == "l1" else w * w
        elif importance == "ria":
            elements = ria_scores(w, sqnorms[view.input_group])
        else:
            g = grads[id(view.module)]
            g = g.t() if view.transposed else g
            if importance == "element1":
                elements = (w * g).abs()
            elif importance == "element2":
                f = fishers[id(view.module)]
                f = f.t() if view.transposed else f
                elements = (w * g - 0.5 * w * w * f).abs()
            else:  # vector: signed sums, absolute value per unit
                elements = w * g
        lines = elements.sum(dim=1 - member.axis)  # one value per row (axis 0) or column (axis 1)
        unit = lines[member.index.to(lines.device)].sum(dim=1)
        rows.append(unit.abs() if importance == "vector" else unit)
    return torch.stack(rows).cpu()


def input_sqnorms(loaded, calib_ids: torch.Tensor, layers: list[int], progress: bool) -> dict[int, dict[str, torch.Tensor]]:
    """``||x_j||²`` of every input group of ``layers``, on the dense model's own activations."""
    walk = layerwise(loaded, lambda ctx: {g: s.sqnorm for g, s in ctx.stats.items()}, calib_ids=calib_ids,
                     needs=frozenset({"sqnorm"}), layers=layers, progress=progress)
    return {index: norms for index, norms, _ in walk}


def aggregate(scores: torch.Tensor, how: str) -> torch.Tensor:
    if scores.shape[0] == 1 or how == "last":
        return scores[-1]
    return {"sum": scores.sum(0), "mean": scores.mean(0), "max": scores.amax(0), "prod": scores.prod(0)}[how]











@register
class LLMPruner(WidthMethod):
    name = "llm-pruner"
    summary = "structured width pruning of coupled head/channel groups by Taylor importance (LLM-Pruner)"
    batches_calibration = False
    needs = frozenset({"gradients"})
    default_calib = "pg19"  # books, the closest local corpus to the reference's BookCorpus
    default_nsamples = 10
    default_calib_seqlen = 64
    Options = LLMPrunerOptions

    def __init__(self, target, options=None, explicit_layers: list[int] | None = None):
        super().__init__(target, options, explicit_layers)
        if self.options.importance in ("l1", "l2", "random"):
            self.needs = frozenset()
        elif self.options.importance == "ria":
            self.needs = frozenset({"sqnorm"})

    @classmethod
    def validate_options(cls, options):
        given = [v for v in (options.ratio, options.param_ratio) if v is not None]
        if len(given) != 1:
            raise ArgumentError("give exactly one of --ratio (per-layer fraction) or --param-ratio (fraction of all parameters)")
        if options.ratio is not None and not 0 <= options.ratio < 1:
            raise ArgumentError(f"--ratio must be in [0, 1) (got {options.ratio})")
        if options.param_ratio is not None and not 0 < options.param_ratio < 1:
            raise ArgumentError(f"--param-ratio must be in (0, 1) (got {options.param_ratio})")
        parse_unit_kinds(options.units, "--units")
        validate_round_to(options.round_to)

    @property
    def kinds(self) -> list[str]:
        return parse_unit_kinds(self.options.units, "--units")

    def prune_width(self, loaded, calib_ids, *, progress: bool) -> dict:
        adapter = loaded.adapter
        opts = self.options
        layers = width_layers(self.explicit_layers, opts.layer_range, adapter.num_layers())
        groups = {i: adapter.unit_groups(i, opts.head_grouping) for i in layers}
        require_kinds(groups, self.kinds)
        if opts.global_ranking and opts.head_grouping == "query" and any("heads" in g and g["heads"].partition > 1 for g in groups.values()):
            raise ArgumentError("--global-ranking with --head-grouping query cannot keep KV groups equal; use --head-grouping kv")
        params_before = sum(p.numel() for p in loaded.model.parameters())
        ratio = opts.ratio if opts.ratio is not None else self._solve_ratio(
            groups, params_before, has_experts=expert_count(loaded.model.config) is not None)
        self._check_not_emptying(groups, ratio)

        started = time.perf_counter()
        grads = fishers = None
        loss = None
        if opts.importance in ("element1", "element2", "vector"):
            modules = {id(m.view.module): m.view.module for g in groups.values() for k in present_kinds(g, self.kinds)
                       for m in g[k].members}
            params = [m.weight for m in modules.values()]
            grad_list, fisher_list, loss = weight_gradients(loaded.model, params, calib_ids, fisher=opts.importance == "element2",
                                                            checkpointing=opts.checkpointing, progress=progress)
            grads = dict(zip(modules, grad_list))
            fishers = dict(zip(modules, fisher_list)) if fisher_list is not None else None
        sqnorms = input_sqnorms(loaded, calib_ids, layers, progress) if opts.importance == "ria" else {}
        generator = torch.Generator().manual_seed(opts.random_baseline_seed)
        scores = {(i, k): aggregate(member_scores(g[k], opts.importance, grads, fishers, generator, sqnorms.get(i)),
                                    opts.aggregate)
                  for i, g in groups.items() for k in present_kinds(g, self.kinds)}
        del grads, fishers
        scoring_seconds = time.perf_counter() - started

        plan = plan_removals(groups, scores, ratio, self.kinds, global_ranking=opts.global_ranking,
                             round_to=opts.round_to)
        layer_reports = []
        for i in layers:
            entry = {"index": i}
            for k in present_kinds(groups[i], self.kinds):
                group = groups[i][k]
                entry[k] = {"before": group.units, **remove_units(adapter, group, plan[(i, k)]),
                            "scores": [round(float(s), 6) for s in scores[(i, k)]]}
            layer_reports.append(entry)
        config_mode = sync_config_shapes(adapter)
        params_after = sum(p.numel() for p in loaded.model.parameters())
        units = [k for k in self.kinds if any(k in g for g in groups.values())]
        return {"ratio": ratio, "layers_pruned": layers, "units": units, "importance": opts.importance, "aggregate": opts.aggregate,
                "head_grouping": opts.head_grouping, "calibration_loss": loss, "params_before": params_before,
                "params_after": params_after, "params_removed_fraction": 1 - params_after / params_before,
                "config": config_mode, "layers": layer_reports,
                "seconds": {"importance": round(scoring_seconds, 3), "total": round(time.perf_counter() - started, 3)}}

    def _check_not_emptying(self, groups: dict, ratio: float) -> None:
        for i, g in groups.items():
            for k in present_kinds(g, self.kinds):
                if removal_count(g[k], ratio) >= g[k].units:
                    unit = "heads (KV groups)" if k == "heads" else "MLP channels"
                    hint = (" (one KV head: --head-grouping query removes query heads instead)"
                            if k == "heads" and g[k].units == 1 and self.options.head_grouping == "kv" else "")
                    raise ArgumentError(f"ratio {ratio:.3f} would remove every one of the {g[k].units} {unit} of layer {i}{hint}")

    def _solve_ratio(self, groups: dict, total_params: int, has_experts: bool = False) -> float:
        """The per-layer ratio whose removal is closest to ``param_ratio`` of all parameters (the
        record's ``params_removed_fraction`` says what it reached); an error when even the closest
        removes less than half of it (a model whose parameters sit mostly outside heads and MLP
        channels: embeddings, unselected layers, routed experts)."""
        target = self.options.param_ratio * total_params
        best = (math.inf, 0.0, 0)
        for step in range(1000):
            ratio = step / 1000
            try:
                self._check_not_emptying(groups, ratio)
            except ArgumentError:
                break
            removed = sum(removal_count(g[k], ratio) * unit_params(g[k]) for g in groups.values()
                          for k in present_kinds(g, self.kinds))
            best = min(best, (abs(removed - target), ratio, removed))
        if best[1] == 0.0 or best[2] < PARAM_RATIO_FLOOR * target:
            elsewhere = "embeddings, unselected layers" + (" and routed experts, whose count expert-prune reduces"
                                                           if has_experts else "")
            raise ArgumentError(
                f"--param-ratio {self.options.param_ratio} cannot be reached: the heads and MLP channels of the "
                f"selected layers come closest at {best[2] / total_params:.1%} of all parameters (the rest: {elsewhere}); "
                "ask less, or give --ratio")
        return best[1]
