"""Recipes: an ordered list of steps, each a registered method with its target and options.

The CLI's ``prunekit prune`` flags build a one-step recipe; the Python API takes the same
:class:`Step`. Every step is validated (method, options, target, selection) before any work.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import ArgumentError
from .methods import get_method
from .sparsity import SparsityTarget


@dataclass
class CalibrationSettings:
    """Where calibration windows come from (the spec's defaults: 128 C4 windows, seed 0)."""

    corpus: str | None = None  # None: the method's default (C4; PG19 for depth methods)
    nsamples: int | None = None  # None: the method's default (128; LLM-Pruner 10)
    seqlen: int | None = None  # None: the method's default, else the model's context capped at 4096
    seed: int = 0
    batch_size: int | None = None  # None: 4096 tokens per layer forward (attention scores grow with seqlen²)

    def batch_for(self, seqlen: int) -> int:
        return self.batch_size or max(1, 4096 // seqlen)

    def validate(self) -> None:
        if self.nsamples is not None and self.nsamples < 1:
            raise ArgumentError(f"--nsamples must be at least 1 (got {self.nsamples})")
        if self.seqlen is not None and self.seqlen < 2:
            raise ArgumentError(f"--seqlen must be at least 2 (got {self.seqlen})")
        if self.batch_size is not None and self.batch_size < 1:
            raise ArgumentError(f"--calib-batch-size must be at least 1 (got {self.batch_size})")


@dataclass
class Step:
    """One pruning step: ``method`` at ``sparsity`` or ``pattern`` on the selected roles/layers."""

    method: str
    sparsity: float | None = None
    pattern: str | None = None
    roles: str | list[str] | None = None
    layers: str | list[int] | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def validated(self):
        """``(method class, parsed options, target)``; raises before any work on bad input."""
        method_cls = get_method(self.method)
        options = method_cls.parse_options(dict(self.options))
        if method_cls.kind == "depth":
            if self.sparsity is not None or self.pattern is not None:
                raise ArgumentError(f"{self.method} removes whole layers: use --remove-layers, --remove-fraction "
                                    "or --layers, not --sparsity/--pattern")
            if self.roles is not None:
                raise ArgumentError(f"{self.method} removes whole layers; --roles does not apply")
            return method_cls, options, None
        if method_cls.kind == "width":
            for flag, value in (("--sparsity", self.sparsity), ("--pattern", self.pattern), ("--roles", self.roles),
                                ("--layers", self.layers)):
                if value is not None:
                    raise ArgumentError(f"{self.method} removes whole heads and channels: {flag} does not apply "
                                        "(use --ratio or --param-ratio, --units and --layer-range)")
            return method_cls, options, None
        if method_cls.kind == "lowrank":
            for flag, value in (("--sparsity", self.sparsity), ("--pattern", self.pattern), ("--roles", self.roles)):
                if value is not None:
                    raise ArgumentError(f"{self.method} replaces matrices by low-rank products: {flag} does not apply "
                                        "(use --rate, --modules and --layers)")
            return method_cls, options, None
        target = SparsityTarget.parse(self.sparsity, self.pattern)
        return method_cls, options, target

    def to_dict(self) -> dict:
        return {key: value for key, value in asdict(self).items() if value not in (None, {}, [])}

    @classmethod
    def from_dict(cls, data: dict) -> "Step":
        known = {"method", "sparsity", "pattern", "roles", "layers", "options"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ArgumentError(f"step has unknown keys {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        if "method" not in data:
            raise ArgumentError("step has no 'method'")
        return cls(**data)
