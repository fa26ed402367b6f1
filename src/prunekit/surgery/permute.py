"""Permuting the input channels of a linear map together with the rows of the maps that produce them.

If ``y = down(act(gate(x)) * up(x))``, permuting the intermediate channels by ``π`` — the rows
(and biases) of gate and up, and the columns of down — leaves the function unchanged. RIA uses
this to place large scores into different N:M groups while the checkpoint stays a plain one.
"""

from __future__ import annotations

import torch

from ..models.adapters.base import LinearView


@torch.no_grad()
def permute_input_channels(consumer: LinearView, producers: list[LinearView], perm: torch.Tensor) -> None:
    """New input channel ``j`` of ``consumer`` is old channel ``perm[j]``; producers' rows follow."""
    perm = perm.to(consumer.weight.device)
    consumer.set_weight(consumer.weight[:, perm].clone())
    for producer in producers:
        if producer.out_features != perm.numel():
            raise ValueError(f"{producer.name} produces {producer.out_features} channels, not {perm.numel()}")
        producer.set_weight(producer.weight[perm, :].clone())
        bias = getattr(producer.module, "bias", None)
        if bias is not None:
            bias.data.copy_(bias.data[perm].clone())
