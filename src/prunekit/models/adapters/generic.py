"""The adapter of a model prunekit has no family adapter for: enough to evaluate and inspect it.

Perplexity, zero-shot and ICL scoring, ``bench``, ``check`` and ``report`` need only the model's
forward pass, its context length and, for ``check``, the linear maps of its decoder layers — none
of which needs roles. This adapter finds the decoder layers structurally (the module list whose
length is the config's layer count) and lists every ``nn.Linear`` of a layer, each its own input
group and without a role. Pruning refuses it (``prunable = False``): methods see maps by role.
"""

from __future__ import annotations

from torch import nn

from ...errors import UnsupportedArchitectureError
from .base import Adapter, LinearView

LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")


def text_config(config):
    """The decoder's own config (a composite model's text part; the config itself otherwise)."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def layer_count_fields(config) -> list[tuple[str, int]]:
    """``(field, value)`` for each layer count a config declares, stored fields before computed
    properties (LongCat-Flash's ``num_hidden_layers`` property counts two sublayers per layer;
    its stored ``num_layers`` is the number of decoder layers)."""
    fields = [(key, getattr(config, key)) for key in LAYER_COUNT_KEYS if isinstance(getattr(config, key, None), int)]
    return sorted(fields, key=lambda field: isinstance(getattr(type(config), field[0], None), property))


def config_layer_count(config) -> int | None:
    """The number of decoder layers a config declares, whichever field its family names it by."""
    fields = layer_count_fields(config)
    return fields[0][1] if fields else None


class GenericAdapter(Adapter):
    family = "generic"
    prunable = False

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.config = text_config(model.config)
        self.layers_path, self.depth_key = self._find_layers()

    def _find_layers(self) -> tuple[str, str]:
        """The decoder layers' module list and the config field counting them."""
        lists = [(name, len(module)) for name, module in self.model.named_modules()
                 if isinstance(module, nn.ModuleList) and name]
        fields = layer_count_fields(self.config)
        for key, count in fields:
            for name, length in lists:
                if length == count:
                    return name, key
        counts = " or ".join(str(count) for _, count in fields) or "?"
        self.missing_layers = (f"model type '{getattr(self.model.config, 'model_type', '?')}': no module list of its "
                               f"{counts} decoder layers was found")
        return "", fields[0][0] if fields else "num_hidden_layers"

    def decoder_layers(self) -> nn.ModuleList:
        if not self.layers_path:  # evaluation needs none; what needs layers stops here, saying why
            raise UnsupportedArchitectureError(self.missing_layers)
        return super().decoder_layers()

    def linear_specs(self) -> list[tuple[str, tuple[str, ...], str]]:
        return self._specs(0)

    def _specs(self, index: int) -> list[tuple[str, tuple[str, ...], str]]:
        layer = self.decoder_layers()[index]
        return [(name, (), name) for name, module in layer.named_modules() if isinstance(module, nn.Linear)]

    def linears(self, index: int) -> list[LinearView]:
        # layers may differ (MoE and dense layers mixed): each layer lists its own linears
        layer = self.decoder_layers()[index]
        return [LinearView(name=f"{self.layer_prefix(index)}.{name}", local_name=name, roles=roles,
                           module=layer.get_submodule(name), input_group=group)
                for name, roles, group in self._specs(index)]

    @property
    def hidden_size(self) -> int:
        for key in ("hidden_size", "n_embd", "d_model"):
            if getattr(self.config, key, None):
                return int(getattr(self.config, key))
        raise UnsupportedArchitectureError("the config names no hidden size")
