"""Architecture adapters, one file per family; :func:`adapter_for` picks one by ``model_type``."""

from __future__ import annotations

from torch import nn

from ...errors import UnsupportedArchitectureError
from .base import ALL_ROLES, Adapter, LinearView
from .generic import GenericAdapter
from .gpt2 import GPT2Adapter
from .gpt_neo import GPTNeoAdapter
from .gpt_neox import GPTNeoXAdapter
from .llama import LlamaAdapter
from .opt import OPTAdapter

ADAPTERS: tuple[type[Adapter], ...] = (LlamaAdapter, OPTAdapter, GPTNeoXAdapter, GPT2Adapter, GPTNeoAdapter)


def supported_model_types() -> list[str]:
    return sorted(t for cls in ADAPTERS for t in cls.model_types)


def has_family_adapter(model_type: str) -> bool:
    return any(model_type in cls.model_types for cls in ADAPTERS)


def adapter_class_for(model_type: str) -> type[Adapter]:
    for cls in ADAPTERS:
        if model_type in cls.model_types:
            return cls
    raise UnsupportedArchitectureError(
        f"unsupported architecture '{model_type}': prunekit has adapters for "
        f"{', '.join(supported_model_types())}"
    )


def adapter_for(model: nn.Module, require_family: bool = True) -> Adapter:
    """The adapter serving ``model``; for a family without one, a clear error, or (when
    ``require_family`` is False) the role-less :class:`GenericAdapter` that evaluation needs."""
    model_type = getattr(getattr(model, "config", None), "model_type", None) or "<no config>"
    if not require_family and not has_family_adapter(model_type):
        return GenericAdapter(model)
    return adapter_class_for(model_type)(model)


__all__ = ["ALL_ROLES", "ADAPTERS", "Adapter", "GenericAdapter", "LinearView", "adapter_for", "adapter_class_for", "has_family_adapter", "supported_model_types"]
