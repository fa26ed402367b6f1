"""ShortGPT and its depth relatives: drop the decoder layers that matter least.

``metric`` chooses how "matters" is measured:
- ``bi`` — Block Influence (Men et al., ShortGPT): ``1 − mean cos(x_i, x_{i+1})`` over every
  calibration token; the n lowest go.
- ``angular`` — Gromov et al.: the block of n *consecutive* layers whose input and output (last
  token) are closest in angle, ``arccos(cos)/π``.
- ``ppl`` — SLEB-like greedy: repeatedly drop the layer whose absence raises calibration
  perplexity least, re-evaluating after each removal.
- ``reverse`` — the n layers before the last one (baseline); ``random`` — seeded (baseline).
An explicit ``layers`` selection removes exactly those layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..capture.block_influence import angular_distances, layer_io_statistics, sublayer_influence
from ..errors import ArgumentError
from ..eval.perplexity import perplexity
from ..data.windows import TokenWindows
from ..surgery import layers_removed
from .base import DepthMethod, WorkerOptions, register
from ..parallel import check_workers

METRICS = ("bi", "angular", "ppl", "reverse", "random")


@dataclass
class ShortGPTOptions(WorkerOptions):
    remove_layers: int | None = field(default=None, metadata={"help": "depth: number of decoder layers to remove"})
    remove_fraction: float | None = field(default=None, metadata={
        "help": "depth: fraction of decoder layers to remove (rounded to the nearest count)"})
    metric: str = field(default="bi", metadata={"choices": METRICS,
                                                "help": "depth: bi (ShortGPT), angular (Gromov et al.), ppl (greedy, "
                                                        "SLEB-like), reverse or random (baselines)"})
    random_baseline_seed: int = field(default=0, metadata={
        "was": "random_seed", "help": "depth: seed of --metric random"})
    granularity: str = field(default="layer", metadata={
        "choices": ("layer", "sublayer"),
        "help": "depth: remove whole layers, or attention/MLP blocks scored separately (a removed block "
                "becomes a skip: its output projection is zeroed, so the checkpoint reloads but runs no faster)"})


@register
class ShortGPT(DepthMethod):
    name = "shortgpt"
    summary = "remove the least influential decoder layers (Block Influence, angular, greedy ppl, baselines)"
    needs = frozenset({"hidden_states"})
    default_calib = "pg19"
    Options = ShortGPTOptions

    def __init__(self, target, options=None, explicit_layers: list[int] | None = None):
        super().__init__(target, options, explicit_layers)
        if self.explicit_layers is not None or self.options.metric in ("reverse", "random"):
            # the baselines need no calibration data
            self.needs = frozenset()

    @classmethod
    def validate_options(cls, options):
        given = [v for v in (options.remove_layers, options.remove_fraction) if v is not None]
        if len(given) > 1:
            raise ArgumentError("give either --remove-layers or --remove-fraction, not both")
        if options.remove_layers is not None and options.remove_layers < 1:
            raise ArgumentError(f"--remove-layers must be at least 1 (got {options.remove_layers})")
        if options.remove_fraction is not None and not 0 < options.remove_fraction < 1:
            raise ArgumentError(f"--remove-fraction must be in (0, 1) (got {options.remove_fraction})")
        check_workers(options.workers)
        if options.granularity == "sublayer" and options.metric not in ("bi", "random"):
            raise ArgumentError(f"--granularity sublayer supports --metric bi or random, not {options.metric}")

    def count(self, total: int) -> int:
        """How many units (layers, or attention/MLP blocks with ``granularity=sublayer``) to remove."""
        if self.explicit_layers is not None:
            n = len(self.explicit_layers)
        elif self.options.remove_layers is not None:
            n = self.options.remove_layers
        elif self.options.remove_fraction is not None:
            n = max(1, round(self.options.remove_fraction * total))
        else:
            raise ArgumentError("say how many layers to remove: --remove-layers N, --remove-fraction F or --layers")
        if n >= total:
            unit = "attention/MLP blocks" if self.options.granularity == "sublayer" else "layers"
            raise ArgumentError(f"cannot remove {n} of the model's {total} {unit}: at least one must remain")
        return n

    def plan(self, loaded, calib_ids, *, batch_size, progress):
        if self.explicit_layers is None and self.options.metric in ("bi", "angular", "ppl") and calib_ids is None:
            # without text there is nothing to score: never fall through to removing no layer
            raise ArgumentError(f"--metric {self.options.metric} scores layers on calibration text, and none was "
                                f"given (pass calibration windows, or choose --metric reverse/random)")
        if self.options.granularity == "sublayer" and self.explicit_layers is None:
            return self._plan_sublayers(loaded, calib_ids, batch_size, progress)
        total = loaded.adapter.num_layers()
        n = self.count(total)
        metric = "explicit" if self.explicit_layers is not None else self.options.metric
        report: dict = {"metric": metric, "count": n, "layers_before": total}
        if metric in ("bi", "angular"):
            stats = layer_io_statistics(loaded, calib_ids, batch_size=batch_size, progress=progress,
                                        workers=self.options.workers, executor=self.options.executor)
            report["bi"] = stats["bi"].tolist()
            if metric == "angular":
                distances = angular_distances(stats["last_token"], n)
                report["angular_distance"] = distances.tolist()
                start = int(torch.argmin(distances))
                remove = list(range(start, start + n))
            else:
                remove, kept_back = describable_lowest(loaded.adapter, torch.sort(stats["bi"], stable=True).indices.tolist(), n)
                if kept_back:
                    report["not_removable"] = kept_back
        elif metric == "ppl":
            remove, trace = self._greedy_ppl(loaded, calib_ids, n, batch_size, progress)
            report["greedy_ppl"] = trace
        elif metric == "reverse":
            remove = list(range(total - 1 - n, total - 1))
        elif metric == "random":
            generator = torch.Generator().manual_seed(self.options.random_baseline_seed)
            remove = torch.randperm(total, generator=generator)[:n].tolist()
        else:
            remove = list(self.explicit_layers or [])
        report["remove"] = sorted(remove)
        report["removal_order"] = remove
        return report

    def _plan_sublayers(self, loaded, calib_ids, batch_size, progress):
        layers = loaded.adapter.num_layers()
        units = [(i, kind) for i in range(layers) for kind in ("attn", "mlp")]
        n = self.count(len(units))
        report: dict = {"metric": self.options.metric, "granularity": "sublayer", "count": n, "layers_before": layers}
        if self.options.metric == "bi":
            bi = sublayer_influence(loaded, calib_ids, batch_size=batch_size, progress=progress)
            report["bi_attn"], report["bi_mlp"] = bi["attn"].tolist(), bi["mlp"].tolist()
            scores = torch.stack([bi["attn"], bi["mlp"]], dim=1).reshape(-1)  # unit order (i, attn), (i, mlp)
            chosen = torch.sort(scores, stable=True).indices[:n].tolist()
        else:
            generator = torch.Generator().manual_seed(self.options.random_baseline_seed)
            chosen = torch.randperm(len(units), generator=generator)[:n].tolist()
        report["remove"] = []
        report["skip_sublayers"] = sorted([list(units[u]) for u in chosen])
        report["removal_order"] = [list(units[u]) for u in chosen]
        return report

    def _greedy_ppl(self, loaded, calib_ids, n, batch_size, progress):
        windows = TokenWindows(calib_ids)
        removed: list[int] = []
        trace = []
        total = loaded.adapter.num_layers()
        for _ in tqdm(range(n), desc="greedy ppl removal", disable=not progress, leave=False):
            best = (math.inf, -1)
            for candidate in (i for i in range(total) if i not in removed):
                with layers_removed(loaded.adapter, removed + [candidate]):
                    ppl = perplexity(loaded.model, windows, batch_size=batch_size, progress=False)["ppl"]
                best = min(best, (ppl, candidate))
            removed.append(best[1])
            trace.append({"removed": best[1], "calibration_ppl": best[0]})
        return removed, trace


def describable_lowest(adapter, order: list[int], n: int) -> tuple[list[int], list[int]]:
    """The first ``n`` layers of ``order`` whose removal the model's config can describe, and the
    lower-ranked ones passed over (Gemma-4's last layer must be full attention, so its config cannot
    say the model lost it): the lowest-influence layers that can really go, not an error."""
    from ..surgery.depth_config import removal_describable

    if removal_describable(adapter, order[:n]):
        return order[:n], []
    chosen, passed = [], []
    for layer in order:
        if len(chosen) == n:
            break
        (chosen if removal_describable(adapter, chosen + [layer]) else passed).append(layer)
    if len(chosen) < n:
        raise ArgumentError(f"only {len(chosen)} of the {n} layers asked can be removed so that the config still "
                            f"describes the model (not removable: {passed})")
    return chosen, passed
