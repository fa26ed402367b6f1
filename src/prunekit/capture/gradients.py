"""Gradients of the calibration LM loss with respect to chosen weights (for Taylor importance).

Only the weights that are scored get ``requires_grad``; everything else (embeddings, norms, LM
head) is frozen, so no gradient memory is spent on it. Each window gets its own backward pass:
the mean gradient ``ḡ = (1/N) Σ gᵢ`` (the gradient of the mean loss over equal-length windows)
and, when asked, the empirical Fisher diagonal ``F = (1/N) Σ gᵢ²`` — LLM-Pruner's second-order
term — accumulate in float32 whatever the model dtype. ``checkpointing`` trades compute for
activation memory on long windows or large models.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import NumericalError


@contextmanager
def _grad_only_for(model: nn.Module, params: list[nn.Parameter], checkpointing: bool) -> Iterator[None]:
    saved = {p: p.requires_grad for p in model.parameters()}
    was_training = model.training
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.train()  # transformers checkpoints only in training mode; dropout is switched off below
            for module in model.modules():
                if isinstance(module, nn.Dropout):
                    module.eval()
        yield
    finally:
        if checkpointing:
            model.gradient_checkpointing_disable()
        model.train(was_training)
        for p, flag in saved.items():
            p.requires_grad_(flag)
            p.grad = None


def weight_gradients(
    model: nn.Module,
    params: list[nn.Parameter],
    calib_ids: torch.Tensor,
    *,
    fisher: bool = False,
    checkpointing: bool = False,
    progress: bool = True,
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None, float]:
    """``(mean gradients, Fisher diagonals or None, mean loss)`` for ``params`` over the windows."""
    device = params[0].device
    grads = [torch.zeros(p.shape, dtype=torch.float32, device=device) for p in params]
    fishers = [torch.zeros(p.shape, dtype=torch.float32, device=device) for p in params] if fisher else None
    n = calib_ids.shape[0]
    total_loss = 0.0
    with _grad_only_for(model, params, checkpointing):
        for row in tqdm(range(n), desc="gradients", disable=not progress, leave=False):
            ids = calib_ids[row : row + 1].to(device)
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            if not torch.isfinite(loss):
                raise NumericalError(f"calibration loss is {loss.item()} on window {row}")
            loss.backward()
            total_loss += loss.item()
            for i, p in enumerate(params):
                g = p.grad.float()
                grads[i].add_(g, alpha=1.0 / n)
                if fishers is not None:
                    fishers[i].addcmul_(g, g, value=1.0 / n)
                p.grad = None
    return grads, fishers, total_loss / n
