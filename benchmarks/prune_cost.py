"""What pruning costs: prune time and peak memory per method, side by side with an earlier commit,
and how both grow with the model.

Part ``compare``: SparseGPT and Wanda (50% and 2:4) on the shared SmolLM2-135M with the same
32 × 512 C4 calibration windows, each run in a fresh process, alternating between this tree and
the ``--baseline`` commit (checked out as a git worktree), ``--repeats`` times each. Recorded per
run: the prune step's seconds (``prunekit.json``'s ``timings.prune``), the phases this tree times
(calibration forward ``embed``, ``statistics``, ``solve``, ``error_report``, ``propagate``), the
process's peak RSS during the prune (VmHWM after resetting it), and WikiText-2 perplexity on the
first ``--ppl-windows`` 2048-token windows; the two trees' weights are compared tensor by tensor.

Part ``scaling``: random-weight Llama shapes of 0.135B (SmolLM2's), 0.32B and 1.07B parameters
(TinyLlama's shape) plus the real SmolLM2, the prune step only, 8 × 256 C4 tokens; prune seconds
and peak RSS per method, and the same for the ``--baseline`` commit's Wanda (whose reconstruction
report accumulated every input Gram matrix). A table and a log-log plot.

Run:  python benchmarks/prune_cost.py [--parts compare,scaling] [--baseline 1e8d4a6] [--repeats 2]
Writes benchmarks/results/prune_cost.{json,md} and prune_cost_scaling.png.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import REPO, RESULTS, SHARED, SHARED_MODELS, load_results, markdown_table, store_results

BASELINE = "1e8d4a6"  # main before the cost work of issue 24
# (method, target, method options): the float64 state shows what float32 rounding alone moves
COMPARE_STATES = [("sparsegpt", "50%", {}), ("wanda", "50%", {}), ("sparsegpt", "2:4", {}),
                  ("sparsegpt", "50%", {"precision": "float64"})]
TARGETS = {"50%": {"sparsity": 0.5}, "2:4": {"pattern": "2:4"}}
# Llama shapes by parameter count (vocabulary 49,152: the shared tokenizer's)
SHAPES = {
    "0.135B": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                   num_key_value_heads=3, tie_word_embeddings=True),
    "0.32B": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=24, num_attention_heads=16,
                  num_key_value_heads=4, tie_word_embeddings=True),
    "1.07B": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                  num_key_value_heads=4, tie_word_embeddings=True),
}
SCALING_METHODS = ("magnitude", "wanda", "sparsegpt")

CHILD = r"""
import json, sys, time
from pathlib import Path
spec = json.loads(sys.argv[1])
import torch
import prunekit
from prunekit.recipe import CalibrationSettings

def hwm_mb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

lm = prunekit.load(spec["model"])
if spec.get("shape"):
    from transformers import LlamaConfig, LlamaForCausalLM
    from prunekit.models.adapters import adapter_for
    from prunekit.models.loading import LoadedModel
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=lm.model.config.vocab_size, max_position_embeddings=2048, **spec["shape"])
    model = LlamaForCausalLM(config).eval()
    tokenizer = lm.tokenizer
    del lm
    lm = LoadedModel(model, tokenizer, adapter_for(model), {"model": "random llama " + spec["label"]})
params = sum(p.numel() for p in lm.model.parameters())
Path("/proc/self/clear_refs").write_text("5")
started = time.perf_counter()
record = prunekit.prune(lm, spec["method"], calibration=CalibrationSettings(nsamples=spec["nsamples"], seqlen=spec["seqlen"]),
                        progress=False, **spec["target"], **spec.get("options", {}))
out = {"wall": time.perf_counter() - started, "peak_rss_mb": hwm_mb(), "params": params,
       "prune_seconds": record["timings"]["prune"], "phases": record["timings"].get("phases"),
       "calibration": record["calibration"]}
if spec.get("weights"):
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in lm.model.state_dict().items() if ".layers." in k}, spec["weights"])
if spec.get("ppl_windows"):
    out["ppl"] = prunekit.evaluate_perplexity(lm, ["wikitext2"], max_windows=spec["ppl_windows"], progress=False)["ppl"]["wikitext2"]
print("RESULT " + json.dumps(out), flush=True)
"""


def run_child(tree: Path, spec: dict) -> dict:
    """One measurement in a fresh interpreter that imports prunekit from ``tree``."""
    # a worktree in a temporary folder has no ../shared beside it: name the data root
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "TQDM_DISABLE": "1", "PRUNEKIT_DATA": str(SHARED / "data")}
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], capture_output=True, text=True, env=env)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"{tree.name} {spec['method']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def baseline_tree(ref: str, root: Path) -> Path:
    """The ``ref`` commit checked out beside the working tree (a detached git worktree)."""
    path = root / f"prunekit-{ref}"
    if not path.exists():
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), ref], check=True,
                       capture_output=True)
    return path


def current_tree(args, root: Path) -> Path:
    """The tree measured as "now": the working tree, or ``--current REF`` checked out (so edits made
    while a long run goes on do not leak into it)."""
    return baseline_tree(args.current, root) if args.current else REPO


def compare_weights(a: Path, b: Path) -> dict:
    import torch
    from safetensors.torch import load_file

    first, second = load_file(str(a)), load_file(str(b))
    masks = sum(int(((first[k] == 0) != (second[k] == 0)).sum()) for k in first)
    total = sum(first[k].numel() for k in first)
    return {"identical": all(torch.equal(first[k], second[k]) for k in first),
            "mask_disagreement": masks / total,
            "max_abs_diff": max(float((first[k] - second[k]).abs().max()) for k in first)}


def part_compare(args, results: dict, work: Path) -> None:
    base, current = baseline_tree(args.baseline, work), current_tree(args, work)
    model = str(SHARED_MODELS["smollm2-135m"])
    wanted = set(args.states.split(",")) if args.states else None
    for method, target, options in COMPARE_STATES:
        label = f"{method} {target}" + "".join(f" {v}" for v in options.values())
        if wanted is not None and label not in wanted:
            continue
        runs: dict[str, list[dict]] = {"baseline": [], "current": []}
        weights = {}
        for repeat in range(args.repeats):
            order = (("baseline", base), ("current", current)) if repeat % 2 == 0 else (("current", current), ("baseline", base))
            for which, tree in order:
                spec = {"model": model, "method": method, "target": TARGETS[target], "options": options,
                        "nsamples": 32, "seqlen": 512}
                if repeat == 0:
                    weights[which] = work / f"{which}-{label.replace(' ', '-').replace(':', 'of')}.safetensors"
                    spec.update(weights=str(weights[which]), ppl_windows=args.ppl_windows)
                runs[which].append(run_child(tree, spec))
                print(label, which, runs[which][-1]["prune_seconds"], flush=True)
        entry = {"method": method, "target": target, "options": options, "label": label, "baseline_ref": args.baseline,
                 "current_ref": args.current or "working tree", "repeats": args.repeats,
                 "ppl_windows": args.ppl_windows}
        for which, values in runs.items():
            entry[which] = {"prune_seconds": [r["prune_seconds"] for r in values],
                            "median_prune_seconds": statistics.median(r["prune_seconds"] for r in values),
                            "peak_rss_mb": max(r["peak_rss_mb"] for r in values),
                            "phases": values[0]["phases"], "ppl_wikitext2": values[0].get("ppl"),
                            "calibration": values[0]["calibration"]}
        entry["time_ratio"] = entry["current"]["median_prune_seconds"] / entry["baseline"]["median_prune_seconds"]
        entry["weights"] = compare_weights(weights["baseline"], weights["current"])
        results["|".join(["compare", method, target, *map(str, options.values())])] = entry
        store_results(RESULTS / "prune_cost.json", results)


def part_scaling(args, results: dict, work: Path) -> None:
    base, current = baseline_tree(args.baseline, work), current_tree(args, work)
    model = str(SHARED_MODELS["smollm2-135m"])
    labels = ["smollm2-135m (real)"] + list(SHAPES)
    for label in labels:
        shape = SHAPES.get(label)
        runs = [(m, current, "current") for m in SCALING_METHODS] + [("wanda", base, "baseline")]
        for method, tree, which in runs:
            key = f"scaling|{label}|{method}|{which}"
            if key in results and not args.redo:
                continue
            spec = {"model": model, "method": method, "target": TARGETS["50%"], "nsamples": 8, "seqlen": 256,
                    "shape": shape, "label": label}
            result = run_child(tree, spec)
            results[key] = {"model": label, "method": method, "tree": which, "params": result["params"],
                            "prune_seconds": result["prune_seconds"], "peak_rss_mb": result["peak_rss_mb"],
                            "phases": result["phases"]}
            store_results(RESULTS / "prune_cost.json", results)
            print(key, result["prune_seconds"], flush=True)


def write_report(results: dict) -> None:
    lines = ["# Prune cost", ""]
    compared = [r for k, r in results.items() if k.startswith("compare|")]
    if compared:
        ref = compared[0]["baseline_ref"]
        rows = []
        for r in compared:
            cur, old = r["current"], r["baseline"]
            phases = cur["phases"] or {}
            rows.append([r.get("label", f"{r['method']} {r['target']}"), str(r["repeats"]), f"{old['median_prune_seconds']:.1f}",
                         f"{cur['median_prune_seconds']:.1f}", f"{r['time_ratio']:.2f}",
                         f"{old['peak_rss_mb']:.0f}", f"{cur['peak_rss_mb']:.0f}",
                         " / ".join(f"{phases.get(p, 0):.1f}" for p in ("statistics", "solve", "error_report", "propagate")),
                         f"{old['ppl_wikitext2']:.3f} / {cur['ppl_wikitext2']:.3f}",
                         "identical" if r["weights"]["identical"] else
                         f"{100 * r['weights']['mask_disagreement']:.4f}% of masks differ, largest weight change {r['weights']['max_abs_diff']:.1e}"])
        lines += [f"## This tree against `{ref}`, side by side", "",
                  markdown_table(["method", "runs each", f"prune s ({ref}, median)", "prune s (now, median)", "ratio", f"peak RSS MB ({ref})",
                                  "peak RSS MB (now)", "now: statistics / solve / error report / propagate s",
                                  "WikiText-2 ppl (then / now)", "weights"], rows),
                  f"SmolLM2-135M, 32 × 512 C4 calibration windows (seed 0), fresh process per run, the two trees "
                  f"alternating; perplexity (of each tree's first run) on the first "
                  f"{compared[0]['ppl_windows']} WikiText-2 test windows of 2048 tokens. Peak RSS: the process's VmHWM "
                  "during the prune (model and calibration included). `sparsegpt 50% float64` runs statistics and solve "
                  "in float64 (`--precision float64`): there the two trees agree, so what the float32 rows differ by "
                  "is rounding, to which a 50%-sparse model's perplexity is sensitive at about this level.", ""]
    scaled = [r for k, r in results.items() if k.startswith("scaling|")]
    if scaled:
        order = ["smollm2-135m (real)"] + list(SHAPES)
        columns = [(m, "current") for m in SCALING_METHODS] + [("wanda", "baseline")]
        rows = []
        for label in order:
            cells = {(r["method"], r["tree"]): r for r in scaled if r["model"] == label}
            if not cells:
                continue
            params = next(iter(cells.values()))["params"]
            rows.append([label, f"{params / 1e9:.3f}"] + [
                f"{cells[c]['prune_seconds']:.1f} s, {cells[c]['peak_rss_mb']:.0f} MB" if c in cells else "–"
                for c in columns])
        ref = next((r for k, r in results.items() if k.startswith("compare|")), {}).get("baseline_ref", BASELINE)
        lines += ["## How cost grows with the model", "",
                  markdown_table(["model", "params (B)"] + [f"{m}" + (f" ({ref})" if t == "baseline" else "")
                                                           for m, t in columns], rows),
                  "Prune step only (`timings.prune`), 50% unstructured, 8 × 256 C4 tokens, peak RSS of the "
                  "process (the model's float32 weights included). Random-weight Llama shapes built from "
                  "`LlamaConfig` with the shared tokenizer's 49,152-token vocabulary.", "",
                  "![prune time against parameters](prune_cost_scaling.png)", ""]
        plot_scaling(scaled, columns)
    lines.append("Generated by `python benchmarks/prune_cost.py`.")
    (RESULTS / "prune_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def plot_scaling(scaled: list[dict], columns: list[tuple[str, str]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for method, tree in columns:
        points = sorted((r["params"], r["prune_seconds"]) for r in scaled
                        if r["method"] == method and r["tree"] == tree and "real" not in r["model"])
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", label=method + (" (before)" if tree == "baseline" else ""))
    if scaled:
        low = min(r["params"] for r in scaled)
        anchor = [r for r in scaled if r["method"] == "wanda" and r["tree"] == "current" and r["params"] == low]
        if anchor:
            xs = [low, max(r["params"] for r in scaled)]
            ax.plot(xs, [anchor[0]["prune_seconds"] * x / low for x in xs], "k:", label="linear in params")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("prune seconds (8 × 256 tokens)")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(RESULTS / "prune_cost_scaling.png", dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="compare,scaling", help="compare, scaling, or report (rewrite the tables only)")
    parser.add_argument("--baseline", default=BASELINE, help="the commit to time side by side (default %(default)s)")
    parser.add_argument("--current", help="measure this commit as 'now' instead of the working tree")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--states", help="compare only these, e.g. 'sparsegpt 50% float64' (comma list)")
    parser.add_argument("--ppl-windows", type=int, default=4)
    parser.add_argument("--redo", action="store_true", help="re-measure scaling rows already stored")
    args = parser.parse_args()
    results = load_results(RESULTS / "prune_cost.json")
    parts = set(args.parts.split(","))
    with tempfile.TemporaryDirectory(prefix="prune-cost-") as tmp:
        work = Path(tmp)
        try:
            if "compare" in parts:
                part_compare(args, results, work)
            if "scaling" in parts:
                part_scaling(args, results, work)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "prune"], capture_output=True)
    write_report(results)


if __name__ == "__main__":
    main()
