"""Recovering quality after pruning: LoRA on the next-token loss, or distillation from the dense
model (LoRA or all weights); masks kept either way."""

from .distill import KdSettings, recover_kd
from .lora import LoraSettings, recover_lora

__all__ = ["KdSettings", "LoraSettings", "recover_kd", "recover_lora"]
