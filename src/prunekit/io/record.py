"""The run record written as ``prunekit.json``: what was done, on what data, with which versions."""

from __future__ import annotations

import platform
import resource
import sys


def versions() -> dict:
    import torch
    import transformers

    from .. import __version__

    return {
        "prunekit": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)
