"""A module's own view of the model config, for families whose forward reads layer shapes from it.

Phi-3's attention splits its fused ``qkv_proj`` output at ``config.num_attention_heads ×
head_dim`` — read from the config object every layer shares — so after one layer loses heads it
needs its own head count while every other field (the attention implementation a user switches
later, the sliding window, rotary settings) must still come from the shared config.
:class:`LayerConfig` is that: the shared config with a few fields overridden, set on the module
as its ``config``. The same class is written into ``modeling_prunekit.py`` (``io/shapes.py``),
which rebuilds it from ``prunekit_shapes["configs"]`` on reload.
"""

from __future__ import annotations

from typing import Any

from torch import nn


class LayerConfig:
    """``base`` (the model's config) with the fields in ``own`` replaced; everything else, and any
    later change to ``base``, is read through."""

    def __init__(self, base: Any, own: dict[str, Any]):
        self.__dict__["_base"] = base
        self.__dict__["_own"] = dict(own)

    def __getattr__(self, name: str) -> Any:
        own = self.__dict__.get("_own")
        if own is None:  # during unpickling, before __setstate__
            raise AttributeError(name)
        return own[name] if name in own else getattr(self.__dict__["_base"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.__dict__["_own"]:
            self.__dict__["_own"][name] = value
        else:
            setattr(self.__dict__["_base"], name, value)

    def __getstate__(self) -> dict:
        return {"base": self.__dict__["_base"], "own": self.__dict__["_own"]}

    def __setstate__(self, state: dict) -> None:
        self.__dict__["_base"] = state["base"]
        self.__dict__["_own"] = state["own"]

    @property
    def own(self) -> dict[str, Any]:
        return dict(self.__dict__["_own"])


def set_own_config_fields(module: nn.Module, fields: dict[str, Any]) -> None:
    """Give ``module`` its own values of ``fields`` over the config it reads (made a
    :class:`LayerConfig` the first time)."""
    config = module.config
    if isinstance(config, LayerConfig):
        config.__dict__["_own"].update(fields)
    else:
        module.config = LayerConfig(config, fields)
