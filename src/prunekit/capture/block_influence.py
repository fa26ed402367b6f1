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


def layer_io_statistics(loaded: LoadedModel, calib_ids: torch.Tensor, *, batch_size: int = 1,
                        progress: bool = True, workers: int = 1, executor: str = "process") -> dict[str, torch.Tensor]:
    """``{"bi": (layers,), "cos_mean": (layers,), "last_token": (windows, layers + 1, hidden)}``.

    ``workers > 1`` splits the windows (whole batches) over that many workers, each running its own
    copy of the model on its share — data-parallel, since layer i's input *is* layer i−1's output.
    Per-batch sums come back and are added in window order, so the result is the serial one.
    """
    from ..parallel import make_pool

    module_names = {id(module): name for name, module in loaded.model.named_modules()}
    layer_names = [module_names[id(layer)] for layer in loaded.adapter.decoder_layers()]
    hidden = loaded.adapter.hidden_size
    starts = list(range(0, calib_ids.shape[0], batch_size))
    if workers <= 1 or len(starts) < 2:
        parts = [io_sums(loaded.model, layer_names, hidden, calib_ids, batch_size, progress)]
    else:
        chunks = [starts[len(starts) * w // workers: len(starts) * (w + 1) // workers] for w in range(workers)]
        pool = make_pool(workers, executor)
        try:
            futures = [pool.submit(io_sums, loaded.model, layer_names, hidden,
                                   calib_ids[c[0]: min(c[-1] + batch_size, calib_ids.shape[0])], batch_size, False)
                       for c in chunks if c]
            parts = [future.result() for future in futures]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    # the per-batch rows of every part, in window order: one tensor, whatever the split
    cos_mean = torch.cat([part[0] for part in parts]).sum(0) / torch.cat([part[1] for part in parts]).sum(0)
    last = torch.cat([part[2] for part in parts])
    return {"bi": (1 - cos_mean).float(), "cos_mean": cos_mean.float(), "last_token": last}


@torch.inference_mode()
def io_sums(model: torch.nn.Module, layer_names: list[str], hidden_size: int, calib_ids: torch.Tensor,
            batch_size: int, progress: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward over ``calib_ids``: per batch and layer the sum of cos(input, output) over tokens
    and the token count (``(batches, layers)`` each), and the last-token states ``(windows, layers + 1,
    hidden)``. A pure function of the model and the windows, so it can run in a worker."""
    layers = [model.get_submodule(name) for name in layer_names]
    count = len(layers)
    nsamples = calib_ids.shape[0]
    starts = list(range(0, nsamples, batch_size))
    cos_sums = torch.zeros(len(starts), count, dtype=torch.float64)
    tokens = torch.zeros(len(starts), count, dtype=torch.float64)
    last = torch.zeros(nsamples, count + 1, hidden_size, dtype=torch.float32)
    state = {"batch": 0, "start": 0}
    device = next(model.parameters()).device

    def hook(index: int):
        def record(_module, args, kwargs, output):
            x = (args[0] if args else kwargs["hidden_states"]).float()
            y = _hidden(output).float()
            cos = F.cosine_similarity(x, y, dim=-1)  # (batch, seq): every position counts
            cos_sums[state["batch"], index] = cos.double().sum()
            tokens[state["batch"], index] = cos.numel()
            rows = slice(state["start"], state["start"] + x.shape[0])
            last[rows, index] = x[:, -1].cpu()
            if index == count - 1:
                last[rows, count] = y[:, -1].cpu()
                raise _Done
        return record

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        for batch, start in enumerate(tqdm(starts, desc="block influence", disable=not progress, leave=False)):
            state.update(batch=batch, start=start)
            try:
                model(input_ids=calib_ids[start : start + batch_size].to(device), use_cache=False)
            except _Done:
                pass
    finally:
        for handle in handles:
            handle.remove()
    return cos_sums, tokens, last


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
