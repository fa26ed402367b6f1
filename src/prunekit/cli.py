"""The command line: ``prunekit prune | eval | check | methods``.

Every subcommand is a thin face of the Python API in :mod:`prunekit.api`. Errors a user can
cause print one line on stderr and exit non-zero; Ctrl-C exits 130 and leaves no output behind.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Sequence

from . import api
from .data import PROTOCOLS
from .errors import ArgumentError, PrunekitError
from .parallel import check_workers
from .renamed import add_renamed_flag
from .io import atomic_directory, check_output_path, write_json
from .methods import available_methods
from .methods.allocation import needs_calibration as needs_allocation_data
from .recipe import CalibrationSettings, RecipeStep, Step
from .runner import run_step
from .cli_export import add_export_parser, add_round_trip_args, cmd_export, finish_round_trip, plan_round_trip
from .cli_recovery import OBJECTIVES, add_recovery_args, recovery_settings


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", required=True, metavar="DIR", help="local Hugging Face directory (or a hub id where the hub is reachable)")
    group.add_argument("--gguf-file", metavar="FILE", help="GGUF file inside --model to load (auto-detected when it is the only file)")
    group.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                       help="weights dtype (auto: float32 on CPU, bfloat16 on GPU)")
    group.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    group.add_argument("--data-root", metavar="DIR", help="folder of the named corpora (default: $PRUNEKIT_DATA or ../shared/data)")
    group.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_eval_args(parser: argparse.ArgumentParser, flag: str) -> None:
    group = parser.add_argument_group("perplexity")
    group.add_argument(flag, type=_csv, default=[], metavar="DATASETS",
                       help="comma-separated corpora to evaluate: wikitext2, ptb, c4 (or a .txt/.jsonl path)")
    group.add_argument("--max-windows", type=int, metavar="K", help="evaluate only the first K windows (quick runs)")
    group.add_argument("--eval-seqlen", type=int, metavar="N", help="window length (default: the model context capped at 4096)")
    group.add_argument("--protocol", default="standard", choices=PROTOCOLS,
                       help="standard (SparseGPT/Wanda) or llm-pruner (128-token windows, PTB validation)")
    group.add_argument("--eval-batch-size", type=int, metavar="N", help="windows per forward (default: 4096 tokens per batch)")


def _add_icl_args(parser: argparse.ArgumentParser, single_task: bool = False) -> None:
    group = parser.add_argument_group("few-shot in-context learning")
    if single_task:
        group.add_argument("--task", required=True, help="ICL task: sst2, rte, copa or a task .json file")
    else:
        group.add_argument("--icl", type=_csv, default=[], metavar="TASKS",
                           help="ICL tasks: sst2, rte, copa, or task .json files (see `prunekit tasks`)")
        group.add_argument("--split", default="test", choices=("validation", "test"),
                           help="which split to score (validation is held out of the demonstration pool)")
        group.add_argument("--icl-limit", type=int, help="score only N examples of the split (seeded choice)")
    group.add_argument("--shots", type=int, help="demonstrations per prompt (default: sst2 10, rte 5, copa 5, others 5)")
    group.add_argument("--icl-seed", type=int, default=0, help="seed of the demonstration sampler (default 0)")
    group.add_argument("--icl-templates", help="JSON file overriding templates: {task: {text, answers|choices}}")
    group.add_argument("--validation-size", type=int, default=256,
                       help="training examples held out as validation for sst2/rte (default 256)")


def _add_zero_shot_args(parser: argparse.ArgumentParser) -> None:
    from .eval.zero_shot import DEFAULT_TASKS, ZERO_SHOT_TASKS

    group = parser.add_argument_group("zero-shot multiple choice (lm-evaluation-harness on local data)")
    group.add_argument("--tasks", type=_csv, default=[], metavar="TASKS",
                       help=f"comma list of {', '.join(ZERO_SHOT_TASKS)}; 'default' = {','.join(DEFAULT_TASKS)}")
    group.add_argument("--limit", type=int, help="score only the first N examples of each task (of each MMLU subject)")
    group.add_argument("--tasks-batch-size", type=int, default=16, help="harness batch size (default 16)")


def _option_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_method_options(parser: argparse.ArgumentParser, shown: str | None) -> None:
    """Every registered method's options become flags, checked against the chosen method when the
    step is validated (one that the method does not have is an error naming its real options).
    Help lists only the ``shown`` method's options, grouped under its name; the others are
    accepted silently so that misuse still gets that clear message rather than argparse's."""
    methods = available_methods()
    own = {f.name for f in dataclasses.fields(methods[shown].Options)} if shown in methods else set()
    group = parser.add_argument_group(f"{shown} options" if own else "method options",
                                      None if own else "shown by `prunekit prune --method M --help`; "
                                                       "`prunekit methods` lists every method's")
    seen: set[str] = set()
    fields = [f for m in ([methods[shown]] if own else []) + list(methods.values()) for f in dataclasses.fields(m.Options)]
    for f in fields:
        if f.name in seen:
            continue
        seen.add(f.name)
        kwargs: dict = {"dest": f"opt_{f.name}", "default": argparse.SUPPRESS,
                        "help": _option_help(f) if f.name in own else argparse.SUPPRESS}
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if kind == "bool":
            kwargs["action"] = "store_true"
        else:
            kwargs["type"] = int if kind.startswith("int") else float if kind.startswith("float") else str
            kwargs["metavar"] = "N" if kwargs["type"] is int else "X" if kwargs["type"] is float else "VALUE"
            if f.metadata.get("choices"):
                kwargs["choices"] = f.metadata["choices"]
                kwargs["metavar"] = "{" + ",".join(map(str, f.metadata["choices"])) + "}"
        group.add_argument(_option_flag(f.name), **kwargs)
        if f.metadata.get("was"):
            old = {k: v for k, v in kwargs.items() if k not in ("help", "action", "metavar")}
            add_renamed_flag(group, _option_flag(f.metadata["was"]), _option_flag(f.name),
                             flag_is_switch=kind == "bool", **old)


def _option_help(f: dataclasses.Field) -> str:
    """A field's help without the method-name prefix (the group names the method) and its default."""
    text = str(f.metadata.get("help", ""))
    head, _, rest = text.partition(": ")
    if rest and head.replace("-", "").replace(" ", "").isalnum() and len(head) < 24:
        text = rest
    if f.default is not None and f.default is not False and "default" not in text:
        text += f" (default {f.default})"
    return text


def _wide_help(prog: str) -> argparse.HelpFormatter:
    return argparse.HelpFormatter(prog, max_help_position=34, width=120)


def _method_in(argv: Sequence[str]) -> str | None:
    """The value of ``--method`` on a ``prune`` command line, if any (it decides which options help shows)."""
    argv = list(argv)
    if "prune" not in argv:
        return None
    for i, arg in enumerate(argv):
        if arg == "--method" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--method="):
            return arg.split("=", 1)[1]
    return None


def build_parser(method: str | None = None, heal: bool = False) -> argparse.ArgumentParser:
    """The command-line parser; ``method`` (the ``prune --method`` value) picks the options help
    shows, and the ``--heal-*`` flags are listed only when ``heal`` (``--heal`` is on the line)."""
    parser = argparse.ArgumentParser(prog="prunekit", description="Prune Hugging Face causal LMs and measure the cost.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    sub = parser.add_subparsers(dest="command", required=True)

    prune = sub.add_parser("prune", help="prune a model and save it (optionally evaluate)",
                           usage="prunekit prune --model DIR --method M (--sparsity P | --pattern N:M | M's target) "
                                 "--out OUT [options]",
                           formatter_class=_wide_help)
    _add_model_args(prune)
    target = prune.add_argument_group("target")
    target.add_argument("--method", required=True, metavar="M", help="a registered method (see `prunekit methods`)")
    target.add_argument("--sparsity", type=float, metavar="P", help="unstructured sparsity in [0, 1)")
    target.add_argument("--pattern", metavar="N:M", help="N:M semi-structured pattern, e.g. 2:4")
    target.add_argument("--roles", metavar="LIST", help="comma-separated roles to prune (default: all linears of every layer)")
    target.add_argument("--layers", metavar="LIST", help="layers to prune, e.g. 0-5,7 or last:2 (default all; depth methods: those removed)")
    calib = prune.add_argument_group("calibration")
    calib.add_argument("--calib", metavar="CORPUS", help="calibration corpus: c4, wikitext2, ptb, pg19, name:split, or a path "
                                        "(default: c4; pg19 for depth methods)")
    calib.add_argument("--nsamples", type=int, metavar="N", help="calibration windows (default: the method's, 128; 10 for llm-pruner)")
    calib.add_argument("--seqlen", type=int, metavar="N", help="calibration window length (default: model context capped at 4096)")
    calib.add_argument("--calib-seed", dest="seed", type=int, metavar="N", help="seed of the window sampler (default 0)")
    add_renamed_flag(calib, "--seed", "--calib-seed", dest="seed", type=int)
    calib.add_argument("--calib-batch-size", type=int, metavar="N",
                       help="windows per layer forward (default: 4096 tokens per forward)")
    _add_method_options(prune, method)
    out = prune.add_argument_group("output")
    out.add_argument("--out", required=True, metavar="DIR", help="output directory (written atomically)")
    out.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    out.add_argument("--stream", action="store_true", help="stream decoder layers from the safetensors shards one "
                     "at a time (models larger than memory; layer-wise methods; no --heal/--eval)")
    out.add_argument("--heal", choices=("lora", "kd"), help="recover quality after pruning: LoRA on the next-token "
                     "loss, or kd (distillation from the dense model); sparsity kept; its --heal-* flags: "
                     "`prunekit prune --heal kd --help`")
    add_recovery_args(prune, "heal-", shown=heal)
    add_round_trip_args(out)
    _add_eval_args(prune, "--eval")

    materialize = sub.add_parser("materialize", help="cut an SPP solution path at a sparsity: a smaller model, no new search")
    materialize.add_argument("--path", required=True, help="an SPP run's output directory or its path.json")
    materialize.add_argument("--sparsity", type=float, required=True,
                             help="fraction of heads and MLP channels removed per pruned layer (within the path's range)")
    materialize.add_argument("--model", help="the dense model the path was computed on (default: the one path.json names)")
    materialize.add_argument("--round-to", type=int, default=1, help="keep each layer's MLP channels a "
                             "multiple of N (for a later N:M step) (default 1)")
    materialize.add_argument("--gguf-file", help="GGUF file inside --model")
    materialize.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    materialize.add_argument("--device", default="auto")
    materialize.add_argument("--data-root", help="folder of the named corpora (for --eval)")
    materialize.add_argument("--no-progress", action="store_true", help="hide progress bars")
    materialize.add_argument("--out", required=True, help="output directory (written atomically)")
    materialize.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    _add_eval_args(materialize, "--eval")

    recover = sub.add_parser("recover", help="LoRA fine-tune or distil a pruned model, keep its sparsity, save")
    _add_model_args(recover)
    recover.add_argument("--objective", choices=OBJECTIVES, default="lm", help="lm: next-token loss (LoRA); kd: "
                         "distillation from the dense model the pruned one came from (default lm)")
    add_recovery_args(recover)
    recover.add_argument("--out", required=True, help="output directory (written atomically; loss.png inside)")
    recover.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    _add_eval_args(recover, "--eval")

    evaluate = sub.add_parser("eval", help="evaluate perplexity, zero-shot tasks and few-shot in-context learning")
    _add_model_args(evaluate)
    _add_eval_args(evaluate, "--ppl")
    _add_zero_shot_args(evaluate)
    _add_icl_args(evaluate)
    evaluate.add_argument("--check-sparsity", type=_csv, nargs="?", const=["2:4", "4:8"], metavar="PATTERNS",
                          help="also report per-module sparsity and N:M validity (default patterns 2:4,4:8)")
    evaluate.add_argument("--json", help="write the results to this JSON file")

    check = sub.add_parser("check", help="report per-module sparsity and N:M validity")
    _add_model_args(check)
    check.add_argument("--pattern", type=_csv, default=["2:4", "4:8"], help="N:M patterns to verify (default 2:4,4:8)")
    check.add_argument("--json", help="write the results to this JSON file")

    analyze = sub.add_parser("analyze", help="measure a property of a model (Block Influence, spectra)")
    _add_model_args(analyze)
    analyze.add_argument("--what", required=True, choices=("bi", "spectrum"),
                         help="bi: Block Influence per decoder layer; spectrum: condition number per layer x module")
    analyze.add_argument("--modules", default="all", help="spectrum: matrices to analyse (default all)")
    analyze.add_argument("--layers", help="spectrum: layers to analyse (default all)")
    analyze.add_argument("--calib", help="calibration corpus (default pg19)")
    analyze.add_argument("--nsamples", type=int, default=128, help="calibration windows (default 128)")
    analyze.add_argument("--seqlen", type=int, help="window length (default: model context capped at 4096)")
    analyze.add_argument("--calib-seed", dest="seed", type=int, default=0, metavar="N",
                         help="seed of the window sampler (default 0)")
    add_renamed_flag(analyze, "--seed", "--calib-seed", dest="seed", type=int)
    analyze.add_argument("--workers", type=int, default=1,
                         help="bi: split the calibration windows over this many workers (same result)")
    analyze.add_argument("--executor", choices=("process", "ray"), default="process",
                         help="bi: where --workers run (spawned processes, or Ray tasks)")
    analyze.add_argument("--out", help="folder for bi.json and bi.png (written atomically)")
    analyze.add_argument("--overwrite", action="store_true")

    search = sub.add_parser("search-svd", help="choose the SVD clipping rate on validation; report test; save the model")
    _add_model_args(search)
    _add_icl_args(search, single_task=True)
    search.add_argument("--modules", default="all", help="matrices to clip: q,k,v,o,attn,mlp,all,fc1/up+gate,fc2/down")
    search.add_argument("--layers", help="layers: indices, -1 (from the end), first:2, last:2 (default all)")
    search.add_argument("--grid", type=lambda v: [float(x) for x in _csv(v)], default=None,
                        help="candidate rates (default 0,0.1,0.5,0.75,0.9,0.95,0.99,0.995)")
    search.add_argument("--select", default="all", choices=("all", "top-k-condition"),
                        help="clip every selected matrix, or only the --top-k with the largest condition number")
    search.add_argument("--top-k", type=int, default=2)
    search.add_argument("--deeper-half", action="store_true", help="top-k-condition within the deeper half only")
    search.add_argument("--greedy-layers", action="store_true", help="search one rate per layer, deepest first")
    search.add_argument("--validation-limit", type=int, help="validation examples per candidate (default all)")
    search.add_argument("--test-limit", type=int, help="test examples (default all)")
    search.add_argument("--out", required=True, help="output directory for the clipped model (written atomically)")
    search.add_argument("--overwrite", action="store_true")

    bench = sub.add_parser("bench", help="cost report: params, disk, memory, prefill latency, decode speed (vs a baseline)")
    _add_model_args(bench)
    bench.add_argument("--baseline", help="the dense model to compare with (same --dtype/--device)")
    bench.add_argument("--prompt-len", type=int, default=128, help="prompt tokens (default 128)")
    bench.add_argument("--batch", type=int, default=4, help="prompts per forward (default 4)")
    bench.add_argument("--new-tokens", type=int, default=32, help="greedy tokens generated (default 32)")
    bench.add_argument("--repeats", type=int, default=5, help="timed runs after one warm-up; medians (default 5)")
    bench.add_argument("--sparse-kernels", action="store_true", help="CUDA only: also time the model with its 2:4 "
                       "weights on PyTorch's semi-structured sparse kernels (fp16/bf16)")
    bench.add_argument("--json", help="write the report to this JSON file")
    engine = bench.add_argument_group("llama.cpp engine (--engine llama.cpp: --model/--baseline are .gguf files)")
    engine.add_argument("--engine", default="torch", choices=("torch", "llama.cpp"),
                        help="torch: the HF checkpoint in PyTorch; llama.cpp: GGUF files in llama.cpp (llama-cpp-python)")
    engine.add_argument("--threads", type=int, help="llama.cpp threads (default: all cores)")
    engine.add_argument("--ppl", type=_csv, default=[], metavar="DATASETS",
                        help="also perplexity from llama.cpp's logits on prunekit's windows of these corpora")
    engine.add_argument("--seqlen", type=int, default=2048, help="window length for --ppl (default 2048)")
    engine.add_argument("--max-windows", type=int, metavar="K", help="only the first K windows for --ppl")
    engine.add_argument("--source", metavar="DIR", help="the HF checkpoint --model was exported from: its tokenizer "
                        "makes the windows and its prunekit perplexity is reported beside llama.cpp's")
    engine.add_argument("--baseline-source", metavar="DIR", help="the HF checkpoint --baseline was exported from")

    run = sub.add_parser("run", help="run a YAML recipe: steps (methods, LoRA, eval) in order, resumable")
    run.add_argument("recipe", help="recipe file (YAML: model?, calibration?, steps: [{method: ..., ...}])")
    run.add_argument("--model", help="model to start from (default: the recipe's 'model')")
    run.add_argument("--gguf-file", help="GGUF file inside --model (auto-detected when it is the only file)")
    run.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    run.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    run.add_argument("--data-root", help="folder of the named corpora (default: $PRUNEKIT_DATA or ../shared/data)")
    run.add_argument("--out", required=True, help="output directory (written atomically at the end)")
    run.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    run.add_argument("--resume", action="store_true", help="continue after the last completed step of a failed run")
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")

    report = sub.add_parser("report", help="one HTML + markdown page for a pruned model from its prunekit.json")
    report.add_argument("run_dir", help="a folder written by `prunekit prune` (holds prunekit.json)")
    report.add_argument("--eval", dest="eval_json", help="`prunekit eval --json` output of the pruned model")
    report.add_argument("--baseline-eval", help="`prunekit eval --json` output of the dense model, for comparison")
    report.add_argument("--bench", help="`prunekit bench --json` output (cost table; from --engine llama.cpp: the llama.cpp section)")
    report.add_argument("--analysis", action="append", default=[], help="a folder from `prunekit analyze --out` "
                        "(BI, spectra); repeatable")
    report.add_argument("--out", help="output folder (default RUN_DIR/report; written atomically)")
    report.add_argument("--overwrite", action="store_true")

    add_export_parser(sub)

    sub.add_parser("tasks", help="list the few-shot ICL tasks and their templates")
    sub.add_parser("methods", help="list the registered methods and their options")
    return parser


# commands that only run or inspect a model: any causal LM, no family adapter needed
EVALUATION_COMMANDS = ("eval", "bench", "check")


def _load(args) -> "api.LoadedModel":
    return api.load(args.model, gguf_file=args.gguf_file, dtype=args.dtype, device=args.device,
                    require_adapter=args.command not in EVALUATION_COMMANDS)


def _evaluate(lm, args, datasets: list[str]) -> dict | None:
    if not datasets:
        return None
    return api.evaluate_perplexity(
        lm, datasets, seqlen=args.eval_seqlen, max_windows=args.max_windows, protocol=args.protocol,
        data_root=args.data_root, batch_size=args.eval_batch_size, progress=not args.no_progress,
    )


def _validate_eval_args(args) -> None:
    if args.max_windows is not None and args.max_windows < 1:
        raise ArgumentError(f"--max-windows must be at least 1 (got {args.max_windows})")
    if args.eval_batch_size is not None and args.eval_batch_size < 1:
        raise ArgumentError(f"--eval-batch-size must be at least 1 (got {args.eval_batch_size})")


def cmd_prune(args) -> int:
    options = {key[4:]: value for key, value in vars(args).items() if key.startswith("opt_")}
    step = Step(args.method, args.sparsity, args.pattern, args.roles, args.layers, options)
    method_cls, parsed, target = step.validated()  # bad method/options/target fail before the model is loaded
    _reject_unused_calibration_flags(args, step, method_cls, parsed, target)
    _check_allocation_file(args, step, parsed)
    _check_model_serves_method(args, method_cls, parsed)
    calibration = CalibrationSettings(args.calib, args.nsamples, args.seqlen, args.seed or 0, args.calib_batch_size)
    calibration.validate()
    heal = recovery_settings(args, "heal_", "kd" if args.heal == "kd" else "lm") if args.heal else None
    _validate_eval_args(args)
    check_output_path(args.out, args.overwrite)
    round_trip = plan_round_trip(args)  # the GGUF type and llama.cpp checked before any pruning

    if args.stream:
        if round_trip:
            raise ArgumentError("--export-gguf runs after an in-memory prune; with --stream, run `prunekit export` "
                                "on the output")
        return _prune_streaming(args, step, calibration)
    # the flags are a one- or two-step recipe, run by the same step runner as `prunekit run`
    items = [RecipeStep(0, step.method, step=step, calibration=calibration)]
    if heal is not None:
        items.append(RecipeStep(0, args.heal, lora=heal))
    lm = _load(args)
    steps: list[dict] = []
    for item in items:
        steps.append(run_step(lm, item, data_root=args.data_root, progress=not args.no_progress, history=list(steps)))
    result = steps[0]
    started = time.perf_counter()
    evaluation = _evaluate(lm, args, args.eval)
    timings = {"eval": round(time.perf_counter() - started, 3)} if evaluation else {}
    record = api.build_record(lm, steps, evaluation, timings)
    path = _save_with_loss_plot(lm, args, record, steps)
    if "width" in result:
        width = result["width"]
        print(f"pruned {args.model} with {step.method} ({width['importance']}, ratio {width['ratio']:.3f}): "
              f"parameters {width['params_before']:,} -> {width['params_after']:,} "
              f"({100 * width['params_removed_fraction']:.1f}% removed; config {width['config']}) -> {path}")
    elif "experts" in result:
        experts = result["experts"]
        print(f"pruned {args.model} with {step.method} ({experts['criterion']}): experts per MoE layer "
              f"{experts['experts_before']} -> {experts['experts_after']} (top-{experts['top_k']}), parameters "
              f"{experts['params_before']:,} -> {experts['params_after']:,} "
              f"({100 * experts['params_removed_fraction']:.1f}% removed) -> {path}")
    elif "depth" in result:
        depth = result["depth"]
        print(f"pruned {args.model} with {step.method} ({depth['metric']}): removed layers {depth['remove']} "
              f"({depth['layers_before']} -> {depth['layers_after']}) -> {path}")
    elif "lowrank" in result:
        before, after = result["lowrank"]["params_selected"]
        print(f"pruned {args.model} with {step.method} (rate {result['step']['options']['rate']}): "
              f"{len(result['lowrank']['modules'])} matrices, their parameters {before:,} -> {after:,}"
              f"{' (stored as factors)' if result['step']['options'].get('factored') else ' (written back dense)'}"
              f" -> {path}")
    else:
        print(f"pruned {args.model} with {step.method} ({result['step'].get('pattern') or result['step'].get('sparsity')}):"
              f" {_sparsity_summary(result['sparsity'])} -> {path}")
    _print_ppl(evaluation)
    finish_round_trip(args, round_trip, path)
    return 0


def cmd_materialize(args) -> int:
    _validate_eval_args(args)
    check_output_path(args.out, args.overwrite)
    lm, step = api.materialize(args.path, args.sparsity, model=args.model, gguf_file=args.gguf_file, dtype=args.dtype,
                               device=args.device, round_to=args.round_to)  # checks the path before loading the model
    started = time.perf_counter()
    evaluation = _evaluate(lm, args, args.eval)
    record = api.build_record(lm, [step], evaluation, {"eval": round(time.perf_counter() - started, 3)} if evaluation else {})
    path = api.save(lm, args.out, record=record, overwrite=args.overwrite)
    width = step["width"]
    print(f"materialised the SPP path at {args.sparsity}: parameters {width['params_before']:,} -> "
          f"{width['params_after']:,} ({100 * width['params_removed_fraction']:.1f}% removed) -> {path}")
    _print_ppl(evaluation)
    return 0


def _reject_unused_calibration_flags(args, step: Step, method_cls, options, target) -> None:
    """A calibration flag the chosen method would ignore is an error, not a silent no-op."""
    given = [flag for flag, value in (("--calib", args.calib), ("--nsamples", args.nsamples), ("--seqlen", args.seqlen),
                                      ("--calib-seed", args.seed), ("--calib-batch-size", args.calib_batch_size)) if value is not None]
    if not given:
        return
    explicit_depth = method_cls.kind == "depth" and step.layers is not None
    uses_data = (bool(method_cls(target, options).needs) or needs_allocation_data(options)) and not explicit_depth
    if not uses_data:
        hint = " (add --report-error to measure its layer-wise error on calibration data)" \
            if any(f.name == "report_error" for f in dataclasses.fields(options)) else ""
        raise ArgumentError(f"{step.method} as configured uses no calibration data: {', '.join(given)} would have no "
                            f"effect{hint}")
    if args.calib_batch_size is not None and not method_cls.batches_calibration:
        raise ArgumentError(f"{step.method} takes its calibration windows one at a time: --calib-batch-size does "
                            "not apply")


def _check_allocation_file(args, step: Step, options) -> None:
    """An ``--allocation`` file with the wrong number of layers fails on the config, before any load."""
    from .methods.allocation import check_allocation_layers
    from .models.adapters.generic import config_layer_count
    from .models.loading import peek_config
    from .methods.selection import parse_layers

    if getattr(options, "allocation", "uniform") in ("uniform", "owl"):
        return
    config = peek_config(args.model, args.gguf_file)
    count = config_layer_count(config)
    if count:
        check_allocation_layers(options, parse_layers(step.layers, count))


def _check_model_serves_method(args, method_cls, options) -> None:
    """The model's type can take this method (read from its config, before any conversion or load)."""
    from .models.loading import check_config, peek_config

    config = peek_config(args.model, args.gguf_file)
    if config is not None:
        api.require_method_support(check_config(config, str(args.model)), method_cls, config, streaming=args.stream,
                                   options=options)


def _prune_streaming(args, step: Step, calibration: CalibrationSettings) -> int:
    if args.heal or args.eval:
        raise ArgumentError("--stream writes layers as it goes: --heal and --eval need the whole model; "
                            "run `prunekit recover` / `prunekit eval` on the output")
    api.require_streamable(*step.validated()[:2])
    path, record = api.prune_streaming(args.model, step, args.out, calibration=calibration, gguf_file=args.gguf_file,
                                       data_root=args.data_root, overwrite=args.overwrite, progress=not args.no_progress)
    summary = _sparsity_summary(record["sparsity"]) if record["sparsity"] else ""
    print(f"pruned {args.model} with {step.method}, streaming one layer at a time"
          + (f": {summary}" if summary else "") + f"; peak RSS {record['peak_rss_mb']:.0f} MB -> {path}")
    return 0


def _sparsity_summary(sparsity: dict) -> str:
    """The pruned matrices' zero fraction, and every decoder linear's when that differs."""
    text = f"sparsity {sparsity['pruned']:.4f} of the {sparsity['pruned_matrices']} pruned matrices"
    overall = sparsity.get("overall")
    if overall is not None and abs(overall - sparsity["pruned"]) > 5e-5:
        text += f", {overall:.4f} of all decoder linears"
    return text


def _save_with_loss_plot(lm, args, record: dict, steps: list[dict]) -> Path:
    """Save the model; a run that trained (LoRA or distillation) also gets its loss curves as ``loss.png``."""
    from .report.plots import recovery_loss_plot

    reports = [s["recovery"] for s in steps if "recovery" in s]

    def plot(tmp: Path) -> None:
        if reports:
            recovery_loss_plot(reports[-1], tmp / "loss.png")

    return api.save(lm, args.out, record=record, overwrite=args.overwrite, extras=plot)


def cmd_recover(args) -> int:
    settings = recovery_settings(args, "", args.objective)
    _validate_eval_args(args)
    check_output_path(args.out, args.overwrite)
    lm = _load(args)
    started = time.perf_counter()
    before = _evaluate(lm, args, args.eval)
    result = api.recover(lm, settings, data_root=args.data_root, progress=not args.no_progress)
    evaluation = _evaluate(lm, args, args.eval)
    if before:
        result["recovery"]["ppl_before"] = before["ppl"]
    timings = {"eval": round(time.perf_counter() - started - result["recovery"]["seconds"], 3)} if evaluation else {}
    record = api.build_record(lm, [result], evaluation, timings)
    path = _save_with_loss_plot(lm, args, record, [result])
    report = result["recovery"]
    how = "LoRA" if args.objective == "lm" else f"distillation ({report['params']}, teacher {report['teacher']['model']})"
    if report.get("heldout_loss_before") is not None:
        loss = (f"held-out loss {report['heldout_loss_before']:.3f} -> {report['heldout_loss_after']:.3f} "
                f"({report['heldout_windows']} windows)")
    else:
        loss = f"training loss {report['loss_first']:.3f} -> {report['loss_last']:.3f} (first/last tenth of the steps)"
    print(f"recovered {args.model} with {how}: {settings.steps} steps, {loss}, sparsity "
          f"{report['sparsity_before']:.4f} -> {report['sparsity_after']:.4f} -> {path}")
    for name, value in (before or {}).get("ppl", {}).items():
        print(f"ppl {name} before recovery: {value:.4f}")
    _print_ppl(evaluation)
    return 0


def _print_ppl(evaluation: dict | None) -> None:
    for name, value in (evaluation or {}).get("ppl", {}).items():
        detail = evaluation["eval"][name]
        print(f"ppl {name}: {value:.4f}  ({detail['windows']} windows x {detail['seqlen']} tokens)")


def cmd_eval(args) -> int:
    _validate_eval_args(args)
    if not args.ppl and not args.check_sparsity and not args.icl and not args.tasks:
        raise ArgumentError("nothing to evaluate: give --ppl wikitext2[,ptb,c4], --tasks boolq[,piqa,...], "
                            "--icl sst2[,rte,copa] and/or --check-sparsity")
    if args.tasks:
        _check_zero_shot_args(args)
    icl_options = _icl_options(args) if args.icl else {}
    _check_task_names(args.icl)
    if args.icl_limit is not None and args.icl_limit < 1:
        raise ArgumentError(f"--icl-limit must be at least 1 (got {args.icl_limit})")
    lm = _load(args)
    results: dict = {"model": lm.source}
    if args.check_sparsity:
        results.update(_check(lm, args.check_sparsity))
    if args.ppl:
        evaluation = _evaluate(lm, args, args.ppl)
        _print_ppl(evaluation)
        results.update(evaluation)
    if args.tasks:
        evaluation = api.evaluate_zero_shot(lm, args.tasks, limit=args.limit, batch_size=args.tasks_batch_size,
                                            data_root=args.data_root, progress=not args.no_progress)
        _print_zero_shot(evaluation)
        results.update(evaluation)
    if args.icl:
        evaluation = api.evaluate_icl(lm, args.icl, shots=args.shots, split=args.split, limit=args.icl_limit,
                                      data_root=args.data_root, progress=not args.no_progress, **icl_options)
        _print_icl(evaluation)
        results.update(evaluation)
    if args.json:
        write_json(Path(args.json), results)
    return 0


def _check_zero_shot_args(args) -> None:
    """Task names, --limit and the task files are checked before the model is loaded."""
    from .data import resolve_data_root
    from .eval.zero_shot import DEFAULT_TASKS, check_task_data

    args.tasks = [t for name in args.tasks for t in (DEFAULT_TASKS if name == "default" else [name])]
    for flag, value in (("--limit", args.limit), ("--tasks-batch-size", args.tasks_batch_size)):
        if value is not None and value < 1:
            raise ArgumentError(f"{flag} must be at least 1 (got {value})")
    check_task_data(args.tasks, resolve_data_root(args.data_root))


def _print_zero_shot(evaluation: dict) -> None:
    for name, result in evaluation["tasks"].items():
        norm = f", acc_norm {result['acc_norm']:.4f}" if "acc_norm" in result else ""
        print(f"{name} ({result['split']}, {result['examples']} examples): acc {result['acc']:.4f}{norm}")
    summary = evaluation["zero_shot"]
    print(f"mean acc {summary['mean_acc']:.4f} (acc_norm where reported: {summary['mean_acc_norm_or_acc']:.4f})")


def _check(lm, patterns: list[str]) -> dict:
    report = api.check_sparsity(lm, patterns)
    print(f"overall sparsity of decoder linears: {report['sparsity']['overall']:.4f}")
    for pattern, verdict in report["nm"].items():
        print(f"{pattern}: {'valid' if verdict['valid'] else 'not valid'}"
              + ("" if verdict["valid"] else f" ({len(verdict['invalid_modules'])} modules violate it)"))
    return report


def cmd_check(args) -> int:
    lm = _load(args)
    report = _check(lm, args.pattern)
    if args.json:
        write_json(Path(args.json), {"model": lm.source, **report})
    return 0


def cmd_methods(_args) -> int:
    """Each method once with its own options; options several methods share are explained once."""
    from .methods.base import LayerParallelOptions, MaskOptions, WorkerOptions

    shared = {f.name: f for mixin in (WorkerOptions, MaskOptions, LayerParallelOptions)
              for f in dataclasses.fields(mixin)}
    for name, method in available_methods().items():
        needs = ", ".join(sorted(method.needs)) or "no data"
        print(f"{name} — {method.summary} [{needs}]")
        fields = dataclasses.fields(method.Options)
        for f in fields:
            if f.name not in shared:
                print(f"    {_option_flag(f.name)}: {_option_help(f)}")
        common = [_option_flag(f.name) for f in fields if f.name in shared]
        if common:
            print(f"    shared: {', '.join(common)}")
    print("shared options:")
    for f in shared.values():
        print(f"    {_option_flag(f.name)}: {_option_help(f)}")
    return 0


def cmd_analyze(args) -> int:
    from .report import bar_plot

    if args.what == "spectrum":
        return _analyze_spectrum(args)
    calibration = CalibrationSettings(args.calib, args.nsamples, args.seqlen, args.seed)
    calibration.validate()
    check_workers(args.workers)  # before the model is loaded
    if args.out:
        check_output_path(args.out, args.overwrite)
    lm = _load(args)
    result = api.block_influence(lm, calibration, data_root=args.data_root, progress=not args.no_progress,
                                 workers=args.workers, executor=args.executor)
    print("layer  BI")
    for index, value in enumerate(result["bi"]):
        print(f"{index:5d}  {value:.5f}")
    print("ascending BI (removal order):", " ".join(map(str, result["order"])))
    if args.out:
        with atomic_directory(args.out, args.overwrite) as tmp:
            write_json(tmp / "bi.json", {"model": lm.source, **result})
            bar_plot(result["bi"], tmp / "bi.png", title=f"Block Influence — {Path(args.model).name}",
                     xlabel="decoder layer", ylabel="BI = 1 − mean cos(x_i, x_i+1)")
        print(f"wrote {args.out}/bi.json and bi.png")
    return 0


def _analyze_spectrum(args) -> int:
    from .report import heat_map

    if args.out:
        check_output_path(args.out, args.overwrite)
    lm = _load(args)
    result = api.spectra(lm, layers=args.layers, modules=args.modules)
    table = result["condition_number"]
    print("layer  " + "  ".join(f"{m:>16s}" for m in result["modules"]))
    for layer, row in table.items():
        print(f"{int(layer):5d}  " + "  ".join(f"{row.get(m, float('nan')):16.1f}" for m in result["modules"]))
    if args.out:
        with atomic_directory(args.out, args.overwrite) as tmp:
            write_json(tmp / "spectrum.json", {"model": lm.source, **result})
            heat_map([[row.get(m, float("nan")) for m in result["modules"]] for row in table.values()],
                     tmp / "spectrum.png", title=f"condition number — {Path(args.model).name}",
                     row_labels=[f"layer {i}" for i in table], col_labels=result["modules"], colorbar="σmax/σmin")
        print(f"wrote {args.out}/spectrum.json and spectrum.png")
    return 0


def _icl_options(args) -> dict:
    from .eval.icl import read_template_overrides

    if args.shots is not None and args.shots < 0:
        raise ArgumentError(f"--shots must be at least 0 (got {args.shots})")
    if args.validation_size < 1:
        raise ArgumentError(f"--validation-size must be at least 1 (got {args.validation_size})")
    return {"seed": args.icl_seed, "templates": read_template_overrides(args.icl_templates),
            "validation_size": args.validation_size}


def _check_task_names(names: list[str]) -> None:
    """Fail on an unknown task before the model is loaded."""
    from .data.tasks import require_known_task

    for name in names:
        require_known_task(name)


def _print_icl(evaluation: dict) -> None:
    for name, result in evaluation["icl"].items():
        f1 = f", macro-F1 {result['macro_f1']:.4f}" if "macro_f1" in result else ""
        print(f"icl {name} ({result['shots']}-shot, {result['split']}, {result['examples']} examples): "
              f"accuracy {result['accuracy']:.4f}{f1}")


def cmd_search_svd(args) -> int:
    options = _icl_options(args)
    for flag, value in (("--validation-limit", args.validation_limit), ("--test-limit", args.test_limit)):
        if value is not None and value < 1:
            raise ArgumentError(f"{flag} must be at least 1 (got {value})")
    _check_task_names([args.task])
    check_output_path(args.out, args.overwrite)
    lm = _load(args)
    result = api.search_svd(lm, args.task, shots=args.shots,
                            modules=args.modules, layers=args.layers, grid=args.grid, select=args.select,
                            top_k=args.top_k, deeper_half=args.deeper_half, validation_limit=args.validation_limit,
                            test_limit=args.test_limit, greedy_layers=args.greedy_layers, data_root=args.data_root,
                            progress=not args.no_progress, **options)
    step = {"step": {"method": "svd-search", "options": {k: result[k] for k in ("task", "shots", "grid", "greedy_layers")}},
            "calibration": None, "search": result, "sparsity": {}, "layers": [], "timings": {"search": result["seconds"]},
            "peak_rss_mb": None}
    path = api.save(lm, args.out, record=api.build_record(lm, [step]), overwrite=args.overwrite)
    test = result["test"]
    print(f"chosen rates (validation): {result['chosen_rates']}")
    print(f"test accuracy: unclipped {test['baseline']['accuracy']:.4f} -> clipped {test['chosen']['accuracy']:.4f}"
          f" ({test['chosen']['examples']} examples) -> {path}")
    return 0


def cmd_tasks(_args) -> int:
    from .eval.icl import DEFAULT_SHOTS, TEMPLATES

    for name, template in TEMPLATES.items():
        answers = f"answers {list(template.answers)}" if template.kind == "label" else f"choices {list(template.choices)}"
        print(f"{name} ({template.kind}, {DEFAULT_SHOTS[name]}-shot default, {answers}):\n    {template.text!r}")
    print("a task .json file: {name, kind, template, answers|choices, label_field, train, test[, validation]}")
    return 0


def cmd_bench(args) -> int:
    from .eval.cost import CostSettings

    if args.engine == "llama.cpp":
        return _bench_llamacpp(args)
    llama_only = [flag for flag, value in (("--threads", args.threads), ("--ppl", args.ppl), ("--source", args.source),
                                           ("--baseline-source", args.baseline_source)) if value]
    if llama_only:
        raise ArgumentError(f"{', '.join(llama_only)} only apply with --engine llama.cpp")

    settings = CostSettings(args.prompt_len, args.batch, args.new_tokens, args.repeats, args.sparse_kernels).validate()
    report = api.measure_cost(args.model, baseline=args.baseline, settings=settings, gguf_file=args.gguf_file,
                              dtype=args.dtype, device=args.device)
    _print_cost(report)
    if args.json:
        write_json(Path(args.json), report)
    return 0


def _bench_llamacpp(args) -> int:
    if args.batch != 4 or args.sparse_kernels or args.gguf_file:
        raise ArgumentError("--batch, --sparse-kernels and --gguf-file apply to --engine torch; with llama.cpp give "
                            "the .gguf files as --model/--baseline")
    if args.repeats < 1 or args.prompt_len < 1 or args.new_tokens < 1:
        raise ArgumentError("--repeats, --prompt-len and --new-tokens must be at least 1")
    report = api.measure_llamacpp(args.model, baseline=args.baseline, source=args.source,
                                  baseline_source=args.baseline_source, datasets=args.ppl, seqlen=args.seqlen,
                                  max_windows=args.max_windows, data_root=args.data_root, prompt_len=args.prompt_len,
                                  new_tokens=args.new_tokens, repeats=args.repeats, threads=args.threads,
                                  progress=not args.no_progress)
    _print_llamacpp(report)
    if args.json:
        write_json(Path(args.json), report)
    return 0


def _print_llamacpp(report: dict) -> None:
    speed = report["speed"]
    print(f"llama.cpp (llama-cpp-python {report['llama_cpp_python']}), {report['threads']} threads, medians of "
          f"{speed['model']['repeats']} runs in turns")
    labels = list(speed)
    print(f"{'':<24}" + "".join(f"{label:>14}" for label in labels) + ("       ratio" if "ratios" in report else ""))
    ratio_keys = {"file_mb": "file_mb", "prompt_tok_s": "prompt_speedup", "gen_tok_s": "gen_speedup"}
    for title, key, fmt in (("file MB", "file_mb", "{:.1f}"), ("load s", "load_s", "{:.3f}"),
                            ("prompt tokens/s", "prompt_tok_s", "{:.1f}"), ("generation tokens/s", "gen_tok_s", "{:.1f}")):
        ratio = report.get("ratios", {}).get(ratio_keys.get(key, ""), None)
        print(f"{title:<24}" + "".join(f"{fmt.format(speed[label][key]):>14}" for label in labels)
              + (f"{'x' + format(ratio, '.3f'):>12}" if ratio is not None else ""))
    for name, entry in report.get("perplexity", {}).items():
        cells = ", ".join(f"{key.replace('_', ' ')} {value:.2f}" for key, value in entry.items() if key.endswith(("_llamacpp", "_prunekit")))
        print(f"perplexity {name} ({entry['windows']} x {entry['seqlen']}): {cells}")


def cmd_run(args) -> int:
    from .runner import load_recipe_file, run_recipe

    recipe = load_recipe_file(args.recipe)  # every step is validated before the model is loaded
    model = args.model or recipe.model
    if not model:
        raise ArgumentError(f"{args.recipe}: no model: give --model or a 'model:' line in the recipe")
    check_output_path(args.out, args.overwrite)

    def load(path: str):
        return api.load(path, gguf_file=args.gguf_file if path == model else None, dtype=args.dtype, device=args.device)

    def report(number: int, item, record: dict) -> None:
        summary = {key: record[key] for key in ("depth", "width", "lowrank") if key in record}
        if record.get("sparsity"):
            summary = {"sparsity (pruned matrices)": round(record["sparsity"]["pruned"], 4),
                       "sparsity (all decoder linears)": round(record["sparsity"]["overall"], 4)}
        if "evaluation" in record:
            summary = {k: record["evaluation"][k] for k in ("ppl", "zero_shot") if k in record["evaluation"]}
        if "recovery" in record:
            recovery = record["recovery"]
            summary = {"held-out loss before": recovery.get("heldout_loss_before"),
                       "after": recovery.get("heldout_loss_after")} if recovery.get("heldout_loss_before") is not None \
                else {"training loss, last tenth": recovery["loss_last"]}
        print(f"step {number}/{len(recipe.steps)} (line {item.line}) {item.method}: done "
              f"{json.dumps(summary, default=str)[:300]}", flush=True)

    path, _ = run_recipe(recipe, model, args.out, resume=args.resume, overwrite=args.overwrite,
                         data_root=args.data_root, progress=not args.no_progress, load=load, on_step=report)
    print(f"wrote {path}")
    return 0


def cmd_report(args) -> int:
    from .report import write_report

    path = write_report(args.run_dir, args.out, evaluation=args.eval_json, baseline=args.baseline_eval,
                        cost=args.bench, analyses=args.analysis, overwrite=args.overwrite)
    print(f"wrote {path}/report.html and report.md")
    return 0


def _print_cost(report: dict) -> None:
    rows = [("parameters", "params", "{:,.0f}"), ("non-zero parameters", "params_nonzero", "{:,.0f}"),
            ("weights as loaded MB", "weights_mb", "{:.1f}"), ("weights on disk MB", "disk_mb", "{:.1f}"), ("peak RSS loading MB", "peak_rss_load_mb", "{:.0f}"),
            ("peak RSS generating MB", "peak_rss_generate_mb", "{:.0f}"), ("prefill ms", "prefill_ms", "{:.1f}"),
            ("decode tokens/s", "decode_tok_s", "{:.1f}")]
    model, baseline, ratios = report["model"], report.get("baseline"), report.get("ratios", {})
    print(f"{'':<24}" + "".join(f"{c:>16}" for c in (["model", "baseline", "ratio"] if baseline else ["model"])))
    for label, key, fmt in rows:
        cells = [fmt.format(model[key]) if model.get(key) is not None else "–"]
        if baseline:
            cells += [fmt.format(baseline[key]) if baseline.get(key) is not None else "–",
                      f"x{ratios[key]:.3f}" if key in ratios else "–"]
        print(f"{label:<24}" + "".join(f"{c:>16}" for c in cells))
    kernels = model.get("sparse_kernels")
    if kernels is not None:
        print(f"2:4 semi-structured kernels: {kernels['converted']} linears converted, {len(kernels['skipped'])} left dense"
              + (f"; prefill {kernels['prefill_ms']:.1f} ms (x{kernels['prefill_speedup']:.2f} vs dense storage), "
                 f"decode {kernels['decode_tok_s']:.1f} tokens/s" if kernels["converted"] else ""))
    for note in report.get("notes", []):
        print(f"note: {note}")


COMMANDS = {"run": cmd_run, "bench": cmd_bench, "report": cmd_report, "search-svd": cmd_search_svd, "tasks": cmd_tasks, "analyze": cmd_analyze, "prune": cmd_prune, "recover": cmd_recover, "eval": cmd_eval, "check": cmd_check, "methods": cmd_methods, "materialize": cmd_materialize,
            "export": cmd_export}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(_method_in(argv), heal="--heal" in argv).parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        _quiet_libraries(progress=not getattr(args, "no_progress", False))
    try:
        return COMMANDS[args.command](args)
    except PrunekitError as exc:
        print(f"prunekit: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("prunekit: interrupted; no output was written", file=sys.stderr)
        return 130


def _quiet_libraries(progress: bool) -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    if not progress:
        transformers.utils.logging.disable_progress_bar()
        # transformers' GGUF reader draws its "Converting and de-quantizing" bar with tqdm directly,
        # past its own progress switch: give that module a bar that is always off
        import functools

        from transformers import modeling_gguf_pytorch_utils as gguf_utils

        if hasattr(gguf_utils, "tqdm"):
            gguf_utils.tqdm = functools.partial(gguf_utils.tqdm, disable=True)


if __name__ == "__main__":
    sys.exit(main())
