"""The Python API — the same operations as the CLI, one function each.

    import prunekit
    lm = prunekit.load("../shared/models/smollm2-135m-instruct")
    step = prunekit.prune(lm, "magnitude", sparsity=0.5)
    ppl = prunekit.evaluate_perplexity(lm, ["wikitext2"], max_windows=4)
    prunekit.save(lm, "out/smollm2-mag50", record=prunekit.build_record(lm, [step], ppl))
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
import logging
from typing import Any, Callable, Iterable, Sequence

import torch

from .data import calibration_windows, evaluation_windows, resolve_data_root
from .errors import ArgumentError, UnsupportedArchitectureError
from .eval.perplexity import perplexity
from .io import peak_rss_mb, save_model, versions
from .io.shapes import has_per_layer_shapes, sync_config_shapes
from .models.adapters import supported_model_types, unprunable_reason
from .models.adapters.experts import expert_count
from .methods.allocation import allocate, check_allocation_layers, check_allocation_target, uses_allocation
from .methods.allocation import needs_calibration as needs_allocation_data
from .methods.base import Execution
from .models.loading import LoadedModel, load_model
from .pipeline import WalkInputs, is_streamable, run_depth, run_layers, run_width
from .recipe import CalibrationSettings, Step
from .recovery import KdSettings, LoraSettings, recover_kd, recover_lora
from .methods.selection import parse_layers, parse_modules, parse_roles, view_selector
from .sparsity import check_nm, parse_pattern, validate_nm_width, zero_fraction
from .parallel import check_workers

log = logging.getLogger(__name__)

MAX_DEFAULT_SEQLEN = 4096


def load(model: str | os.PathLike, *, gguf_file: str | None = None, dtype: str = "auto", device: str = "auto",
         require_adapter: bool = True) -> LoadedModel:
    """Load a causal LM (local directory, GGUF file in a directory, or hub id).

    ``require_adapter=False`` loads any causal LM for evaluation (perplexity, zero-shot, ICL,
    cost, sparsity check); pruning needs a family adapter, and the default refuses a model type
    without one from its config, before a GGUF is converted or weights are read."""
    return load_model(model, gguf_file=gguf_file, dtype=dtype, device=device, require_adapter=require_adapter)


def default_seqlen(loaded: LoadedModel) -> int:
    """The model's context length capped at 4096 (the evaluation protocol's default)."""
    return min(loaded.adapter.max_context, MAX_DEFAULT_SEQLEN)


def _check_seqlen(loaded: LoadedModel, seqlen: int) -> int:
    if seqlen > loaded.adapter.max_context:
        raise ArgumentError(f"--seqlen {seqlen} is longer than the model's context ({loaded.adapter.max_context})")
    return seqlen


def prune(
    loaded: LoadedModel,
    method: str | Step,
    *,
    sparsity: float | None = None,
    pattern: str | None = None,
    roles: str | Sequence[str] | None = None,
    layers: str | Sequence[int] | None = None,
    calibration: CalibrationSettings | None = None,
    data_root: str | os.PathLike | None = None,
    progress: bool = True,
    residency: Any = None,
    **options: Any,
) -> dict:
    """Prune ``loaded`` in place with one step; return the step's record for ``prunekit.json``.

    ``residency`` (a :class:`~prunekit.models.streaming.StreamedModel`) streams decoder layers
    from disk; only methods that work one layer at a time on the layer-wise engine accept it.
    """
    step = method if isinstance(method, Step) else Step(method, sparsity, pattern, roles, layers, options)
    method_cls, parsed_options, target = step.validated()
    require_method_support(type(loaded.adapter), method_cls, loaded.model.config, streaming=residency is not None,
                           options=parsed_options)
    if "structure" not in loaded.source:  # what an observed adapter found, on record
        structure = loaded.adapter.describe()
        if structure is not None:
            loaded.source["structure"] = structure
            log.info("%s adapter: %s", loaded.adapter.family, structure)
    if residency is not None:
        require_streamable(method_cls, parsed_options)
    calibration = calibration or CalibrationSettings()
    calibration.validate()
    adapter = loaded.adapter
    if method_cls.kind in ("depth", "width", "experts"):  # --layers: the layers to remove (depth) or to thin (width)
        explicit = parse_layers(step.layers, adapter.num_layers()) if step.layers is not None else None
        pruner = method_cls(target, parsed_options, explicit_layers=explicit)
    elif method_cls.kind == "lowrank":
        pruner = method_cls(target, parsed_options)
        layer_ids, views_for = pruner.restrict(adapter, parse_layers(step.layers, adapter.num_layers()),
                                               view_selector(adapter, parse_modules(parsed_options.modules, adapter)))
    else:
        layer_ids = parse_layers(step.layers, adapter.num_layers())
        views_for = view_selector(adapter, parse_roles(step.roles, adapter))
        validate_nm_width(target, {v.name: v.in_features for i in layer_ids for v in views_for(i)})
        check_allocation_target(parsed_options, target)
        check_allocation_layers(parsed_options, layer_ids)
        if residency is not None and needs_allocation_data(parsed_options):
            raise ArgumentError("--stream reads each layer once: --allocation owl needs a pass over the dense layers "
                                "before pruning (give the per-layer sparsities as a .json file instead)")
        pruner = method_cls(target, parsed_options)

    started = time.perf_counter()
    calib_ids = None
    calib_record = None
    batch_size = 1
    if pruner.needs or needs_allocation_data(parsed_options):
        seqlen = _check_seqlen(loaded, calibration.seqlen or method_cls.default_calib_seqlen or default_seqlen(loaded))
        windows = calibration_windows(
            loaded.tokenizer, calibration.corpus or method_cls.default_calib,
            nsamples=calibration.nsamples or method_cls.default_nsamples,
            seqlen=seqlen, seed=calibration.seed, data_root=resolve_data_root(data_root),
        )
        calib_ids, calib_record = windows.ids, windows.provenance
        batch_size = calibration.batch_for(seqlen)
        calib_record["batch_size"] = batch_size
    data_seconds = time.perf_counter() - started
    timings = {"calibration_data": round(data_seconds, 3)}

    if pruner.execution is Execution.DEPTH:
        plan = run_depth(pruner, loaded, calib_ids, batch_size=batch_size, progress=progress, param_count=_param_count)
        timings["prune"] = round(time.perf_counter() - started - data_seconds, 3)
        return {"step": {"method": method_cls.name, "options": vars(parsed_options), "layers": step.layers},
                "calibration": calib_record, "depth": plan, "sparsity": {}, "layers": [], "timings": timings,
                "peak_rss_mb": peak_rss_mb()}

    if pruner.execution is Execution.WHOLE_MODEL:
        width = run_width(pruner, loaded, calib_ids, progress=progress)
        timings["prune"] = round(time.perf_counter() - started - data_seconds, 3)
        return {"step": {"method": method_cls.name, "options": vars(parsed_options)}, "calibration": calib_record,
                "experts" if method_cls.kind == "experts" else "width": width, "sparsity": {}, "layers": [],
                "timings": timings, "peak_rss_mb": peak_rss_mb()}

    allocation = None
    if uses_allocation(parsed_options):
        allocation = allocate(loaded, parsed_options, target, layer_ids, views_for, calib_ids=calib_ids,
                              batch_size=batch_size, progress=progress)
        pruner.layer_targets = allocation.targets(views_for)
        timings["allocation"] = round(allocation.seconds, 3)
    run = run_layers(pruner, WalkInputs(loaded, calib_ids, views_for, layer_ids, batch_size, progress, residency))
    if run.phases is not None:
        timings["phases"] = run.phases
    modules: dict[str, dict] = {}
    layer_reports = []
    for index, reports, seconds in run.results:
        modules.update(reports)
        layer_reports.append({"index": index, "seconds": round(seconds, 3), "modules": reports})
    total = sum(_numel(r) for r in modules.values())
    removed = sum(r["sparsity"] * _numel(r) for r in modules.values())
    timings["prune"] = round(time.perf_counter() - started - data_seconds, 3)
    if method_cls.kind == "lowrank":
        params = [sum(r["params"][k] for r in modules.values()) for k in (0, 1)]
        return {"step": {"method": method_cls.name, "layers": layer_ids, "options": vars(parsed_options)},
                "calibration": None, "lowrank": {"modules": sorted(modules), "params_selected": params,
                                                 "condition_choice": getattr(pruner, "condition_choice", None)},
                "sparsity": {}, "layers": layer_reports, "timings": timings, "peak_rss_mb": peak_rss_mb()}
    pruned = removed / total if total else 0.0
    # "overall" is every decoder linear's zero fraction, pruned or not (a streamed model's other
    # layers are not in memory: there it is known only when every layer was pruned)
    if residency is None:
        overall = check_sparsity(loaded, ())["sparsity"]["overall"]
    else:
        overall = pruned if len(layer_ids) == adapter.num_layers() else None
    return {
        "step": {"method": method_cls.name, **target.to_dict(), "roles": list(parse_roles(step.roles, adapter)),
                 "layers": layer_ids, "options": vars(parsed_options)},
        "calibration": calib_record,
        "sparsity": {"overall": overall, "pruned": pruned, "pruned_matrices": len(modules),
                     "layers": {name: r["sparsity"] for name, r in modules.items()}},
        "layers": layer_reports,
        **({"allocation": allocation.to_dict()} if allocation is not None else {}),
        "timings": timings,
        "peak_rss_mb": peak_rss_mb(),
    }


def require_method_support(adapter_cls: type, method_cls, config: Any, streaming: bool = False,
                           options: Any = None) -> None:
    """Refuse, with the reason, a method the model's adapter cannot serve: any method but expert
    pruning on a recurrent or hybrid model (its MoE blocks are found without roles), structured width through the structural fallback (it does not know how heads
    and channels couple), and streaming through it (its probe runs the whole model once)."""
    model_type = getattr(config, "model_type", "?")
    if not adapter_cls.prunable and not (method_cls.kind == "experts" and expert_count(config) is not None):
        raise UnsupportedArchitectureError(f"cannot prune model type '{model_type}': "
                                           f"{unprunable_reason(config) or 'it was loaded for evaluation only'}")
    if method_cls.kind == "experts":
        from .methods.expert_prune import check_expert_pruning

        if options is not None:
            check_expert_pruning(config, options.remove_fraction)
    if method_cls.kind == "width" and not adapter_cls.width_prunable:
        raise UnsupportedArchitectureError(
            f"{method_cls.name} removes coupled heads and channels, which needs a family adapter; model type "
            f"'{model_type}' has none (family adapters: {', '.join(supported_model_types())}) and is served by the "
            "structural fallback: mask methods and depth removal only")
    if streaming and not adapter_cls.streamable:
        served_by = ("the structural fallback" if adapter_cls.family == "structural"
                     else f"the '{adapter_cls.family}' adapter, built on the structural probe")
        raise UnsupportedArchitectureError(
            f"--stream needs the maps of a layer without running the model: model type '{model_type}' is served by "
            f"{served_by}, which finds its maps (and experts) by running the whole model once")


def require_streamable(method_cls, options) -> None:
    """Streaming keeps one decoder layer in memory and the checkpoint's tensor names: methods that
    remove layers or units, store factors, or need the paired dense/pruned walk cannot stream."""
    pruner = method_cls(None, options)
    if pruner.execution is Execution.INDEPENDENT and method_cls.kind in ("mask", "lowrank"):
        raise ArgumentError("--stream walks the layers one at a time in order: drop --inputs dense / --workers")
    if not is_streamable(pruner):
        raise ArgumentError(f"--stream works with methods that prune one layer at a time in place (magnitude, wanda, "
                            f"sparsegpt, ria, svd without --factored); {method_cls.name} is not one of them")


def prune_streaming(model: str | os.PathLike, method: str | Step, out: str | os.PathLike, *,
                    calibration: CalibrationSettings | None = None, gguf_file: str | None = None,
                    data_root: str | os.PathLike | None = None, overwrite: bool = False, progress: bool = True,
                    **target: Any) -> tuple[Path, dict]:
    """Prune a model that need not fit in memory: decoder layers are read from the safetensors
    shards one at a time, pruned and written to the output shards. Same masks as :func:`prune`."""
    from .io import RECORD_NAME, atomic_directory, write_json
    from .models.streaming import StreamedModel

    step = method if isinstance(method, Step) else Step(method, **target)
    require_streamable(*step.validated()[:2])
    streamed = StreamedModel(model, gguf_file=gguf_file)
    with atomic_directory(out, overwrite) as tmp:
        streamed.begin_output(tmp)
        result = prune(streamed.loaded, step, calibration=calibration, data_root=data_root, progress=progress,
                       residency=streamed)
        streamed.finish(tmp)
        record = build_record(streamed.loaded, [result])
        write_json(tmp / RECORD_NAME, record)
        from .report.page import render_report

        (tmp / "report").mkdir()
        render_report(record, tmp / "report", Path(out))
    return Path(out), record


def recover(loaded: LoadedModel, settings: LoraSettings | KdSettings | None = None, *,
            data_root: str | os.PathLike | None = None, progress: bool = True, history: list[dict] | None = None) -> dict:
    """Recovery in place — LoRA on the next-token loss, or with :class:`KdSettings` distillation
    from the dense model — merged, sparsity kept; return the step's record for ``prunekit.json``.
    ``history``: the records of the steps already applied in this run (distillation's layer map)."""
    settings = settings or LoraSettings()
    before = check_sparsity(loaded, ())["sparsity"]["overall"]
    if isinstance(settings, KdSettings):
        report = recover_kd(loaded, settings, history=history, data_root=data_root, progress=progress)
    else:
        report = recover_lora(loaded, settings, data_root=data_root, progress=progress)
    after = check_sparsity(loaded, ())["sparsity"]["overall"]
    report["sparsity_before"], report["sparsity_after"] = before, after
    name = "kd" if isinstance(settings, KdSettings) else "lora"
    return {"step": {"method": name, "options": report["settings"]}, "calibration": report["calibration"],
            "recovery": report, "sparsity": {}, "layers": [], "timings": {"recover": report["seconds"]},
            "peak_rss_mb": peak_rss_mb()}


def _param_count(loaded: LoadedModel) -> int:
    return sum(p.numel() for p in loaded.model.parameters())


def _numel(report: dict) -> int:
    rows, cols = report["shape"]
    return rows * cols


def evaluate_perplexity(
    loaded: LoadedModel,
    datasets: Iterable[str],
    *,
    seqlen: int | None = None,
    max_windows: int | None = None,
    protocol: str = "standard",
    data_root: str | os.PathLike | None = None,
    batch_size: int | None = None,
    progress: bool = True,
) -> dict:
    """``{"ppl": {name: value}, "eval": {name: details}}`` for each dataset."""
    if seqlen is None:
        seqlen = 128 if protocol == "llm-pruner" else default_seqlen(loaded)
    _check_seqlen(loaded, seqlen)
    root = resolve_data_root(data_root)
    names = [d.strip() for d in datasets if d.strip()]
    if not names:
        raise ArgumentError("no dataset to evaluate (e.g. --ppl wikitext2,ptb)")
    windows = {name: evaluation_windows(loaded.tokenizer, name, seqlen=seqlen, data_root=root,
                                        protocol=protocol, max_windows=max_windows) for name in names}
    out: dict[str, dict] = {"ppl": {}, "eval": {}}
    for name, token_windows in windows.items():
        result = perplexity(loaded.model, token_windows, batch_size=batch_size, progress=progress, desc=f"ppl {name}")
        out["ppl"][name] = result["ppl"]
        out["eval"][name] = {**result, "provenance": token_windows.provenance}
    return out


@torch.no_grad()
def check_sparsity(loaded: LoadedModel, patterns: Sequence[str] = ("2:4", "4:8")) -> dict:
    """Per-module and overall zero fraction of the decoder linears, and N:M validity per pattern."""
    adapter = loaded.adapter
    layers: dict[str, float] = {}
    zeros = total = 0
    nm: dict[str, dict] = {p: {"valid": True, "invalid_modules": []} for p in patterns}
    parsed = {p: parse_pattern(p) for p in patterns}
    for index in range(adapter.num_layers()):
        for view in adapter.linears(index):
            weight = view.weight
            fraction = zero_fraction(weight)
            layers[view.name] = fraction
            zeros += fraction * weight.numel()
            total += weight.numel()
            for pattern, (n, m) in parsed.items():
                if not check_nm(weight, n, m):
                    nm[pattern]["valid"] = False
                    nm[pattern]["invalid_modules"].append(view.name)
    return {"sparsity": {"overall": zeros / total if total else 0.0, "layers": layers}, "nm": nm}


def build_record(loaded: LoadedModel, steps: list[dict], evaluation: dict | None = None,
                 timings: dict | None = None) -> dict:
    """Assemble ``prunekit.json``: recipe, versions, model, data provenance, results, timings."""
    last = next((s for s in reversed(steps) if s.get("sparsity")), {})
    record = {
        "prunekit": versions(),
        "model": loaded.source,
        "recipe": {"steps": [s["step"] for s in steps]},
        "calibration": [s["calibration"] for s in steps],
        "sparsity": last.get("sparsity", {}),
        "steps": steps,
        "timings": {"load": loaded.source.get("load_seconds"), **(timings or {}),
                    "steps": [s["timings"] for s in steps]},
        "peak_rss_mb": peak_rss_mb(),
    }
    if evaluation:
        record["ppl"] = evaluation["ppl"]
        record["eval"] = evaluation["eval"]
    return record


def save(loaded: LoadedModel, out: str | os.PathLike, *, record: dict, overwrite: bool = False,
         extras: Callable[[Path], None] | None = None, report: bool = True) -> Path:
    """Write ``loaded`` as a plain HF directory with ``prunekit.json``, atomically; with ``report``
    the run's page (``report/report.html`` and ``report.md``, see ``prunekit report``) lands with it.

    A width-pruned model's config is re-synchronised first: a later depth step renumbers layers,
    and per-layer shapes are recorded by layer name.
    """
    if has_per_layer_shapes(loaded.model.config):
        sync_config_shapes(loaded.adapter)

    def add_files(tmp: Path) -> None:
        for write in loaded.artifacts.values():
            write(tmp)
        if extras is not None:
            extras(tmp)
        if report:
            from .report.page import render_report

            (tmp / "report").mkdir()
            render_report(record, tmp / "report", Path(out))

    return save_model(loaded.model, loaded.tokenizer, out, record, overwrite=overwrite, extras=add_files)


def materialize(path: str | os.PathLike | dict, sparsity: float, *, model: str | os.PathLike | None = None,
                gguf_file: str | None = None, dtype: str = "auto", device: str = "auto",
                round_to: int = 1) -> tuple[LoadedModel, dict]:
    """Cut the model an SPP path was computed on at ``sparsity``, without searching again.

    ``path``: an SPP run's output directory, its ``path.json``, or the loaded dict. ``model``
    overrides where the dense model is read from (default: the path's record of it); the model's
    fingerprint must match; ``round_to`` keeps each layer's MLP channels a multiple of N. Returns
    the shrunk model and its step record for ``prunekit.json``.
    """
    from .methods.unit_plan import validate_round_to
    from .methods.solution_path import check_model, check_sparsity as check_path_sparsity, materialize as cut, read_path

    started = time.perf_counter()
    validate_round_to(round_to)
    spec = path if isinstance(path, dict) else read_path(path)
    check_path_sparsity(spec, sparsity)
    source = model if model is not None else spec["model"].get("model")
    loaded = load(source, gguf_file=gguf_file if model is not None else spec["model"].get("gguf_file"), dtype=dtype,
                  device=device)
    check_model(spec, loaded)
    width = cut(loaded, spec, sparsity, round_to=round_to)
    return loaded, {"step": {"method": "spp", "options": {"ratio": sparsity, "round_to": round_to, "materialized_from": str(path)
                                                           if not isinstance(path, dict) else "path"}},
                    "calibration": None, "width": width, "sparsity": {}, "layers": [],
                    "timings": {"prune": round(time.perf_counter() - started, 3)}, "peak_rss_mb": peak_rss_mb()}


def block_influence(loaded: LoadedModel, calibration: CalibrationSettings | None = None, *,
                    data_root: str | os.PathLike | None = None, progress: bool = True, workers: int = 1,
                    executor: str = "process") -> dict:
    """Block Influence per decoder layer of the (dense) model on calibration text (default PG19);
    ``workers > 1`` splits the windows over workers (the same numbers, see ``layer_io_statistics``)."""
    from .capture import layer_io_statistics

    calibration = calibration or CalibrationSettings()
    calibration.validate()
    seqlen = _check_seqlen(loaded, calibration.seqlen or default_seqlen(loaded))
    windows = calibration_windows(loaded.tokenizer, calibration.corpus or "pg19", nsamples=calibration.nsamples or 128,
                                  seqlen=seqlen, seed=calibration.seed, data_root=resolve_data_root(data_root))
    check_workers(workers)
    stats = layer_io_statistics(loaded, windows.ids, batch_size=calibration.batch_for(seqlen), progress=progress,
                                workers=workers, executor=executor)
    bi = stats["bi"].tolist()
    return {"bi": bi, "order": sorted(range(len(bi)), key=lambda i: (bi[i], i)), "calibration": windows.provenance}


def evaluate_icl(loaded: LoadedModel, tasks: Sequence[str], *, shots: int | None = None, split: str = "test", seed: int = 0,
                 limit: int | None = None, templates: dict | None = None, validation_size: int = 256,
                 data_root: str | os.PathLike | None = None, progress: bool = True) -> dict:
    """Few-shot ICL accuracy per task: ``{"icl": {task: {accuracy, macro_f1?, template, ...}}}``."""
    from .eval.icl import evaluate_icl as run_icl, load_icl_task, shots_for

    names = [t.strip() for t in tasks if t.strip()]
    if not names:
        raise ArgumentError("no ICL task given (e.g. --icl sst2,rte,copa)")
    root = resolve_data_root(data_root)
    loaded_tasks = [load_icl_task(name, root, template=(templates or {}).get(name), validation_size=validation_size)
                    for name in names]  # every task file is checked before any evaluation
    results = {task.name: run_icl(loaded.model, loaded.tokenizer, task, split=split,
                                  shots=shots_for(task.name, shots), seed=seed,
                                  limit=limit, progress=progress) for task in loaded_tasks}
    return {"icl": results}


def evaluate_zero_shot(loaded: LoadedModel, tasks: Sequence[str], *, limit: int | None = None, batch_size: int = 16,
                       data_root: str | os.PathLike | None = None, progress: bool = True) -> dict:
    """Zero-shot multiple-choice accuracy through lm-evaluation-harness on the data root's files:
    ``{"tasks": {task: {acc, acc_norm?, examples, split}}, "zero_shot": {mean_acc, ...}}``."""
    from .eval.zero_shot import check_task_data, evaluate_zero_shot as run_zero_shot

    root = resolve_data_root(data_root)
    check_task_data(tasks, root)
    return run_zero_shot(loaded.model, loaded.tokenizer, tasks, data_root=root, limit=limit, batch_size=batch_size,
                         progress=progress)


def measure_cost(model: str | os.PathLike, *, baseline: str | os.PathLike | None = None, settings=None,
                 gguf_file: str | None = None, dtype: str = "auto", device: str = "auto") -> dict:
    """Cost of a saved model (and of ``baseline``): params, disk, peak RSS loading and generating,
    prefill latency, decode tokens/s; each measured in a fresh process. With a baseline, the ratios
    and notes on what the numbers do and do not show."""
    from .eval.cost import CostSettings, compare, measure_cost as measure

    from .models.loading import resolve_device

    settings = (settings or CostSettings()).validate()
    if settings.sparse_kernels and not resolve_device(device).startswith("cuda"):
        raise ArgumentError("--sparse-kernels needs a CUDA GPU (PyTorch's semi-structured 2:4 kernels); "
                            "none is available to this run")
    options = {"gguf_file": gguf_file, "dtype": dtype, "device": device}
    report: dict = {"settings": dataclasses.asdict(settings), "model": measure(str(model), options, settings)}
    if baseline is not None:
        report["baseline"] = measure(str(baseline), {**options, "gguf_file": None}, settings)
        report.update(compare(report["model"], report["baseline"]))
    return report


def spectra(loaded: LoadedModel, *, layers: str | Sequence[int] | None = None, modules: str = "all") -> dict:
    """Singular values and condition number ``σ_max/σ_min`` of every selected matrix, per layer."""
    from .surgery.lowrank import Spectrum

    adapter = loaded.adapter
    layer_ids = parse_layers(layers, adapter.num_layers())
    views_for = view_selector(adapter, parse_modules(modules, adapter))
    table: dict[str, dict[str, float]] = {}
    values: dict[str, list[float]] = {}
    for index in layer_ids:
        for view in views_for(index):
            spectrum = Spectrum.of(view.weight)
            table.setdefault(str(index), {})[view.local_name] = spectrum.condition_number()
            values[view.name] = spectrum.S.tolist()
    names = list(dict.fromkeys(name for row in table.values() for name in row))
    return {"layers": layer_ids, "modules": names, "condition_number": table, "singular_values": values}


def search_svd(loaded: LoadedModel, task: str, *, shots: int | None = None, modules: str = "all",
               layers: str | Sequence[int] | None = None, grid: Sequence[float] | None = None, select: str = "all",
               top_k: int = 2, deeper_half: bool = False, seed: int = 0, validation_limit: int | None = None,
               test_limit: int | None = None, greedy_layers: bool = False, validation_size: int = 256,
               templates: dict | None = None, data_root: str | os.PathLike | None = None, progress: bool = True) -> dict:
    """The validated ξ search (see :mod:`prunekit.methods.svd_search`); the chosen clipping stays applied."""
    from .eval.icl import load_icl_task, shots_for
    from .methods.svd import SvdClip, SvdOptions
    from .methods.svd_search import PAPER_GRID, search_clipping_rate

    adapter = loaded.adapter
    options = SvdOptions(modules=modules, select=select, top_k=top_k, deeper_half=deeper_half)
    SvdClip.validate_options(options)
    layer_ids, views_for = SvdClip(None, options).restrict(
        adapter, parse_layers(layers, adapter.num_layers()), view_selector(adapter, parse_modules(modules, adapter)))
    chosen = [(index, view) for index in layer_ids for view in views_for(index)]
    views = [view for _, view in chosen]
    layer_of = {view.name: index for index, view in chosen}
    icl_task = load_icl_task(task, resolve_data_root(data_root), template=(templates or {}).get(task),
                             validation_size=validation_size)
    result = search_clipping_rate(loaded, icl_task, views, shots=shots_for(icl_task.name, shots), grid=list(grid or PAPER_GRID), seed=seed,
                                  validation_limit=validation_limit, test_limit=test_limit, greedy_layers=greedy_layers,
                                  layer_of=lambda view: layer_of[view.name], progress=progress)
    result["selection"] = {"modules": modules, "layers": layer_ids, "matrices": [v.name for v in views],
                           "select": select, "top_k": top_k if select != "all" else None}
    return result


def measure_llamacpp(model: str | os.PathLike, **kwargs) -> dict:
    """``prunekit bench --engine llama.cpp``: GGUF file size, load time, prompt and generation
    tokens/s in llama.cpp (timed in turns with ``baseline``), and perplexity from llama.cpp's logits
    on prunekit's windows beside prunekit's perplexity of the source checkpoint. See
    :func:`prunekit.eval.llamacpp.bench` for the keyword arguments."""
    from .eval.llamacpp import bench

    return bench(model, **kwargs)


def export_gguf(model: str | os.PathLike, out: str | os.PathLike, outtype: str = "f16", **kwargs) -> dict:
    """``prunekit export --format gguf``: see :func:`prunekit.export.export_gguf`."""
    from .export import export_gguf as export

    return export(model, out, outtype, **kwargs)
