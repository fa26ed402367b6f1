"""The layer-wise calibration pass and its streaming statistics."""

from .layerwise import LayerContext, layerwise
from .statistics import STATISTICS, InputStatistics, collect_statistics

__all__ = ["STATISTICS", "InputStatistics", "LayerContext", "collect_statistics", "layerwise"]
