"""prunekit: prune Hugging Face causal LMs and measure what the pruning cost."""

__version__ = "0.1.0"

from .api import (  # noqa: E402
    build_record, check_sparsity, default_seqlen, evaluate_icl, evaluate_perplexity, evaluate_zero_shot, export_gguf, load, materialize, measure_llamacpp, prune, recover, save, search_svd,
    spectra,
)
from .errors import PrunekitError  # noqa: E402
from .recipe import CalibrationSettings, Step  # noqa: E402
from .recovery import LoraSettings  # noqa: E402
from .sparsity import SparsityTarget  # noqa: E402

__all__ = [
    "CalibrationSettings", "LoraSettings", "PrunekitError", "SparsityTarget", "Step", "build_record", "check_sparsity",
    "default_seqlen", "evaluate_icl", "evaluate_perplexity",
    "evaluate_zero_shot", "export_gguf", "load", "materialize", "measure_llamacpp", "prune", "recover", "save", "search_svd", "spectra",
    "__version__",
]
