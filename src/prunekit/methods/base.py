"""The method contract and registry.

A method is one registered class: it declares what it consumes (``needs``: calibration
statistics, or nothing for data-free methods), its own options as a dataclass (which the CLI
turns into flags and the Python API into keyword arguments), and prunes one decoder layer at a
time through :meth:`Method.prune_layer`, seeing the model only through adapter views.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..capture.layerwise import LayerContext
from ..errors import ArgumentError
from ..models.adapters.base import LinearView
from ..sparsity import SparsityTarget
from ..surgery import apply_mask

_REGISTRY: dict[str, type["Method"]] = {}


@dataclass
class NoOptions:
    """Methods without options of their own."""


class Method:
    """Base class of a pruning method; subclasses register with :func:`register`."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    needs: ClassVar[frozenset[str]] = frozenset()
    Options: ClassVar[type] = NoOptions

    def __init__(self, target: SparsityTarget, options: Any = None):
        self.target = target
        self.options = options if options is not None else self.Options()

    @classmethod
    def parse_options(cls, values: dict[str, Any]) -> Any:
        """Build the options dataclass from keyword values, rejecting unknown names."""
        known = {f.name: f for f in dataclasses.fields(cls.Options)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            valid = ", ".join(known) or "none"
            raise ArgumentError(f"method '{cls.name}' has no option {', '.join(unknown)} (its options: {valid})")
        for key, value in values.items():
            choices = known[key].metadata.get("choices")
            if choices and value not in choices:
                raise ArgumentError(f"--{key.replace('_', '-')} must be one of {', '.join(choices)}, got '{value}'")
        return cls.Options(**values)

    def prune_layer(self, ctx: LayerContext) -> dict[str, dict]:
        """Prune the views of one layer in place; return a report per module name."""
        reports = {}
        for view in ctx.views:
            mask = self.prune_mask(view, ctx)
            reports[view.name] = apply_mask(view, mask)
        return reports

    def prune_mask(self, view: LinearView, ctx: LayerContext) -> torch.Tensor:
        """The boolean mask of weights to remove from ``view`` (``True`` = pruned)."""
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
