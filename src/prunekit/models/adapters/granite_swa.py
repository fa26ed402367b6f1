"""Granite with sliding-window attention and attention sinks (granite_swa): Llama's map names plus
one learned sink logit per query head (``self_attn.sinks``), which head removal slices alike."""

from __future__ import annotations

from .llama import LlamaAdapter


class GraniteSwaAdapter(LlamaAdapter):
    family = "granite_swa"
    model_types = ("granite_swa",)

    def head_companions(self):
        return {"self_attn.sinks": "q"}
