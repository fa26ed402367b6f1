"""LoRA recovery of a pruned model (``peft``), merged into the weights at the end.

Adapters go on every linear map inside the decoder layers (the maps pruning touched; embeddings
and the LM head stay frozen), trained with the causal-LM loss on seeded windows of a local
corpus (C4 train sample by default — not an evaluation split) under a step budget, AdamW with a
linear warm-up and linear decay, gradient clipping at 1.0. Merging adds ``B·A`` to every weight,
which would fill the zeros of an unstructured or N:M model; so the zero pattern of each sparse
map (more than 1% zeros) is recorded before training and re-applied after the merge, and the
report states the sparsity before and after.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from ..data import calibration_windows, resolve_data_root
from ..errors import ArgumentError, NumericalError
from ..models.loading import LoadedModel

SPARSE_MODULE_THRESHOLD = 0.01  # a map with more zeros than this is treated as deliberately sparse


@dataclass
class LoraSettings:
    """The recovery run: LLM-Pruner's LoRA defaults (r=8, α=16, dropout 0.05, lr 1e-4)."""

    data: str = "c4"
    steps: int = 100
    lr: float = 1e-4
    batch_size: int = 4
    seqlen: int = 256
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    warmup_fraction: float = 0.1
    seed: int = 0
    checkpointing: bool = False

    def validate(self) -> None:
        checks = [(self.steps >= 1, "--steps must be at least 1"), (self.lr > 0, "--lr must be positive"),
                  (self.batch_size >= 1, "--batch-size must be at least 1"), (self.seqlen >= 2, "--seqlen must be at least 2"),
                  (self.rank >= 1, "--rank must be at least 1"), (self.alpha > 0, "--alpha must be positive"),
                  (0 <= self.dropout < 1, "--dropout must be in [0, 1)"),
                  (0 <= self.warmup_fraction < 1, "--warmup-fraction must be in [0, 1)")]
        for ok, message in checks:
            if not ok:
                raise ArgumentError(message)


def _sparse_masks(loaded: LoadedModel) -> dict[str, torch.Tensor]:
    masks = {}
    for index in range(loaded.adapter.num_layers()):
        for view in loaded.adapter.linears(index):
            zeros = view.module.weight == 0
            if zeros.float().mean().item() > SPARSE_MODULE_THRESHOLD:
                masks[view.name] = zeros
    return masks


def _schedule(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def recover_lora(
    loaded: LoadedModel,
    settings: LoraSettings | None = None,
    *,
    data_root: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict:
    """Train LoRA adapters on ``loaded`` in place, merge them, keep sparsity; return the report."""
    from peft import LoraConfig, get_peft_model

    settings = settings or LoraSettings()
    settings.validate()
    if settings.seqlen > loaded.adapter.max_context:
        raise ArgumentError(f"--seqlen {settings.seqlen} is longer than the model's context ({loaded.adapter.max_context})")
    windows = calibration_windows(loaded.tokenizer, settings.data, nsamples=settings.steps * settings.batch_size,
                                  seqlen=settings.seqlen, seed=settings.seed, data_root=resolve_data_root(data_root))
    started = time.perf_counter()
    model = loaded.model
    masks = _sparse_masks(loaded)
    targets = [v.name for i in range(loaded.adapter.num_layers()) for v in loaded.adapter.linears(i)]
    transposed = any(v.transposed for v in loaded.adapter.linears(0))
    torch.manual_seed(settings.seed)
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout, target_modules=targets,
                        fan_in_fan_out=transposed, bias="none", task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=0.0)
    warmup = max(1, math.ceil(settings.warmup_fraction * settings.steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _schedule(s, settings.steps, warmup))
    if settings.checkpointing:
        peft_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        peft_model.enable_input_require_grads()
    device = next(model.parameters()).device
    losses: list[float] = []
    peft_model.train()
    bar = tqdm(range(settings.steps), desc="LoRA", disable=not progress)
    try:
        for step in bar:
            batch = windows.ids[step * settings.batch_size : (step + 1) * settings.batch_size].to(device)
            loss = peft_model(input_ids=batch, labels=batch, use_cache=False).loss
            if not torch.isfinite(loss):
                raise NumericalError(f"LoRA loss became {loss.item()} at step {step}; lower --lr")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    finally:
        if settings.checkpointing:
            peft_model.gradient_checkpointing_disable()
        merged = peft_model.merge_and_unload()
    assert merged is model, "peft returned a new model object; prunekit keeps the loaded one"
    model.eval()
    model.config.use_cache = False
    sparsity_after_merge = {}
    with torch.no_grad():
        for index in range(loaded.adapter.num_layers()):
            for view in loaded.adapter.linears(index):
                mask = masks.get(view.name)
                if mask is not None:
                    sparsity_after_merge[view.name] = round((view.module.weight == 0).float().mean().item(), 6)
                    view.module.weight.masked_fill_(mask, 0.0)
    return {
        "settings": asdict(settings),
        "calibration": windows.provenance,
        "losses": [round(x, 5) for x in losses],
        "loss_first": losses[0], "loss_last": sum(losses[-10:]) / len(losses[-10:]),
        "trainable_params": sum(p.numel() for p in trainable),
        "tokens": settings.steps * settings.batch_size * settings.seqlen,
        "masked_modules": len(masks),
        "zero_fraction_after_merge_before_remask": sparsity_after_merge,
        "seconds": round(time.perf_counter() - started, 3),
    }
