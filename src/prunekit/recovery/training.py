"""The recovery training loop shared by LoRA (next-token loss) and distillation.

What is trained: LoRA adapters through ``peft`` on every linear map of the decoder layers
(embeddings and head frozen), merged at the end; or every parameter (``full``). Either way the
zeros of each deliberately sparse map (more than 1% zeros) stay zero: under LoRA the merge would
fill them, so the pattern recorded before training is re-applied after it; under full training the
gradients of those entries are masked (AdamW without weight decay then never moves them) and the
pattern is re-applied at the end all the same, and the report counts how many had moved (0 when
the masking works). AdamW, linear warm-up then linear decay, gradient clipping at 1.0.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..errors import ArgumentError, NumericalError
from ..models.loading import LoadedModel

SPARSE_MODULE_THRESHOLD = 0.01  # a map with more zeros than this is treated as deliberately sparse

# (model to call, batch of token ids, index of the batch's first window) -> (loss to minimise, its named
# parts for the report)
LossFn = Callable[[torch.nn.Module, torch.Tensor, int], tuple[torch.Tensor, dict[str, float]]]


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
    # windows drawn after the training ones (the same seeded sampler) on which the objective is
    # measured before and after training: each step's loss is on a fresh batch, so the curve mixes
    # how hard a batch is with what was learnt; these windows are the same at both ends
    heldout: int = 8

    def validate(self) -> None:
        checks = [(self.steps >= 1, "--steps must be at least 1"), (self.lr > 0, "--lr must be positive"),
                  (self.batch_size >= 1, "--batch-size must be at least 1"), (self.seqlen >= 2, "--seqlen must be at least 2"),
                  (self.rank >= 1, "--rank must be at least 1"), (self.alpha > 0, "--alpha must be positive"),
                  (0 <= self.dropout < 1, "--dropout must be in [0, 1)"),
                  (0 <= self.warmup_fraction < 1, "--warmup-fraction must be in [0, 1)"),
                  (self.heldout >= 0, "--heldout must be at least 0")]
        for ok, message in checks:
            if not ok:
                raise ArgumentError(message)


def sparse_masks(loaded: LoadedModel) -> dict[str, torch.Tensor]:
    """The zero pattern (in the module's own layout) of every deliberately sparse decoder linear."""
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


@torch.no_grad()
def _heldout_loss(model: torch.nn.Module, ids: torch.Tensor, first: int, batch_size: int, loss_fn: LossFn) -> float | None:
    """Mean objective over the held-out windows ``ids[first:]`` (dropout off), or None without any."""
    if first >= ids.shape[0]:
        return None
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(first, ids.shape[0], batch_size):
        batch = ids[start : start + batch_size].to(device)
        total += loss_fn(model, batch, start)[0].item() * batch.shape[0]
        count += batch.shape[0]
    model.train(was_training)
    return total / count


def train(loaded: LoadedModel, settings: LoraSettings, ids: torch.Tensor, loss_fn: LossFn, *, params: str = "lora",
          progress: bool = True, desc: str = "LoRA") -> dict:
    """Train ``loaded`` in place on the first ``steps × batch_size`` windows of ``ids`` with
    ``loss_fn``, measuring it on the rest (held out) before and after; return the losses (total
    and parts per step, held-out at both ends) and what happened to the sparse maps."""
    started = time.perf_counter()
    model = loaded.model
    trained_windows = settings.steps * settings.batch_size
    before = _heldout_loss(model, ids, trained_windows, settings.batch_size, loss_fn)
    masks = sparse_masks(loaded)
    modules = {view.name: view.module for i in range(loaded.adapter.num_layers()) for view in loaded.adapter.linears(i)}
    hooks = []
    if params == "lora":
        from peft import LoraConfig, get_peft_model

        transposed = any(v.transposed for v in loaded.adapter.linears(0))
        torch.manual_seed(settings.seed)
        config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                            target_modules=list(modules), fan_in_fan_out=transposed, bias="none", task_type="CAUSAL_LM")
        trained = get_peft_model(model, config)
        trainable = [p for p in trained.parameters() if p.requires_grad]
    else:
        trained = model
        for p in model.parameters():
            p.requires_grad_(True)
        trainable = [p for p in model.parameters()]
        for name, mask in masks.items():  # pruned entries get no gradient, so AdamW leaves them at zero
            hooks.append(modules[name].weight.register_hook(lambda grad, mask=mask: grad.masked_fill(mask, 0.0)))
    optimizer = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=0.0)
    warmup = max(1, math.ceil(settings.warmup_fraction * settings.steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _schedule(s, settings.steps, warmup))
    if settings.checkpointing:
        trained.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if params == "lora":
            trained.enable_input_require_grads()
    device = next(model.parameters()).device
    losses: list[float] = []
    parts: dict[str, list[float]] = {}
    trained.train()
    bar = tqdm(range(settings.steps), desc=desc, disable=not progress)
    try:
        for step in bar:
            batch = ids[step * settings.batch_size : (step + 1) * settings.batch_size].to(device)
            loss, named = loss_fn(trained, batch, step * settings.batch_size)
            if not torch.isfinite(loss):
                raise NumericalError(f"{desc} loss became {loss.item()} at step {step}; lower --lr")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            for key, value in named.items():
                parts.setdefault(key, []).append(round(value, 5))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    finally:
        for hook in hooks:
            hook.remove()
        if settings.checkpointing:
            trained.gradient_checkpointing_disable()
        if params == "lora":
            merged = trained.merge_and_unload()
            assert merged is model, "peft returned a new model object; prunekit keeps the loaded one"
        else:
            for p in model.parameters():
                p.requires_grad_(False)
    model.eval()
    model.config.use_cache = False
    moved, zero_fraction = {}, {}
    with torch.no_grad():
        for name, mask in masks.items():
            weight = modules[name].weight
            moved[name] = int((weight[mask] != 0).sum())
            zero_fraction[name] = round((weight == 0).float().mean().item(), 6)
            weight.masked_fill_(mask, 0.0)
    after = _heldout_loss(model, ids, trained_windows, settings.batch_size, loss_fn)
    tenth = max(1, len(losses) // 10)
    return {
        "losses": [round(x, 5) for x in losses], "loss_parts": parts,
        # means over the first and the last tenth of the steps (each step its own batch)
        "loss_first": sum(losses[:tenth]) / tenth, "loss_last": sum(losses[-tenth:]) / tenth,
        "heldout_loss_before": before, "heldout_loss_after": after,
        "heldout_windows": ids.shape[0] - trained_windows,
        "trainable_params": sum(p.numel() for p in trainable), "params": params,
        "tokens": settings.steps * settings.batch_size * settings.seqlen,
        "masked_modules": len(masks),
        # LoRA: how many pruned entries the merge had filled; full: how many moved despite the masked gradients
        "pruned_entries_moved_before_remask": sum(moved.values()),
        "zero_fraction_after_merge_before_remask": zero_fraction,
        "seconds": round(time.perf_counter() - started, 3),
    }
