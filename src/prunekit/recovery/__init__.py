"""Recovering quality after pruning: LoRA fine-tuning with ``peft``, merged back, masks kept."""

from .lora import LoraSettings, recover_lora

__all__ = ["LoraSettings", "recover_lora"]
