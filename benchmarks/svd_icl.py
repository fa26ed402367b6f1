"""SVD clipping and few-shot ICL on every shared model: accuracy vs clipping rate ξ when the first
two vs the last two decoder layers are clipped (SST-2, RTE, COPA), and the validated ξ search.

Curves: every matrix of the chosen layers (``--modules all``) is clipped at each ξ of the paper's
grid, from the original weights each time; accuracy on the test split (a seeded subset of
``--test-limit`` examples) is averaged over ``--seeds`` demonstration sets, because a small model's
few-shot accuracy swings with the demonstrations drawn. Search: the ``--top-k`` matrices with the
largest condition number in the deeper half, ξ chosen on validation only, then test accuracy of
the choice next to the unclipped model (same demonstrations, seed 0).

Run:  python benchmarks/svd_icl.py [--tasks sst2,rte,copa] [--seeds 0,1] [--test-limit 120] [--parts curves,search]
Writes benchmarks/results/svd_icl.json, svd_icl.md and svd_icl_<task>.png. Finished points are
kept in the JSON and skipped on the next run.
"""

from __future__ import annotations

import argparse
import statistics

import prunekit
from prunekit.data import resolve_data_root
from prunekit.eval.icl import DEFAULT_SHOTS, evaluate_icl, load_icl_task
from prunekit.report import line_plot
from prunekit.methods.selection import parse_layers, parse_modules, view_selector
from prunekit.methods.svd_search import PAPER_GRID, ClippableSet

from common import RESULTS, SHARED_MODELS, load_results, markdown_table, store_results

GROUPS = {"first two layers": "first:2", "last two layers": "last:2"}


def curves(lm, name: str, results: dict, args) -> None:
    root = resolve_data_root()
    adapter = lm.adapter
    views_for = view_selector(adapter, parse_modules(args.modules, adapter))
    entry = results.setdefault(name, {}).setdefault("curves", {})
    for task_name in args.tasks:
        task = load_icl_task(task_name, root)
        shots = DEFAULT_SHOTS[task_name]
        for group, spec in GROUPS.items():
            clippable = ClippableSet([v for i in parse_layers(spec, adapter.num_layers()) for v in views_for(i)])
            for rate in PAPER_GRID:
                for seed in args.seeds:
                    key = f"{task_name}|{group}|{rate}|{seed}"
                    if rate == 0.0:  # nothing clipped: one measurement serves both groups
                        key = f"{task_name}|none|0.0|{seed}"
                    if key in entry:
                        continue
                    clippable.apply({v.name: rate for v in clippable.views})
                    result = evaluate_icl(lm.model, lm.tokenizer, task, shots=shots, split="test", seed=seed,
                                          limit=args.test_limit)
                    entry[key] = {"accuracy": result["accuracy"], "macro_f1": result.get("macro_f1"),
                                  "examples": result["examples"], "shots": shots, "seconds": result["seconds"]}
                    print(key, entry[key], flush=True)
                    store_results(RESULTS / "svd_icl.json", results)
            clippable.restore()


def search(lm, name: str, results: dict, args, original: dict) -> None:
    entry = results.setdefault(name, {}).setdefault("search", {})
    for task_name in args.tasks:
        if task_name in entry:
            continue
        result = prunekit.search_svd(lm, task_name, shots=DEFAULT_SHOTS[task_name], select="top-k-condition",
                                     top_k=args.top_k, deeper_half=True, validation_limit=args.validation_limit,
                                     test_limit=args.test_limit, progress=False)
        entry[task_name] = {k: result[k] for k in ("chosen_rates", "validation_baseline", "test", "trials", "selection",
                                                   "seconds")}
        print(task_name, result["chosen_rates"], result["test"], flush=True)
        store_results(RESULTS / "svd_icl.json", results)
        lm.model.load_state_dict(original)  # the search leaves its choice applied


def write_outputs(results: dict, args) -> None:
    lines = [f"Few-shot ICL on the test split (GLUE dev for SST-2/RTE, SuperGLUE validation for COPA), a seeded subset "
             f"of at most {args.test_limit} examples, accuracy averaged over demonstration seeds "
             f"{','.join(map(str, args.seeds))}; every matrix of the chosen layers clipped at ξ, from the original "
             "weights each time.\n"]
    for name, entry in results.items():
        table = entry.get("curves", {})
        for task_name in args.tasks:
            series, rows = {}, []
            for group in GROUPS:
                values = []
                for rate in PAPER_GRID:
                    accs = [table.get(f"{task_name}|{'none' if rate == 0.0 else group}|{rate}|{seed}", {}).get("accuracy")
                            for seed in args.seeds]
                    accs = [a for a in accs if a is not None]
                    values.append(statistics.mean(accs) if len(accs) == len(args.seeds) else float("nan"))
                series[group] = values
            for rate_index, rate in enumerate(PAPER_GRID):
                rows.append([str(rate)] + [f"{series[g][rate_index]:.3f}" for g in GROUPS])
            lines.append(f"\n### {name} — {task_name} ({DEFAULT_SHOTS[task_name]}-shot)\n")
            lines.append(markdown_table(["ξ"] + list(GROUPS), rows))
            line_plot(series, RESULTS / f"svd_icl_{task_name}.png", x=list(range(len(PAPER_GRID))),
                      title=f"{name} {task_name}: accuracy vs clipping rate", xlabel="ξ index (" +
                      ", ".join(map(str, PAPER_GRID)) + ")", ylabel="test accuracy")
        found = entry.get("search", {})
        if found:
            lines.append(f"\n### {name} — validated search (top-{args.top_k} condition numbers, deeper half)\n")
            rows = []
            for task_name, r in found.items():
                rate = sorted(set(r["chosen_rates"].values()))
                rows.append([task_name, ", ".join(m.split("layers.")[-1] for m in r["selection"]["matrices"]),
                             ",".join(map(str, rate)), f"{r['validation_baseline']:.3f}",
                             f"{max(t['accuracy'] for t in r['trials']):.3f}", f"{r['test']['baseline']['accuracy']:.3f}",
                             f"{r['test']['chosen']['accuracy']:.3f}", str(r["test"]["chosen"]["examples"])])
            lines.append(markdown_table(["task", "matrices", "chosen ξ", "val unclipped", "val best", "test unclipped",
                                         "test chosen", "test examples"], rows))
    (RESULTS / "svd_icl.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", default="sst2,rte,copa")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--modules", default="all")
    parser.add_argument("--test-limit", type=int, default=120)
    parser.add_argument("--validation-limit", type=int, default=120)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--parts", default="curves,search")
    args = parser.parse_args()
    args.tasks = args.tasks.split(",")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    path = RESULTS / "svd_icl.json"
    results = load_results(path)
    for name, model_dir in SHARED_MODELS.items():
        lm = prunekit.load(model_dir)
        original = {k: v.clone() for k, v in lm.model.state_dict().items()}
        if "curves" in args.parts:
            curves(lm, name, results, args)
        if "search" in args.parts:
            search(lm, name, results, args, original)
    store_results(path, results)
    write_outputs(results, args)
    print((RESULTS / "svd_icl.md").read_text())


if __name__ == "__main__":
    main()
