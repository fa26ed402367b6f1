"""Which layers and which linear maps a step touches (explicit; default: every linear of every layer)."""

from __future__ import annotations

import re
from typing import Callable, Sequence

from .errors import ArgumentError
from .models.adapters.base import Adapter, LinearView


def parse_layers(spec: str | Sequence[int] | None, total: int) -> list[int]:
    """``None``/``"all"`` -> every layer; ``"0-5,7"`` or ``[0, 1]`` -> those indices (validated)."""
    if spec is None or spec == "all":
        return list(range(total))
    if isinstance(spec, str):
        indices: list[int] = []
        for part in spec.split(","):
            match = re.fullmatch(r"\s*(-?\d+)\s*(?:-\s*(-?\d+)\s*)?", part)
            if not match:
                raise ArgumentError(f"--layers: cannot read '{part}' (use e.g. 0-5,7)")
            lo = int(match.group(1))
            hi = int(match.group(2)) if match.group(2) is not None else lo
            if hi < lo:
                raise ArgumentError(f"--layers: empty range '{part}'")
            indices.extend(range(lo, hi + 1))
    else:
        indices = [int(i) for i in spec]
    bad = [i for i in indices if not 0 <= i < total]
    if bad:
        raise ArgumentError(f"--layers: {bad[0]} is out of range; the model has layers 0..{total - 1}")
    return sorted(set(indices))


def parse_roles(spec: str | Sequence[str] | None, adapter: Adapter) -> tuple[str, ...]:
    valid = adapter.roles()
    if spec is None or spec == "all":
        return valid
    roles = [r.strip() for r in spec.split(",")] if isinstance(spec, str) else list(spec)
    unknown = [r for r in roles if r not in valid]
    if unknown:
        raise ArgumentError(f"unknown role '{unknown[0]}' for {adapter.family}: valid roles are {', '.join(valid)}")
    return tuple(r for r in valid if r in roles)


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
