"""The layer-wise calibration pass and its streaming statistics."""

from .block_influence import angular_distances, layer_io_statistics, sublayer_influence
from .layerwise import LayerContext, layerwise
from .statistics import STATISTICS, InputStatistics, collect_statistics

__all__ = ["angular_distances", "layer_io_statistics", "sublayer_influence", "STATISTICS", "InputStatistics", "LayerContext", "collect_statistics", "layerwise"]
