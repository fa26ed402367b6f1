"""Exporting pruned checkpoints to the runtimes people serve them with (GGUF for llama.cpp)."""

from .gguf_export import check_gguf_output, check_outtype, export_gguf
from .llamacpp import OUTTYPES, LlamaCppError

__all__ = ["OUTTYPES", "LlamaCppError", "check_gguf_output", "check_outtype", "export_gguf"]
