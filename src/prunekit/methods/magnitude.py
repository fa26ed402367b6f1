"""Magnitude pruning: remove the smallest ``|W|`` — the data-free baseline every paper reports."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..sparsity import select_mask
from .base import LayerParallelOptions, Method, ViewResult, register, validate_parallel


@dataclass
class MagnitudeOptions(LayerParallelOptions):
    group: str = field(
        default="matrix",
        metadata={"choices": ("matrix", "row"),
                  "help": "comparison group for unstructured sparsity: one threshold per matrix (the "
                          "magnitude and RIA default) or per output row"},
    )


@register
class Magnitude(Method):
    name = "magnitude"
    summary = "smallest |W| per matrix (or per row); N:M keeps the N largest of every M inputs"
    Options = MagnitudeOptions

    @classmethod
    def validate_options(cls, options):
        validate_parallel(options)

    def prune_view(self, view, ctx):
        return ViewResult(select_mask(view.weight.abs().float(), self.target_for(view), per_row=self.options.group == "row"))
