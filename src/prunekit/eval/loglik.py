"""Log-likelihood of continuations after a shared prefix, batched.

Few-shot prompts share their demonstrations: the prefix is run once with the KV cache on, and
every (context, continuation) request continues from a copy of that cache, many requests per
forward. Requests are right-padded; padding after a request's last token cannot change its
logits under causal attention, so no attention mask is needed and positions continue from the
prefix as in one long sequence. The result per request is ``Σ log p(continuation | prefix +
context)`` in float32, and whether every continuation token was the greedy choice.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

TOKENS_PER_BATCH = 2048


@dataclass
class Request:
    context: list[int]  # tokens after the shared prefix, before the continuation
    continuation: list[int]


@torch.inference_mode()
def continuation_logliks(model, prefix: list[int], requests: list[Request], *, tokens_per_batch: int = TOKENS_PER_BATCH,
                         progress: bool = False, desc: str = "scoring") -> list[tuple[float, bool]]:
    """``(log-likelihood, greedy)`` of each request's continuation given ``prefix + context``.

    Requests whose ``context + continuation[:-1]`` coincide (a query's one-token label words) share
    one sequence; the language-model head runs only on the positions that predict scored tokens.
    """
    if not requests:
        return []
    if any(not r.continuation for r in requests):
        raise ValueError("every request needs at least one continuation token")
    if not prefix and any(not r.context for r in requests):
        raise ValueError("a request with no prefix needs a context")
    device = next(model.parameters()).device
    cache_arg = cache_keyword(model)
    body, head = model.base_model, model.get_output_embeddings()
    cache = prefix_hidden = None
    if prefix:
        out = body(input_ids=torch.tensor([prefix], device=device), use_cache=True)
        cache, prefix_hidden = getattr(out, "cache", None) or out.past_key_values, out.last_hidden_state[0, -1]
    sequences: dict[tuple[int, ...], list[int]] = {}
    for index, request in enumerate(requests):
        sequences.setdefault(tuple(request.context + request.continuation[:-1]), []).append(index)
    # longest first, so each batch pads little; results are put back in request order
    keys = sorted(sequences, key=len, reverse=True)
    results: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
    for batch in tqdm(_batches(keys, tokens_per_batch), desc=desc, unit="batch", disable=not progress, leave=False):
        width = max(len(batch[0]), 1)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        for row, seq in enumerate(batch):
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        kwargs = {}
        if cache is not None:
            batch_cache = copy.deepcopy(cache)
            batch_cache.batch_repeat_interleave(len(batch))
            kwargs = {cache_arg: batch_cache, "use_cache": True}
        hidden = body(input_ids=ids.to(device), **kwargs).last_hidden_state
        for row, seq in enumerate(batch):
            for index in sequences[seq]:
                request = requests[index]
                start, count = len(request.context), len(request.continuation)
                # position j predicts token j + 1; the first token after the prefix is predicted by
                # the prefix's last position
                states = [prefix_hidden[None]] if start == 0 else []
                states.append(hidden[row, max(start - 1, 0): start + count - 1])
                log_probs = torch.log_softmax(head(torch.cat(states)[-count:]).float(), dim=-1)
                target = torch.tensor(request.continuation, device=log_probs.device)
                picked = log_probs.gather(1, target[:, None]).squeeze(1)
                results[index] = (float(picked.sum()), bool((log_probs.argmax(-1) == target).all()))
    return results


def cache_keyword(model) -> str:
    """The forward's KV-cache argument: ``cache`` in recent transformers, ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _batches(keys: list[tuple[int, ...]], tokens_per_batch: int) -> list[list[tuple[int, ...]]]:
    """Consecutive groups of ``keys`` (longest first) whose padded size stays within ``tokens_per_batch``."""
    batches: list[list[tuple[int, ...]]] = []
    current: list[tuple[int, ...]] = []
    for key in keys:
        if current and max(len(current[0]), 1) * (len(current) + 1) > tokens_per_batch:
            batches.append(current)
            current = []
        current.append(key)
    if current:
        batches.append(current)
    return batches
