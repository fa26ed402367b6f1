"""Calibration and evaluation text from local files (the data root) only."""

from .corpora import CORPORA, resolve_data_root
from .windows import PROTOCOLS, TokenWindows, calibration_windows, evaluation_windows

__all__ = ["CORPORA", "PROTOCOLS", "TokenWindows", "calibration_windows", "evaluation_windows", "resolve_data_root"]
