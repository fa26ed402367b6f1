"""Expert pruning: remove the least salient experts of every mixture-of-experts layer.

Each MoE layer loses the same number of experts (the config keeps one expert count, so stock
transformers reloads the result), chosen per layer by ``criterion``:

- ``reap`` (Lasby et al. 2025, REAP): the mean, over the calibration tokens routed to an expert,
  of router weight × ‖expert output‖ — what the expert actually adds to the residual stream;
- ``frequency``: how many calibration tokens select the expert (top-k hits);
- ``weight``: the Frobenius norm of the expert's matrices (data-free baseline).

An expert no calibration token reaches scores 0 under ``reap`` and ``frequency`` (it is removed
first). The surgery slices every fused ``[experts, ·, ·]`` parameter of the experts module, the
router's rows (and any per-expert bias or score-correction buffer of the MoE block), and rewrites
the expert count in the config and in the modules that hold it; ``top_k`` must stay ≤ the experts
left. Shared experts (dense MLPs beside the routed ones) are never touched.

Product-key experts (Doge's CDMoE, ``models/adapters/product_keys.py``) are removed a sub-key at a
time, keeping the key grid square: ``fraction`` picks the number of sub-keys whose removal leaves
the grid nearest ``(1 − fraction)`` of the experts, and the keys go greedily by the saliency left in
their grid row and column.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import ArgumentError, UnsupportedArchitectureError
from ..models.adapters.experts import (EXPERT_COUNT_KEYS, ExpertTap, expert_count, expert_modules, expert_parameters,
                                       experts_per_token)
from ..models.adapters.generic import text_config
from ..models.adapters.product_keys import (ProductKeyBlock, capture_contributions, experts_left, key_saliency_order,
                                            keep_keys, keys_per_half, keys_to_remove, product_key_blocks,
                                            uses_product_keys)
from .base import Execution, Method, register

CRITERIA = ("reap", "frequency", "weight")
def removal_count(experts: int, fraction: float) -> int:
    return int(round(experts * fraction))


def expert_survivors(config, fraction: float) -> int:
    """Experts per MoE layer after removing ``fraction`` (a square key grid for product keys)."""
    experts = expert_count(config)
    if uses_product_keys(text_config(config)):
        return experts_left(experts, fraction)
    return experts - removal_count(experts, fraction)


def check_expert_pruning(config, fraction: float) -> None:
    """Refuse, from the config alone, expert pruning of a dense model or one that would leave fewer
    experts than each token selects."""
    experts = expert_count(config)
    model_type = getattr(config, "model_type", "?")
    if experts is None:
        raise ArgumentError(f"expert-prune needs a mixture-of-experts model; model type '{model_type}' is dense "
                            f"(its config names no {'/'.join(EXPERT_COUNT_KEYS)})")
    top_k = experts_per_token(config)
    if uses_product_keys(text_config(config)):
        keys = keys_per_half(experts)
        if keys_to_remove(experts, fraction) == 0:
            raise ArgumentError(f"--remove-fraction {fraction} removes no sub-key of the {keys}x{keys} product-key grid "
                                f"of model type '{model_type}' (one key removes {2 * keys - 1} of {keys * keys} "
                                f"experts); ask for at least {(2 * keys - 1) / (2 * keys * keys):.3f}")
    left = expert_survivors(config, fraction)
    if left < 1 or (top_k is not None and left < top_k):
        raise ArgumentError(f"--remove-fraction {fraction} leaves {left} of {experts} experts per layer, fewer than the "
                            f"{top_k} each token is routed to (top_k); remove at most {experts - (top_k or 1)}")
    groups = getattr(config, "n_group", None)
    if isinstance(groups, int) and groups > 1 and left % groups:
        raise ArgumentError(f"--remove-fraction {fraction} leaves {left} experts, not divisible into the model's "
                            f"{groups} routing groups (n_group)")


@dataclass
class ExpertPruneOptions:
    remove_fraction: float | None = field(default=None, metadata={
        "help": "experts: fraction of each MoE layer's routed experts to remove (the same count in every layer)"})
    criterion: str = field(default="reap", metadata={
        "choices": CRITERIA, "help": "experts: reap (router weight x output norm), frequency (top-k hits), or "
                                     "weight (norm of the expert's matrices, data-free)"})


@register
class ExpertPrune(Method):
    name = "expert-prune"
    summary = "remove the least salient routed experts of every MoE layer (REAP, frequency, weight norm)"
    kind = "experts"
    needs = frozenset({"routing"})
    default_nsamples = 64
    Options = ExpertPruneOptions

    def __init__(self, target, options=None, explicit_layers=None):
        super().__init__(target, options, explicit_layers)
        if self.options.criterion == "weight":
            self.needs = frozenset()

    @property
    def execution(self) -> Execution:
        return Execution.WHOLE_MODEL

    @classmethod
    def validate_options(cls, options):
        if options.remove_fraction is None:
            raise ArgumentError("expert-prune needs --remove-fraction (the share of each layer's experts to remove)")
        if not 0 < options.remove_fraction < 1:
            raise ArgumentError(f"--remove-fraction must be in (0, 1) (got {options.remove_fraction})")

    # ---- scoring ------------------------------------------------------------------------
    def _blocks(self, loaded) -> list[tuple[int, str, nn.Module]]:
        experts = expert_count(loaded.model.config)
        finder = product_key_blocks if uses_product_keys(text_config(loaded.model.config)) else expert_modules
        blocks = [(index, path, module) for index, layer in enumerate(loaded.adapter.decoder_layers())
                  for path, module in finder(layer, experts).items()]
        if not blocks:
            raise UnsupportedArchitectureError(
                f"model type '{loaded.model.config.model_type}' declares {experts} experts but no decoder layer holds "
                "them as fused [experts, ., .] parameters or as product-key embedding tables")
        return blocks

    def _output_parameter(self, module: nn.Module, experts: int) -> nn.Parameter:
        """The expert matrix whose output leaves the expert (``down_proj``; the last one otherwise)."""
        parameters = expert_parameters(module, experts)
        named = [p for name, p in parameters.items() if "down" in name or "output" in name or "w2" in name]
        return named[0] if named else list(parameters.values())[-1]

    def _routed_saliency(self, loaded, blocks, calib_ids, progress: bool) -> dict[tuple[int, str], torch.Tensor]:
        """Per block: ``[experts, 2]`` sums of (router weight × ‖output‖) and routed-token counts."""
        experts = expert_count(loaded.model.config)
        sums = {(i, p): torch.zeros(experts, 2, dtype=torch.float64) for i, p, _ in blocks}
        handles = []
        for index, path, module in blocks:
            output = self._output_parameter(module, experts)

            def seen(call, acc=sums[(index, path)]):
                if call.x.shape[0] == 0:
                    return
                w = call.parameter.data[call.expert]
                out = call.x @ w if call.stored_in_by_out else call.x @ w.t()
                acc[call.expert, 0] += float(out.float().norm(dim=-1).double().sum())
                acc[call.expert, 1] += call.x.shape[0]

            handles.append(ExpertTap.on(module).add(output, None, seen))
        try:
            self._calibration_forward(loaded, calib_ids, progress)
        finally:
            for handle in handles:
                handle.remove()
        return sums

    def _product_key_saliency(self, loaded, blocks, calib_ids, progress: bool) -> dict[tuple[int, str], torch.Tensor]:
        """Per product-key block: ``[experts, 2]`` sums of contribution norms and routed-token counts."""
        experts = expert_count(loaded.model.config)
        sums = {(i, p): torch.zeros(experts, 2, dtype=torch.float64) for i, p, _ in blocks}
        restores = [capture_contributions(block, sums[(i, p)]) for i, p, block in blocks]
        try:
            self._calibration_forward(loaded, calib_ids, progress)
        finally:
            for restore in restores:
                restore()
        return sums

    @staticmethod
    def _calibration_forward(loaded, calib_ids, progress: bool) -> None:
        with torch.inference_mode():
            for start in tqdm(range(calib_ids.shape[0]), desc="expert saliency", disable=not progress, leave=False):
                loaded.model(input_ids=calib_ids[start : start + 1].to(loaded.device), use_cache=False)

    def _scores(self, loaded, blocks, calib_ids, progress: bool) -> dict[tuple[int, str], torch.Tensor]:
        experts = expert_count(loaded.model.config)
        if blocks and isinstance(blocks[0][2], ProductKeyBlock):
            if self.options.criterion == "weight":
                return {(i, p): (b.down.weight.float().pow(2).sum(-1) + b.up.weight.float().pow(2).sum(-1)).sqrt()
                        for i, p, b in blocks}
            sums = self._product_key_saliency(loaded, blocks, calib_ids, progress)
        elif self.options.criterion == "weight":
            return {(i, p): torch.stack([sum(param.data[e].float().pow(2).sum() for param in
                                             expert_parameters(m, experts).values()).sqrt() for e in range(experts)])
                    for i, p, m in blocks}
        else:
            sums = self._routed_saliency(loaded, blocks, calib_ids, progress)
        if self.options.criterion == "frequency":
            return {key: value[:, 1] for key, value in sums.items()}
        return {key: value[:, 0] / value[:, 1].clamp(min=1) for key, value in sums.items()}  # REAP: a mean

    # ---- surgery ------------------------------------------------------------------------
    def prune_width(self, loaded, calib_ids, *, progress: bool) -> dict:
        config = loaded.model.config
        check_expert_pruning(config, self.options.remove_fraction)
        experts = expert_count(config)
        remove = removal_count(experts, self.options.remove_fraction)
        blocks = self._blocks(loaded)
        params_before = sum(p.numel() for p in loaded.model.parameters())
        started = time.perf_counter()
        scores = self._scores(loaded, blocks, calib_ids, progress)
        scoring_seconds = time.perf_counter() - started
        product_keys = isinstance(blocks[0][2], ProductKeyBlock)
        left = expert_survivors(config, self.options.remove_fraction)
        layers = []
        for index, path, module in blocks:
            score = scores[(index, path)]
            if product_keys:
                layers.append(self._cut_keys(loaded, index, path, module, score))
                continue
            order = torch.argsort(score.double(), stable=True)
            removed = sorted(order[:remove].tolist())
            kept = [e for e in range(experts) if e not in removed]
            block_path = path.rpartition(".")[0]
            layer = loaded.adapter.decoder_layers()[index]
            sliced = _keep_experts(layer.get_submodule(block_path) if block_path else layer, kept, experts,
                                   _scored_shared_experts(config))
            layers.append({"index": index, "module": f"{loaded.adapter.layer_prefix(index)}.{path}",
                           "removed": removed, "scores": [round(float(s), 6) for s in score], "sliced": sliced})
        decoder_config = text_config(config)
        for key in EXPERT_COUNT_KEYS:
            if isinstance(getattr(decoder_config, key, None), int) and getattr(decoder_config, key) == experts:
                setattr(decoder_config, key, left)
        params_after = sum(p.numel() for p in loaded.model.parameters())
        return {"criterion": self.options.criterion, "experts_before": experts, "experts_after": left,
                "top_k": experts_per_token(config), "params_before": params_before, "params_after": params_after,
                "params_removed_fraction": 1 - params_after / params_before, "layers": layers,
                "seconds": {"scoring": round(scoring_seconds, 3), "total": round(time.perf_counter() - started, 3)}}


    def _cut_keys(self, loaded, index: int, path: str, block: ProductKeyBlock, score: torch.Tensor) -> dict:
        """Remove sub-keys of one product-key block (see module doc); the record names the experts gone."""
        keys = block.keys
        removed_keys = key_saliency_order(score, keys, keys_to_remove(expert_count(loaded.model.config),
                                                                      self.options.remove_fraction))
        kept_keys = [k for k in range(keys) if k not in removed_keys]
        kept_rows = set(block.grid_rows(kept_keys))
        removed = [e for e in range(keys * keys) if e not in kept_rows]
        sliced = [f"{path}.{name}" if path else name for name in keep_keys(block, kept_keys)]
        return {"index": index, "module": f"{loaded.adapter.layer_prefix(index)}.{path}", "removed": removed,
                "removed_keys": removed_keys, "unaddressed_rows_dropped": int(score.shape[0] - keys * keys),
                "scores": [round(float(s), 6) for s in score], "sliced": sliced}


def _scored_shared_experts(config) -> int:
    """Experts the router scores after the routed ones, whose rows every cut keeps: Inkling's
    ``shared_expert_sink`` (its router has ``experts + shared`` rows) and LongCat-Flash's
    zero-compute identity experts (``zero_expert_num`` rows in the router and in ``gate_up_proj``,
    past the routed ones); 0 for other models."""
    decoder_config = text_config(config)
    shared = getattr(decoder_config, "n_shared_experts", None)
    sink = int(shared) if getattr(decoder_config, "shared_expert_sink", False) and isinstance(shared, int) else 0
    zero_compute = getattr(decoder_config, "zero_expert_num", None)
    return sink + (int(zero_compute) if isinstance(zero_compute, int) else 0)


@torch.no_grad()
def _keep_experts(block: nn.Module, kept: list[int], experts: int, scored_shared: int = 0) -> list[str]:
    """Keep experts ``kept`` in the MoE ``block``: every parameter or buffer with one entry per expert
    along its first axis, or after size-1 axes (fused expert matrices, router rows, per-expert
    biases, Ernie-4.5's ``[1, experts]`` score correction), ``nn.Linear`` routers' ``out_features``
    and every integer attribute holding the expert count. A router that also scores
    ``scored_shared`` shared experts (rows after the routed ones) keeps those rows."""
    sizes = {experts: kept, experts + scored_shared: kept + list(range(experts, experts + scored_shared))}
    sliced = []
    for name, module in block.named_modules():
        if name.split(".")[0].startswith("shared_expert"):
            continue  # shared experts are dense MLPs beside the routed ones
        for pname, tensor in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            axis = _expert_axis(tensor, sizes)
            if axis is not None:
                index = torch.tensor(sizes[tensor.shape[axis]], dtype=torch.long, device=tensor.device)
                new = tensor.data.index_select(axis, index).clone()
                if isinstance(tensor, nn.Parameter):
                    setattr(module, pname, nn.Parameter(new, requires_grad=tensor.requires_grad))
                else:
                    module.register_buffer(pname, new, persistent=pname not in module._non_persistent_buffers_set)
                sliced.append(f"{name}.{pname}" if name else pname)
        if isinstance(module, nn.Linear) and module.out_features in sizes:
            module.out_features = len(sizes[module.out_features])
        for attr, value in list(vars(module).items()):
            if isinstance(value, int) and not isinstance(value, bool) and value in sizes and "expert" in attr:
                setattr(module, attr, len(sizes[value]))
    return sliced

def _expert_axis(tensor: torch.Tensor, sizes: dict[int, list[int]]) -> int | None:
    """The axis of ``tensor`` indexed by expert: the first one of an expert-count size, if only
    size-1 axes come before it (a router's rows, a fused ``[E, ., .]`` matrix, a ``[1, E]`` bias row)."""
    for axis, size in enumerate(tensor.shape):
        if size in sizes:
            return axis
        if size != 1:
            return None
    return None
