"""Outputs: atomic Hugging Face directories and the ``prunekit.json`` run record."""

from .record import peak_rss_mb, versions
from .save import RECORD_NAME, atomic_directory, check_output_path, save_model, write_json

__all__ = ["RECORD_NAME", "atomic_directory", "check_output_path", "peak_rss_mb", "save_model", "versions", "write_json"]
