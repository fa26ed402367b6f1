"""Depth pruning on every shared model: BI profiles, removal-order overlap, perplexity vs layers
removed per metric, and the speed/size of a model with ~25% of its layers removed.

Run:  python benchmarks/depth.py [--nsamples 32] [--calib-seqlen 2048] [--eval-windows 16] [--parts bi,sweep,speed]
Writes benchmarks/results/depth.json, depth.md, depth_bi.png and depth_sweep.png. Finished parts
are kept in the JSON and skipped on the next run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import prunekit
from prunekit.api import block_influence
from prunekit.data import evaluation_windows, resolve_data_root
from prunekit.eval.perplexity import perplexity
from prunekit.recipe import CalibrationSettings

from common import RESULTS, SHARED_MODELS, load_results, markdown_table, store_results

METRICS = ("bi", "angular", "ppl", "reverse", "random")


def counts_for(depth: int) -> list[int]:
    """1, 2, 4, ... up to ~30% of the layers."""
    limit = max(1, round(0.3 * depth))
    counts, n = [], 1
    while n < limit:
        counts.append(n)
        n *= 2
    return counts + [limit]


def overlap(a: list[int], b: list[int], k: int) -> float:
    return len(set(a[:k]) & set(b[:k])) / k


@torch.inference_mode()
def timings(lm, prompt_len: int = 256, new_tokens: int = 32, repeats: int = 5) -> dict:
    """Prefill latency and decode tokens/s after one warm-up, median of ``repeats``."""
    ids = torch.randint(0, lm.tokenizer.vocab_size, (1, prompt_len), generator=torch.Generator().manual_seed(0))
    lm.model.config.use_cache = True
    prefill, decode = [], []
    for attempt in range(repeats + 1):
        started = time.perf_counter()
        lm.model(input_ids=ids, use_cache=True)
        t_prefill = time.perf_counter() - started
        started = time.perf_counter()
        lm.model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                          pad_token_id=lm.tokenizer.eos_token_id)
        t_total = time.perf_counter() - started
        if attempt:  # the first run is the warm-up
            prefill.append(t_prefill)
            decode.append(new_tokens / max(t_total - t_prefill, 1e-9))
    lm.model.config.use_cache = False
    return {"prefill_ms": 1000 * statistics.median(prefill), "decode_tok_s": statistics.median(decode)}


def checkpoint_mb(lm) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        lm.model.save_pretrained(tmp)
        return sum(p.stat().st_size for p in Path(tmp).glob("*.safetensors")) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--calib-seqlen", type=int, default=2048)
    parser.add_argument("--eval-windows", type=int, default=16, help="WikiText-2 windows per sweep point")
    parser.add_argument("--eval-seqlen", type=int, default=2048)
    parser.add_argument("--parts", default="bi,sweep,speed")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    path = RESULTS / "depth.json"
    results = load_results(path)
    root = resolve_data_root()
    for name, model_dir in SHARED_MODELS.items():
        base = prunekit.load(model_dir)
        depth = base.adapter.num_layers()
        entry = results.setdefault(name, {"layers": depth})
        calib = {c: CalibrationSettings(corpus=c, nsamples=args.nsamples, seqlen=args.calib_seqlen)
                 for c in ("pg19", "wikitext2:test")}
        if "bi" in parts and "bi" not in entry:
            entry["bi"] = {c: block_influence(base, s, progress=True) for c, s in calib.items()}
            orders = [entry["bi"][c]["order"] for c in calib]
            entry["bi_overlap"] = {k: overlap(*orders, k) for k in (1, 2, 4, 8)}
            store_results(path, results)
        windows = evaluation_windows(base.tokenizer, "wikitext2", seqlen=args.eval_seqlen, data_root=root,
                                     max_windows=args.eval_windows)
        if "sweep" in parts:
            sweep = entry.setdefault("sweep", {})
            if "0" not in sweep:
                sweep["0"] = {m: perplexity(base.model, windows, progress=False)["ppl"] for m in ("dense",)}
            for count in counts_for(depth):
                for metric in METRICS:
                    point = sweep.setdefault(str(count), {})
                    if metric in point:
                        continue
                    lm = prunekit.load(model_dir)
                    record = prunekit.prune(lm, "shortgpt", remove_layers=count, metric=metric,
                                            calibration=calib["pg19"], progress=False)
                    point[metric] = perplexity(lm.model, windows, progress=False)["ppl"]
                    point[f"{metric}_removed"] = record["depth"]["remove"]
                    store_results(path, results)
                    print(name, count, metric, point[metric], flush=True)
        if "speed" in parts and "speed" not in entry:
            count = round(0.25 * depth)
            lm = prunekit.load(model_dir)
            prunekit.prune(lm, "shortgpt", remove_layers=count, calibration=calib["pg19"], progress=False)
            entry["speed"] = {
                "removed": count,
                "dense": {**timings(base), "params": sum(p.numel() for p in base.model.parameters()),
                          "checkpoint_mb": checkpoint_mb(base)},
                "pruned": {**timings(lm), "params": sum(p.numel() for p in lm.model.parameters()),
                           "checkpoint_mb": checkpoint_mb(lm)},
            }
            store_results(path, results)
    write_outputs(results, args)


def write_outputs(results: dict, args) -> None:
    from prunekit.report import bar_plot

    lines = [f"Calibration {args.nsamples} windows x {args.calib_seqlen} tokens; sweep perplexity on the first "
             f"{args.eval_windows} WikiText-2 test windows of {args.eval_seqlen} tokens. "
             "Generated by `python benchmarks/depth.py`.\n"]
    for name, entry in results.items():
        if "bi" in entry:
            rows = [[str(i)] + [f"{entry['bi'][c]['bi'][i]:.4f}" for c in entry["bi"]] for i in range(entry["layers"])]
            lines.append(f"### {name}: Block Influence per layer\n")
            lines.append(markdown_table(["layer"] + [f"BI ({c})" for c in entry["bi"]], rows))
            lines.append("Removal order (ascending BI): " + "; ".join(
                f"{c}: {' '.join(map(str, entry['bi'][c]['order'][:10]))}" for c in entry["bi"]) + "\n")
            lines.append("Overlap of the first k of both orders: " + ", ".join(
                f"k={k}: {v:.2f}" for k, v in entry["bi_overlap"].items()) + "\n")
            bar_plot(entry["bi"]["pg19"]["bi"], RESULTS / "depth_bi.png", title=f"Block Influence ({name}, PG19)",
                     xlabel="decoder layer", ylabel="BI", highlight=entry["bi"]["pg19"]["order"][: round(0.25 * entry["layers"])])
        if "sweep" in entry:
            counts = sorted((int(c) for c in entry["sweep"] if c != "0"))
            rows = [[str(c)] + [f"{entry['sweep'][str(c)].get(m, float('nan')):.2f}" for m in METRICS] for c in counts]
            lines.append(f"### {name}: WikiText-2 perplexity after removing n layers (dense {entry['sweep']['0']['dense']:.2f})\n")
            lines.append(markdown_table(["n"] + list(METRICS), rows))
            _sweep_plot(entry, counts, name)
        if "speed" in entry:
            d, p = entry["speed"]["dense"], entry["speed"]["pruned"]
            lines.append(f"### {name}: {entry['speed']['removed']} layers removed by BI — speed and size (CPU)\n")
            lines.append(markdown_table(["", "params", "checkpoint MB", "prefill ms (256 tokens)", "decode tok/s"], [
                ["dense", f"{d['params']:,}", f"{d['checkpoint_mb']:.0f}", f"{d['prefill_ms']:.0f}", f"{d['decode_tok_s']:.1f}"],
                ["pruned", f"{p['params']:,}", f"{p['checkpoint_mb']:.0f}", f"{p['prefill_ms']:.0f}", f"{p['decode_tok_s']:.1f}"]]))
    (RESULTS / "depth.md").write_text("\n".join(lines))
    print("\n".join(lines))


def _sweep_plot(entry: dict, counts: list[int], name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for metric in METRICS:
        ax.plot(counts, [entry["sweep"][str(c)].get(metric, float("nan")) for c in counts], marker="o", label=metric)
    ax.axhline(entry["sweep"]["0"]["dense"], color="grey", linestyle="--", label="dense")
    ax.set_yscale("log")
    ax.set_xlabel("layers removed")
    ax.set_ylabel("WikiText-2 perplexity")
    ax.set_title(f"Depth pruning ({name})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "depth_sweep.png")
    plt.close(fig)


if __name__ == "__main__":
    main()
