"""A saved SPP solution path: which units enter when, and how to cut a model at any sparsity from it.

``path.json`` holds, for every pruned layer and unit kind, each unit's entry time on the path
(smaller = more important), plus a fingerprint of the model it was computed on. Materialising
at sparsity ``s`` removes, per layer, the ``round(s · units)`` units that enter last (per KV group
under query-head grouping; across layers with global ranking), using the same physical shrink as
LLM-Pruner. The order is fixed, so a unit kept at ``s`` is kept at every lower sparsity.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.tasks import read_json_file
from ..errors import ArgumentError, DataError
from ..io.shapes import sync_config_shapes
from ..models.loading import LoadedModel
from ..surgery.shrink import remove_units
from .unit_plan import plan_removals

FORMAT = "prunekit-spp-path/1"
FILE = "path.json"


def fingerprint(loaded: LoadedModel) -> dict:
    """What identifies the model a path belongs to: family, shapes, and a hash of two weight matrices."""
    adapter = loaded.adapter
    digest = hashlib.sha256()
    for index in (0, adapter.num_layers() - 1):
        digest.update(adapter.linears(index)[0].weight.detach().float().cpu().contiguous().numpy().tobytes())
    return {"model_type": loaded.model.config.model_type, "num_layers": adapter.num_layers(),
            "hidden_size": adapter.hidden_size, "shapes": [adapter.layer_shape(i) for i in range(adapter.num_layers())],
            "weights_sha256": digest.hexdigest()}


def max_sparsity(path: dict) -> float:
    """The largest sparsity below which every group keeps at least one unit (per KV block)."""
    limits = []
    for kinds in path["layers"].values():
        for entry in kinds.values():
            block = entry["units"] // entry["partition"]
            limits.append((block - 0.5) / block)
    return min(limits)


@dataclass
class PathArtifact:
    """What an SPP step leaves on the model: the path (for code that wants it) and its writer."""

    path: dict

    def __call__(self, directory: Path) -> Path:
        return write_path(self.path, directory)


def write_path(path: dict, directory: Path) -> Path:
    """``path.json`` and its plot ``path.png`` into ``directory``."""
    target = directory / FILE
    target.write_text(json.dumps(path) + "\n")
    plot_path(path, directory / "path.png")
    return target


def read_path(location: str | os.PathLike) -> dict:
    """Load ``path.json`` from a file or a directory that holds one (e.g. an SPP run's output)."""
    location = Path(location)
    file = location / FILE if location.is_dir() else location
    if not file.is_file():
        raise DataError(f"no SPP path at {location} (expected {FILE}, written by `prunekit prune --method spp`)")
    path = read_json_file(file, "SPP path")
    if path.get("format") != FORMAT:
        raise DataError(f"{file} is not an SPP path file (format {FORMAT})")
    return path


def check_sparsity(path: dict, sparsity: float) -> None:
    limit = max_sparsity(path)
    if not 0 <= sparsity < limit:
        raise ArgumentError(f"--sparsity {sparsity} is outside this path's range [0, {limit:.4f}) "
                            "(at or above it some layer would lose every unit)")


def check_model(path: dict, loaded: LoadedModel) -> None:
    """Refuse to cut a model the path was not computed on."""
    theirs, ours = path["fingerprint"], fingerprint(loaded)
    for key in ("model_type", "num_layers", "hidden_size", "shapes", "weights_sha256"):
        if theirs.get(key) != ours.get(key):
            what = "weights" if key == "weights_sha256" else key.replace("_", " ")
            raise ArgumentError(f"this path was computed on another model (its {what} differ from "
                                f"{loaded.source.get('model')}); materialise it from {path['model'].get('model')}")


def unit_scores(entry: dict) -> torch.Tensor:
    """Higher = more important: minus the entry time (units entering first are kept longest)."""
    return -torch.tensor([t if t is not None else math.inf for t in entry["entry_time"]], dtype=torch.float64)


def materialize(loaded: LoadedModel, path: dict, sparsity: float, round_to: int = 1) -> dict:
    """Remove the units the path drops at ``sparsity`` from ``loaded`` (in place); the width report.
    ``round_to`` keeps each layer's MLP channels a multiple of N (see :mod:`prunekit.methods.unit_plan`)."""
    check_sparsity(path, sparsity)
    adapter = loaded.adapter
    grouping = path["head_grouping"]
    layers = [int(i) for i in path["layers"]]
    kinds = path["kinds"]
    groups = {i: adapter.unit_groups(i, grouping) for i in layers}
    scores = {}
    for i in layers:
        for kind in kinds:
            entry = path["layers"][str(i)][kind]
            if groups[i][kind].units != entry["units"]:
                raise ArgumentError(f"layer {i} has {groups[i][kind].units} {kind}, the path {entry['units']}: "
                                    "materialise from the dense model the path was computed on")
            scores[(i, kind)] = unit_scores(entry)
    params_before = sum(p.numel() for p in loaded.model.parameters())
    plan = plan_removals(groups, scores, sparsity, kinds, global_ranking=path["global_ranking"], round_to=round_to)
    reports = []
    for i in layers:
        entry = {"index": i}
        for k in kinds:
            entry[k] = {"before": groups[i][k].units, **remove_units(adapter, groups[i][k], plan[(i, k)])}
        reports.append(entry)
    config_mode = sync_config_shapes(adapter)
    params_after = sum(p.numel() for p in loaded.model.parameters())
    return {"ratio": sparsity, "importance": "spp", "layers_pruned": layers, "head_grouping": grouping, "round_to": round_to,
            "global_ranking": path["global_ranking"], "params_before": params_before, "params_after": params_after,
            "params_removed_fraction": 1 - params_after / params_before, "config": config_mode, "layers": reports}


def path_horizon(path: dict) -> float:
    """The path time every layer's run covered (older paths without it: the latest entry)."""
    horizon = path["settings"].get("horizon")
    if horizon:
        return float(horizon)
    return max(t for layer in path["layers"].values() for kind in path["kinds"]
               for t, e in zip(layer[kind]["entry_time"], layer[kind]["entry_iteration"]) if e >= 0)


def entered_by(path: dict, kind: str, times: torch.Tensor, layers: list[str] | None = None,
               pair: str = "") -> torch.Tensor:
    """Fraction of the units of ``kind`` (in ``layers``, default all) whose ``pair`` (``""`` or
    ``"qk_"``) entered the path at or before each of ``times``."""
    entry_times = []
    for index in layers if layers is not None else list(path["layers"]):
        record = path["layers"][index][kind]
        entry_times += [t if e >= 0 else math.inf
                        for t, e in zip(record[f"{pair}entry_time"], record[f"{pair}entry_iteration"])]
    ordered = torch.sort(torch.tensor(entry_times, dtype=torch.float64)).values
    return torch.searchsorted(ordered, times.double(), right=True).double() / max(1, len(entry_times))


def plot_path(path: dict, target: Path) -> Path:
    """Two panels: fraction of units on the path vs iteration; per-layer fraction at four points of the run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8), dpi=120)
    horizon = path_horizon(path)
    times = torch.logspace(math.log10(horizon) - 3, math.log10(horizon), 200, dtype=torch.float64)
    for kind in path["kinds"]:
        left.plot(times, entered_by(path, kind, times), label=kind if kind == "channels" else "heads (VO pair)")
        if kind == "heads" and "qk_entry_time" in next(iter(path["layers"].values()))["heads"]:
            left.plot(times, entered_by(path, kind, times, pair="qk_"), label="heads (QK pair)", linestyle="--")
    left.set_xscale("log")
    left.set_xlabel("path time t = step × α (same horizon in every layer)")
    left.set_ylabel("fraction of units entered")
    left.set_title("SPP solution path")
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    layers = list(path["layers"])
    for share in (1 / 64, 1 / 16, 1 / 4, 1.0):
        at = torch.tensor([horizon * share], dtype=torch.float64)
        fractions = [float(sum(entered_by(path, k, at, [i]) * path["layers"][i][k]["units"] for k in path["kinds"])
                           / sum(path["layers"][i][k]["units"] for k in path["kinds"])) for i in layers]
        right.plot([int(i) for i in layers], fractions, marker=".", label=f"t = {horizon * share:.0f}")
    right.set_xlabel("layer")
    right.set_ylabel("fraction of the layer's units entered")
    right.set_title("per-layer progress along the path")
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(target)
    plt.close(fig)
    return target
