"""Validated search of the SVD clipping rate for few-shot in-context learning.

For each candidate ξ of the grid the selected matrices are set to their rank-r products, built
from SVDs computed once from the *original* weights (each candidate starts from the original
model, not from the previous candidate — the reference clips cumulatively), and few-shot accuracy
is measured on the task's **validation** split only. The best ξ (ties -> the smaller ξ) is then
measured on the **test** split next to the unclipped model with the same demonstrations, and left
applied to the model. ``greedy_layers`` searches one layer at a time, deepest first, each layer's
ξ fixed before the next is searched.
"""

from __future__ import annotations

import time
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..errors import ArgumentError
from ..eval.icl import IclTask, evaluate_icl
from ..models.adapters.base import LinearView
from ..models.loading import LoadedModel
from ..surgery.lowrank import Spectrum, kept_rank

PAPER_GRID = (0.0, 0.1, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995)


class ClippableSet:
    """Selected matrices with their original weights and cached SVDs; ``apply`` sets a rate per matrix."""

    def __init__(self, views: list[LinearView]):
        if not views:
            raise ArgumentError("the module/layer selection matches no matrix")
        self.views = views
        self.originals = [view.weight.detach().clone() for view in views]
        self.spectra = [Spectrum.of(view.weight) for view in views]

    @torch.no_grad()
    def apply(self, rates: dict[str, float]) -> None:
        """Set each view to its rank product at ``rates[name]`` (absent or 0 -> the original weight)."""
        for view, original, spectrum in zip(self.views, self.originals, self.spectra):
            rate = rates.get(view.name, 0.0)
            view.set_weight(original if rate == 0.0 else spectrum.product(kept_rank(rate, spectrum.size)))

    def restore(self) -> None:
        self.apply({})


def validate_grid(grid: list[float]) -> list[float]:
    if not grid:
        raise ArgumentError("--grid is empty")
    for rate in grid:
        kept_rank(rate, 1)
    return sorted({float(rate) for rate in grid})


def search_clipping_rate(loaded: LoadedModel, task: IclTask, views: list[LinearView], *, shots: int,
                         grid: list[float] = list(PAPER_GRID), seed: int = 0, validation_limit: int | None = None,
                         test_limit: int | None = None, greedy_layers: bool = False,
                         layer_of: Callable[[LinearView], int] | None = None, progress: bool = True) -> dict:
    """Search ξ on validation, report test accuracy of the choice and of the unclipped model."""
    grid = validate_grid(grid)
    started = time.perf_counter()
    clippable = ClippableSet(views)

    def accuracy(rates: dict[str, float], split: str, limit: int | None) -> dict:
        clippable.apply(rates)
        result = evaluate_icl(loaded.model, loaded.tokenizer, task, shots=shots, split=split, seed=seed, limit=limit)
        return {k: result[k] for k in ("accuracy", "macro_f1", "examples", "seconds") if k in result}

    groups = [[v for v in views]] if not greedy_layers else _by_layer_deepest_first(views, layer_of)
    chosen: dict[str, float] = {}
    trials = []
    bar = tqdm(total=len(groups) * len(grid), desc=f"search ξ ({task.name})", disable=not progress)
    for group in groups:
        scored = []
        for rate in grid:
            rates = {**chosen, **{v.name: rate for v in group}}
            outcome = accuracy(rates, "validation", validation_limit)
            trials.append({"modules": [v.name for v in group], "rate": rate, **outcome})
            scored.append((outcome["accuracy"], -rate))
            bar.update()
        best_rate = -max(scored)[1]
        chosen.update({v.name: best_rate for v in group})
    bar.close()
    # the first group's ξ = 0 trial ran with nothing clipped yet: the unclipped validation accuracy
    unclipped = next((t for t in trials if t["rate"] == 0.0), None) or accuracy({}, "validation", validation_limit)
    baseline_test = accuracy({}, "test", test_limit)
    chosen_test = accuracy(chosen, "test", test_limit)  # left applied
    return {"task": task.name, "shots": shots, "seed": seed, "grid": grid, "greedy_layers": greedy_layers,
            "chosen_rates": chosen, "trials": trials, "validation_baseline": unclipped["accuracy"],
            "test": {"baseline": baseline_test, "chosen": chosen_test},
            "note": "each candidate clips the original weights (not cumulative); search saw validation only",
            "seconds": round(time.perf_counter() - started, 3)}


def _by_layer_deepest_first(views: list[LinearView], layer_of) -> list[list[LinearView]]:
    groups: dict[int, list[LinearView]] = {}
    for view in views:
        groups.setdefault(layer_of(view), []).append(view)
    return [groups[i] for i in sorted(groups, reverse=True)]
