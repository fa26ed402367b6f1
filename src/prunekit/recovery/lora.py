"""LoRA recovery of a pruned model (``peft``), merged into the weights at the end.

Adapters go on every linear map inside the decoder layers (the maps pruning touched; embeddings
and the LM head stay frozen), trained with the causal-LM loss on seeded windows of a local
corpus (C4 train sample by default — not an evaluation split) under a step budget; the loop, the
schedule and the kept zero pattern are :mod:`prunekit.recovery.training`'s.
"""

from __future__ import annotations

import os
from dataclasses import asdict

from ..data import calibration_windows, resolve_data_root
from ..errors import ArgumentError
from ..models.loading import LoadedModel
from .training import LoraSettings, train

__all__ = ["LoraSettings", "recover_lora", "training_windows"]


def training_windows(loaded: LoadedModel, settings: LoraSettings, data_root: str | os.PathLike | None):
    """The seeded windows of a recovery run: ``steps × batch_size`` of ``seqlen`` tokens to train
    on, then ``heldout`` more from the same sampler (a longer draw keeps the first ones)."""
    settings.validate()
    if settings.seqlen > loaded.adapter.max_context:
        raise ArgumentError(f"--seqlen {settings.seqlen} is longer than the model's context ({loaded.adapter.max_context})")
    return calibration_windows(loaded.tokenizer, settings.data, nsamples=settings.steps * settings.batch_size + settings.heldout,
                               seqlen=settings.seqlen, seed=settings.seed, data_root=resolve_data_root(data_root))


def _next_token_loss(model, batch, start):
    loss = model(input_ids=batch, labels=batch, use_cache=False).loss
    return loss, {"ce": loss.item()}


def recover_lora(
    loaded: LoadedModel,
    settings: LoraSettings | None = None,
    *,
    data_root: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict:
    """Train LoRA adapters on ``loaded`` in place, merge them, keep sparsity; return the report."""
    settings = settings or LoraSettings()
    windows = training_windows(loaded, settings, data_root)
    report = train(loaded, settings, windows.ids, _next_token_loss, params="lora", progress=progress, desc="LoRA")
    return {"settings": asdict(settings), "calibration": windows.provenance, "objective": "lm", **report}
