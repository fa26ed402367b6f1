"""Model loading and architecture adapters."""

from .adapters import ALL_ROLES, Adapter, LinearView, adapter_for, supported_model_types
from .loading import LoadedModel, load_model

__all__ = ["ALL_ROLES", "Adapter", "LinearView", "LoadedModel", "adapter_for", "load_model", "supported_model_types"]
