"""Pruning methods, one module each, found by importing every module of this package."""

from __future__ import annotations

import importlib
import pkgutil

from ..surgery import apply_mask
from .base import DepthMethod, Execution, Method, available_methods, get_method, register

_discovered = False


def discover() -> None:
    """Import every method module once so each registers itself."""
    global _discovered
    if _discovered:
        return
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")
    _discovered = True


__all__ = ["DepthMethod", "Method", "apply_mask", "available_methods", "discover", "get_method", "register"]
