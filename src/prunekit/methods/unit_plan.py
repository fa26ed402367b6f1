"""Which units a width method removes: unit kinds, the layer range, removal counts, and the plan
(per layer, or ranked across layers), shared by LLM-Pruner and SPP's path cuts.

A plan is ``{(layer, kind): sorted unit indices to remove}``. ``round_to`` keeps each layer's MLP
channels a multiple of N — what a later N:M step needs (M must divide every input width) and what
GPU tile sizes like; heads are removed whole, so their rows stay a multiple of the head dimension.
"""

from __future__ import annotations

import torch

from ..errors import ArgumentError
from ..models.adapters.units import UnitGroup

KINDS = ("heads", "channels")


def parse_unit_kinds(text: str, flag: str) -> list[str]:
    """The unit kinds a comma list names, in KINDS order; one clear error naming ``flag`` otherwise."""
    named = [k.strip() for k in text.split(",") if k.strip()]
    if not named or any(k not in KINDS for k in named):
        raise ArgumentError(f"{flag} must name heads and/or channels, got '{text}'")
    return [k for k in KINDS if k in named]


def parse_layer_range(text: str, depth: int) -> list[int]:
    """``"0.125:0.9375"`` (fractions of depth, rounded) or ``"4:28"`` (indices) -> layer indices."""
    try:
        start_text, end_text = text.split(":")
        fractional = "." in text
        start = round(float(start_text) * depth) if fractional else int(start_text)
        end = round(float(end_text) * depth) if fractional else int(end_text)
    except ValueError:
        raise ArgumentError(f"--layer-range must be START:END (fractions like 0.125:0.9375 or indices like 4:28), got '{text}'") from None
    if fractional and not (0 <= float(start_text) < float(end_text) <= 1):
        raise ArgumentError(f"--layer-range fractions must satisfy 0 <= START < END <= 1, got '{text}'")
    if not 0 <= start < end <= depth:
        raise ArgumentError(f"--layer-range {text} selects no layers of a {depth}-layer model (0 <= START < END <= {depth})")
    return list(range(start, end))


def width_layers(explicit: list[int] | None, layer_range: str, depth: int) -> list[int]:
    """The layers a width method prunes: the step's ``--layers`` (the index syntax every method
    shares) when given, else its ``--layer-range``."""
    return list(explicit) if explicit is not None else parse_layer_range(layer_range, depth)


def present_kinds(layer_groups: dict[str, UnitGroup], kinds: list[str]) -> list[str]:
    """The asked ``kinds`` one layer has: a mixture-of-experts layer of routed experts only has
    heads and no dense MLP channels."""
    return [k for k in kinds if k in layer_groups]


def require_kinds(groups: dict[int, dict[str, UnitGroup]], kinds: list[str]) -> None:
    """Refuse asked unit kinds that none of the selected layers has (a mixture-of-experts model
    whose MLPs are all routed experts has heads but no dense channels: heads alone are pruned when
    both were asked, the default)."""
    missing = [k for k in kinds if not any(k in g for g in groups.values())]
    if missing and len(missing) == len(kinds):
        what = " or ".join("dense MLP channels (its MLPs are routed experts, whose count expert-prune reduces)"
                           if k == "channels" else "attention heads" for k in missing)
        raise ArgumentError(f"--units {','.join(kinds)}: none of the selected layers has {what}")


def unit_params(group: UnitGroup) -> int:
    """Parameters one unit of ``group`` carries (weights and bias entries)."""
    total = 0
    for member in group.members:
        width = member.index.shape[1]
        other = member.view.weight.shape[1 - member.axis]
        has_bias = member.axis == 0 and getattr(member.view.module, "bias", None) is not None
        total += width * (other + (1 if has_bias else 0))
    return total


def removal_count(group: UnitGroup, ratio: float) -> int:
    """Units removed from ``group`` at ``ratio`` (per KV group when the units are partitioned)."""
    per_block = round(ratio * group.block + 1e-9)
    return per_block * group.partition


def choose_removed(group: UnitGroup, scores: torch.Tensor, count: int) -> list[int]:
    """The ``count`` lowest-scored units, taken equally from each partition block."""
    if count == 0:
        return []
    per_block = count // group.partition
    removed: list[int] = []
    for b in range(group.partition):
        block = scores[b * group.block : (b + 1) * group.block]
        removed += (torch.sort(block, stable=True).indices[:per_block] + b * group.block).tolist()
    return sorted(removed)


def global_plan(groups: dict, scores: dict, ratio: float, kinds: list[str]) -> dict:
    """Rank units of all layers together: remove the lowest-scored of each kind until as many are
    gone as the per-layer ``ratio`` would remove in total, never emptying a layer."""
    plan = {}
    for k in kinds:
        having = {i: g for i, g in groups.items() if k in g}
        pool = [(float(s), i, u) for i in having for u, s in enumerate(scores[(i, k)])]
        budget = sum(removal_count(g[k], ratio) for g in having.values())
        taken: dict[int, list[int]] = {i: [] for i in having}
        for score, i, u in sorted(pool):
            if budget == 0:
                break
            if len(taken[i]) < groups[i][k].units - 1:  # never empty a layer
                taken[i].append(u)
                budget -= 1
        for i in having:
            plan[(i, k)] = sorted(taken[i])
    return plan


def round_kept(group: UnitGroup, scores: torch.Tensor, removed: list[int], multiple: int) -> list[int]:
    """Adjust ``removed`` so the units kept are a multiple of ``multiple`` — the nearest one to
    the plan's count (never fewer than ``multiple``, never more than the group has): restore the
    best-scored removed units, or remove the worst-scored kept ones."""
    if multiple <= 1 or group.partition != 1:
        return removed
    kept = group.units - len(removed)
    target = min(max(multiple, round(kept / multiple) * multiple), group.units // multiple * multiple)
    if target <= 0 or target == kept:
        return removed
    chosen = set(removed)
    order = torch.sort(scores, stable=True).indices.tolist()  # worst first
    if target < kept:
        extra = [u for u in order if u not in chosen][: kept - target]
        return sorted(chosen | set(extra))
    restore = [u for u in reversed(order) if u in chosen][: target - kept]
    return sorted(chosen - set(restore))


def plan_removals(groups: dict, scores: dict, ratio: float, kinds: list[str], *, global_ranking: bool,
                  round_to: int = 1) -> dict:
    """The units to remove at ``ratio``: per layer (equally from each KV block) or ranked across
    layers, then MLP channels rounded so that each layer keeps a multiple of ``round_to``."""
    if global_ranking:
        plan = global_plan(groups, scores, ratio, kinds)
    else:
        plan = {(i, k): choose_removed(groups[i][k], scores[(i, k)], removal_count(groups[i][k], ratio))
                for i in groups for k in present_kinds(groups[i], kinds)}
    if round_to > 1 and "channels" in kinds:
        for i in (i for i in groups if "channels" in groups[i]):
            plan[(i, "channels")] = round_kept(groups[i]["channels"], scores[(i, "channels")],
                                               plan[(i, "channels")], round_to)
    return plan


def validate_round_to(value: int) -> None:
    if value < 1:
        raise ArgumentError(f"--round-to must be at least 1 (got {value})")
