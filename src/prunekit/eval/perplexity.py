"""Perplexity by the SparseGPT/Wanda protocol (see specs/evaluation.md).

Sum the token negative log-likelihoods of positions 1..seqlen-1 of every window (shifted labels,
no cache) and report ``exp(total_nll / predicted_tokens)``. The reference multiplies the mean
window loss by ``seqlen`` although only ``seqlen - 1`` tokens are predicted; dividing by the
predicted count is exact, and the difference is tiny for long windows.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..allocator import freed_memory_retained
from ..data.windows import TokenWindows

TOKENS_PER_BATCH = 4096


def default_batch_size(seqlen: int) -> int:
    return max(1, TOKENS_PER_BATCH // seqlen)


@torch.inference_mode()
def perplexity(model, windows: TokenWindows, *, batch_size: int | None = None, progress: bool = True,
               desc: str = "perplexity") -> dict:
    """Perplexity of ``model`` on ``windows``; also the NLL sum, token count and seconds."""
    with freed_memory_retained():  # the batches' buffers are reused, not faulted in afresh
        return _perplexity(model, windows, batch_size, progress, desc)


def _perplexity(model, windows: TokenWindows, batch_size: int | None, progress: bool, desc: str) -> dict:
    ids = windows.ids
    count, seqlen = ids.shape
    batch_size = batch_size or default_batch_size(seqlen)
    device = next(model.parameters()).device
    total_nll = 0.0
    predicted = 0
    started = time.perf_counter()
    bar = tqdm(range(0, count, batch_size), desc=desc, unit="batch", disable=not progress, leave=False)
    for start in bar:
        batch = ids[start : start + batch_size].to(device)
        logits = model(input_ids=batch, use_cache=False).logits
        shift_logits = logits[:, :-1, :].float().reshape(-1, logits.shape[-1])
        labels = batch[:, 1:].reshape(-1)
        nll = F.cross_entropy(shift_logits, labels, reduction="sum")
        total_nll += float(nll)
        predicted += labels.numel()
        bar.set_postfix(ppl=f"{math.exp(total_nll / predicted):.3f}")
    return {
        "ppl": math.exp(total_nll / predicted),
        "nll_sum": total_nll,
        "predicted_tokens": predicted,
        "windows": count,
        "seqlen": seqlen,
        "seconds": round(time.perf_counter() - started, 3),
    }
