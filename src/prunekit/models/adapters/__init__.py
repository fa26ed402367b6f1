"""Architecture adapters, one file per family; :func:`adapter_for` picks one by ``model_type``."""

from __future__ import annotations

from torch import nn

from ...errors import UnsupportedArchitectureError
from .base import ALL_ROLES, ROUTER_ROLE, Adapter, LinearView
from .bloom import BloomAdapter
from .codegen import CodeGenAdapter
from .cohere import CohereAdapter
from .falcon import FalconAdapter
from .gemma import GemmaAdapter
from .gemma4 import Gemma4Adapter
from .glm import GlmAdapter
from .generic import GenericAdapter
from .gpt2 import GPT2Adapter
from .gpt_bigcode import GPTBigCodeAdapter
from .gpt_neo import GPTNeoAdapter
from .gpt_neox import GPTNeoXAdapter
from .gptj import GPTJAdapter
from .granite_swa import GraniteSwaAdapter
from .helium import HeliumAdapter
from .llama import LlamaAdapter
from .moe import MlaAdapter, MoeAdapter
from .olmo2 import Olmo2Adapter
from .opt import OPTAdapter
from .phi import PhiAdapter
from .phi3 import Phi3Adapter
from .stablelm import StableLmAdapter
from .starcoder2 import StarCoder2Adapter
from .structural import StructuralAdapter, unprunable_reason
from .ungated import UngatedMLPAdapter

ADAPTERS: tuple[type[Adapter], ...] = (LlamaAdapter, GemmaAdapter, CohereAdapter, Olmo2Adapter, UngatedMLPAdapter,
                                       GraniteSwaAdapter, StableLmAdapter, HeliumAdapter,
                                       StarCoder2Adapter, PhiAdapter, Phi3Adapter, GlmAdapter, GPTJAdapter,
                                       GPTBigCodeAdapter, OPTAdapter, GPTNeoXAdapter, GPT2Adapter,
                                       GPTNeoAdapter, MoeAdapter, MlaAdapter, FalconAdapter, BloomAdapter,
                                       CodeGenAdapter, Gemma4Adapter)


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


def fallback_adapter_class(config) -> type[Adapter]:
    """For a model type without a family file: the structural adapter, or — for recurrent and
    hybrid models it cannot prune — the role-less one that evaluation needs."""
    return GenericAdapter if unprunable_reason(config) else StructuralAdapter


def adapter_for(model: nn.Module, require_family: bool = True) -> Adapter:
    """The adapter serving ``model``: its family's; for a type without one, a clear error, or (when
    ``require_family`` is False) the structural fallback (:func:`fallback_adapter_class`)."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None) or "<no config>"
    if not require_family and not has_family_adapter(model_type):
        return fallback_adapter_class(config)(model)
    return adapter_class_for(model_type)(model)


__all__ = ["ALL_ROLES", "ADAPTERS", "ROUTER_ROLE", "Adapter", "GenericAdapter", "LinearView", "StructuralAdapter",
           "adapter_for", "adapter_class_for", "fallback_adapter_class", "has_family_adapter", "supported_model_types",
           "unprunable_reason"]
