"""Uniform vs OWL layer-wise sparsity for Wanda and SparseGPT at 50/60/70% on SmolLM2-135M.

OWL (Yin et al. 2024) reports its gains at high unstructured sparsity (70% on LLaMA); this table
checks that regime and the two below it on the shared model, with the paper's constants (M = 5,
λ = 0.08). Every state prunes a fresh copy of the dense model with the same calibration windows
(``--nsamples`` × ``--seqlen`` C4 tokens, seed 0) and is evaluated on the same WikiText-2 and C4
windows (``--eval-windows`` × 2048 tokens). A state is stored as soon as it finishes; a re-run
skips finished ones. The OWL allocation of the Wanda 70% run is drawn in ``allocation_owl.png``.

Run:  python benchmarks/allocation.py [--states wanda:70%:owl,...] [--eval-windows 16] [--nsamples 128]
Writes benchmarks/results/allocation.json and allocation.md.
"""

from __future__ import annotations

import argparse
import sys
import time

from common import RESULTS, SHARED_MODELS, copy_model, load_results, markdown_table, store_results

DATASETS = ("wikitext2", "c4")
METHODS = ("wanda", "sparsegpt")
LEVELS = (0.5, 0.6, 0.7)
MODES = ("uniform", "owl")
STATES = [f"{m}:{int(100 * s)}%:{a}" for s in reversed(LEVELS) for m in METHODS for a in MODES]  # 70% first
JSON = RESULTS / "allocation.json"


def _parse(state: str) -> tuple[str, float, str]:
    method, level, mode = state.split(":")
    return method, float(level.rstrip("%")) / 100, mode


def run(states: list[str], eval_windows: int, nsamples: int, seqlen: int) -> None:
    import prunekit
    from prunekit.recipe import CalibrationSettings

    results = load_results(JSON)
    results.setdefault("states", {})
    results["settings"] = {"model": "smollm2-135m", "calibration": f"c4 {nsamples} x {seqlen}, seed 0",
                           "eval": f"{eval_windows} x 2048 tokens per dataset", "owl_m": 5.0, "owl_lambda": 0.08}
    dense = prunekit.load(SHARED_MODELS["smollm2-135m"])
    if "dense" not in results["states"]:
        ppl = prunekit.evaluate_perplexity(dense, DATASETS, seqlen=2048, max_windows=eval_windows, progress=False)
        results["states"]["dense"] = {"ppl": ppl["ppl"]}
        store_results(JSON, results)
    calibration = CalibrationSettings(corpus="c4", nsamples=nsamples, seqlen=seqlen, seed=0)
    for state in states:
        if state in results["states"]:
            print(f"{state}: done before, skipped")
            continue
        method, sparsity, mode = _parse(state)
        lm = copy_model(dense)
        started = time.perf_counter()
        step = prunekit.prune(lm, method, sparsity=sparsity, allocation=mode, calibration=calibration, progress=False)
        prune_seconds = time.perf_counter() - started
        ppl = prunekit.evaluate_perplexity(lm, DATASETS, seqlen=2048, max_windows=eval_windows, progress=False)
        entry = {"ppl": ppl["ppl"], "prune_seconds": round(prune_seconds, 1),
                 "overall_sparsity": step["sparsity"]["overall"], "allocation": step.get("allocation")}
        results["states"][state] = entry
        store_results(JSON, results)
        print(f"{state}: " + ", ".join(f"{k} {v:.2f}" for k, v in ppl["ppl"].items()) + f" ({prune_seconds:.0f} s)",
              flush=True)
        del lm
    write_table(results)


def write_table(results: dict) -> None:
    states = results["states"]
    settings = results["settings"]
    dense = states.get("dense", {}).get("ppl", {})
    rows = [["dense", "-", "-", *(f"{dense[d]:.2f}" for d in DATASETS), "-", "-", "-"]] if dense else []
    for sparsity in LEVELS:
        for method in METHODS:
            for mode in MODES:
                entry = states.get(f"{method}:{int(100 * sparsity)}%:{mode}")
                if entry is None:
                    continue
                layers = list((entry.get("allocation") or {}).get("sparsity", {}).values())
                span = f"{min(layers):.3f}–{max(layers):.3f}" if layers else f"{sparsity:.3f}"
                rows.append([method, f"{int(100 * sparsity)}%", mode, *(f"{entry['ppl'][d]:.2f}" for d in DATASETS),
                             f"{entry['overall_sparsity']:.4f}", span, f"{entry['prune_seconds']:.0f}"])
    lines = ["# Layer-wise sparsity allocation: uniform vs OWL", "",
             f"SmolLM2-135M-Instruct, 2 CPU cores. Calibration {settings['calibration']}; perplexity on "
             f"{settings['eval']} (WikiText-2 test, C4 validation). OWL: M = {settings['owl_m']}, "
             f"λ = {settings['owl_lambda']} (the paper's constants), layer sparsities within target ± λ, the "
             "parameter-weighted overall target kept. `prune s` includes OWL's dense scoring pass.", "",
             "Command: `python benchmarks/allocation.py` (writes this file from `allocation.json`).", "",
             markdown_table(["method", "target", "allocation", "WikiText-2", "C4", "overall sparsity",
                             "layer range", "prune s"], rows)]
    owl = [(f"{m} {int(100 * s)}%", states.get(f"{m}:{int(100 * s)}%:owl"), states.get(f"{m}:{int(100 * s)}%:uniform"))
           for s in LEVELS for m in METHODS]
    verdicts = [f"- {name}: OWL {o['ppl']['wikitext2']:.2f} vs uniform {u['ppl']['wikitext2']:.2f} on WikiText-2 "
                f"({100 * (o['ppl']['wikitext2'] / u['ppl']['wikitext2'] - 1):+.1f}%), {o['ppl']['c4']:.2f} vs "
                f"{u['ppl']['c4']:.2f} on C4 ({100 * (o['ppl']['c4'] / u['ppl']['c4'] - 1):+.1f}%)"
                for name, o, u in owl if o and u]
    if verdicts:
        lines += ["OWL against uniform at the same overall sparsity:", "", *verdicts, ""]
    example = states.get("wanda:70%:owl", {}).get("allocation")
    if example:
        _plot(example, 0.7)
        lines += ["![OWL allocation, Wanda 70%](allocation_owl.png)", "",
                  "Wanda 70% with OWL: each layer's outlier ratio (share of |W|·‖X‖ scores above 5× the layer "
                  "mean, on the dense model) and the sparsity it was given.", ""]
    (RESULTS / "allocation.md").write_text("\n".join(lines))


def _plot(allocation: dict, target: float) -> None:
    from prunekit.report.plots import allocation_plot

    layers = sorted(int(k) for k in allocation["sparsity"])
    allocation_plot(layers, [allocation["sparsity"][str(i)] for i in layers], RESULTS / "allocation_owl.png",
                    target=target, outlier_ratio=[allocation["outlier_ratio"][str(i)] for i in layers],
                    title="OWL allocation, Wanda 70%, SmolLM2-135M")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--states", default=",".join(STATES), help="comma-separated method:level%%:allocation")
    parser.add_argument("--eval-windows", type=int, default=16)
    parser.add_argument("--nsamples", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--table-only", action="store_true", help="rewrite allocation.md from allocation.json")
    args = parser.parse_args(argv)
    if args.table_only:
        write_table(load_results(JSON))
        return 0
    states = [s.strip() for s in args.states.split(",") if s.strip()]
    for state in states:
        method, _, mode = _parse(state)
        if method not in METHODS or mode not in MODES:
            parser.error(f"unknown state {state}")
    run(states, args.eval_windows, args.nsamples, args.seqlen)
    return 0


if __name__ == "__main__":
    sys.exit(main())
