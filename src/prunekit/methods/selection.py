"""Which layers and which linear maps a step touches (explicit; default: every linear of every layer)."""

from __future__ import annotations

import re
from typing import Callable, Sequence

from ..errors import ArgumentError
from ..models.adapters.base import ROUTER_ROLE, Adapter, LinearView


def parse_layers(spec: str | Sequence[int] | None, total: int) -> list[int]:
    """``None``/``"all"`` -> every layer; ``"0-5,7"``, ``"-2,-1"`` (from the end), ``"first:2"``,
    ``"last:2"`` or ``[0, 1]`` -> those indices (validated, sorted, unique)."""
    if spec is None or spec == "all":
        return list(range(total))
    if isinstance(spec, str):
        indices: list[int] = []
        for part in spec.split(","):
            named = re.fullmatch(r"\s*(first|last):(\d+)\s*", part)
            if named:
                count = int(named.group(2))
                if not 1 <= count <= total:
                    raise ArgumentError(f"--layers: '{part.strip()}' needs 1..{total} layers")
                indices.extend(range(count) if named.group(1) == "first" else range(total - count, total))
                continue
            match = re.fullmatch(r"\s*(-?\d+)\s*(?:-\s*(-?\d+)\s*)?", part)
            if not match:
                raise ArgumentError(f"--layers: cannot read '{part}' (use e.g. 0-5,7 or -1 or first:2 or last:2)")
            lo = _from_end(int(match.group(1)), total)
            hi = _from_end(int(match.group(2)), total) if match.group(2) is not None else lo
            if hi < lo:
                raise ArgumentError(f"--layers: empty range '{part}'")
            indices.extend(range(lo, hi + 1))
    else:
        indices = [_from_end(int(i), total) for i in spec]
    bad = [i for i in indices if not 0 <= i < total]
    if bad:
        raise ArgumentError(f"--layers: {bad[0]} is out of range; the model has layers 0..{total - 1}")
    return sorted(set(indices))


def _from_end(index: int, total: int) -> int:
    """Negative indices count from the end (-1 is the last layer); too negative stays out of range."""
    if index < 0:
        return index + total if index >= -total else index
    return index


def parse_roles(spec: str | Sequence[str] | None, adapter: Adapter) -> tuple[str, ...]:
    """The roles a step prunes; ``all`` (the default) is every role but an MoE router's."""
    valid = adapter.roles()
    if spec is None or spec == "all":
        return tuple(r for r in valid if r != ROUTER_ROLE)
    roles = [r.strip() for r in spec.split(",")] if isinstance(spec, str) else list(spec)
    unknown = [r for r in roles if r not in valid]
    if unknown:
        raise ArgumentError(f"unknown role '{unknown[0]}' for {adapter.family}: valid roles are {', '.join(valid)}")
    return tuple(r for r in valid if r in roles)


MODULE_ALIASES: dict[str, tuple[str, ...]] = {
    "attn": ("q", "k", "v", "o"),
    "mlp": ("gate", "up", "down", "fc1", "fc2"),
    "all": ("q", "k", "v", "o", "gate", "up", "down", "fc1", "fc2"),
}
# names of the other family's MLP maps: fc1 ≈ gate+up (what reads the MLP input), fc2 ≈ down
MLP_EQUIVALENTS: dict[str, tuple[str, ...]] = {"fc1": ("gate", "up"), "fc2": ("down",), "up+gate": ("gate", "up"),
                                               "gate+up": ("gate", "up"), "down": ("fc2",), "up": ("fc1",)}


def parse_modules(spec: str | Sequence[str] | None, adapter: Adapter) -> tuple[str, ...]:
    """A module selector (``q,k,v,o``, ``attn``, ``mlp``, ``all``, ``fc1``/``up+gate``, ``fc2``/``down``)
    -> the adapter's roles, in data-flow order; unknown names list the valid ones."""
    valid = adapter.roles()
    names = [n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec or ["all"]) if n.strip()]
    chosen: set[str] = set()
    for name in names:
        if name in MODULE_ALIASES:
            chosen.update(r for r in MODULE_ALIASES[name] if r in valid)
        elif name in valid:
            chosen.add(name)
        elif any(r in valid for r in MLP_EQUIVALENTS.get(name, ())):
            chosen.update(r for r in MLP_EQUIVALENTS[name] if r in valid)
        else:
            options = ", ".join([*valid, "attn", "mlp", "all", *(n for n in MLP_EQUIVALENTS if n not in valid)])
            raise ArgumentError(f"unknown module '{name}' for {adapter.family}: valid modules are {options}")
    if not chosen:
        raise ArgumentError("no module selected (e.g. --modules k or attn)")
    return tuple(r for r in valid if r in chosen)


def view_selector(adapter: Adapter, roles: tuple[str, ...]) -> Callable[[int], list[LinearView]]:
    """A function giving the selected views of a layer; fused maps need all their roles selected."""

    def views_for(index: int) -> list[LinearView]:
        chosen = []
        for view in adapter.linears(index):
            hit = [r for r in view.roles if r in roles]
            if hit and len(hit) < len(view.roles):
                raise ArgumentError(
                    f"{view.local_name} fuses roles {','.join(view.roles)} in {adapter.family}; select all of them or none"
                )
            if hit:
                chosen.append(view)
        return chosen

    return views_for
