"""Layer input/output statistics of the dense model in one streaming forward pass.

For every decoder layer i, hooks see its input ``x_i`` (the residual stream entering it) and its
output ``x_{i+1}`` (before any final norm) and accumulate, over every token of every window,
the cosine similarity between the two — Block Influence is ``BI_i = 1 − mean cos``. The hidden
state of the last token at every layer boundary is kept too (the angular-distance metric of
Gromov et al. compares layer l's input with layer l+n−1's output there). Only one batch of
activations is alive at a time; the forward stops after the last layer (no LM head).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..models.loading import LoadedModel


class _Done(Exception):
    """Raised after the last decoder layer: nothing after it is needed."""


def _hidden(value) -> torch.Tensor:
    return value[0] if isinstance(value, (tuple, list)) else value


@torch.inference_mode()
def layer_io_statistics(loaded: LoadedModel, calib_ids: torch.Tensor, *, batch_size: int = 1,
                        progress: bool = True) -> dict[str, torch.Tensor]:
    """``{"bi": (layers,), "cos_mean": (layers,), "last_token": (windows, layers + 1, hidden)}``."""
    layers = loaded.adapter.decoder_layers()
    count = len(layers)
    nsamples = calib_ids.shape[0]
    cos_sum = torch.zeros(count, dtype=torch.float64)
    tokens = torch.zeros(count, dtype=torch.float64)
    last = torch.zeros(nsamples, count + 1, loaded.adapter.hidden_size, dtype=torch.float32)
    state = {"start": 0}

    def hook(index: int):
        def record(_module, args, kwargs, output):
            x = (args[0] if args else kwargs["hidden_states"]).float()
            y = _hidden(output).float()
            cos = F.cosine_similarity(x, y, dim=-1)  # (batch, seq): every position counts
            cos_sum[index] += float(cos.double().sum())
            tokens[index] += cos.numel()
            rows = slice(state["start"], state["start"] + x.shape[0])
            last[rows, index] = x[:, -1].cpu()
            if index == count - 1:
                last[rows, count] = y[:, -1].cpu()
                raise _Done
        return record

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        for start in tqdm(range(0, nsamples, batch_size), desc="block influence", disable=not progress, leave=False):
            state["start"] = start
            try:
                loaded.model(input_ids=calib_ids[start : start + batch_size].to(loaded.device), use_cache=False)
            except _Done:
                pass
    finally:
        for handle in handles:
            handle.remove()
    cos_mean = cos_sum / tokens
    return {"bi": (1 - cos_mean).float(), "cos_mean": cos_mean.float(), "last_token": last}


def angular_distances(last_token: torch.Tensor, n: int) -> torch.Tensor:
    """Mean over windows of ``arccos(cos(h_l, h_{l+n})) / π`` for every start ``l`` (Gromov et al.)."""
    starts = last_token.shape[1] - n
    cos = F.cosine_similarity(last_token[:, :starts].double(), last_token[:, n:].double(), dim=-1)
    return (torch.arccos(cos.clamp(-1, 1)) / torch.pi).mean(0).float()


@torch.inference_mode()
def sublayer_influence(loaded: LoadedModel, calib_ids: torch.Tensor, *, batch_size: int = 1,
                       progress: bool = True) -> dict[str, torch.Tensor]:
    """BI of the attention and the MLP block of every layer: ``{"attn": (layers,), "mlp": (layers,)}``.

    With ``a`` the attention block's contribution to the residual stream (the output of its
    output projection), ``BI_attn = 1 − mean cos(x, x + a)`` and ``BI_mlp = 1 − mean cos(x + a, y)``.
    """
    adapter = loaded.adapter
    layers = adapter.decoder_layers()
    count = len(layers)
    sums = {"attn": torch.zeros(count, dtype=torch.float64), "mlp": torch.zeros(count, dtype=torch.float64)}
    tokens = torch.zeros(count, dtype=torch.float64)
    contribution: dict[int, torch.Tensor] = {}

    def attn_hook(index: int):
        def record(_module, _args, output):
            contribution[index] = _hidden(output).float()
        return record

    def layer_hook(index: int):
        def record(_module, args, kwargs, output):
            x = (args[0] if args else kwargs["hidden_states"]).float()
            y = _hidden(output).float()
            h = x + contribution.pop(index)
            sums["attn"][index] += float(F.cosine_similarity(x, h, dim=-1).double().sum())
            sums["mlp"][index] += float(F.cosine_similarity(h, y, dim=-1).double().sum())
            tokens[index] += x.shape[0] * x.shape[1]
            if index == count - 1:
                raise _Done
        return record

    handles = []
    for index, layer in enumerate(layers):
        o_view = next(v for v in adapter.linears(index) if "o" in v.roles)
        handles.append(o_view.module.register_forward_hook(attn_hook(index)))
        handles.append(layer.register_forward_hook(layer_hook(index), with_kwargs=True))
    try:
        for start in tqdm(range(0, calib_ids.shape[0], batch_size), desc="sub-layer influence",
                          disable=not progress, leave=False):
            try:
                loaded.model(input_ids=calib_ids[start : start + batch_size].to(loaded.device), use_cache=False)
            except _Done:
                pass
    finally:
        for handle in handles:
            handle.remove()
    return {kind: (1 - total / tokens).float() for kind, total in sums.items()}
