"""Depth pruning on every shared model: BI profiles, removal-order overlap, perplexity vs layers
removed per metric, and the speed/size of a model with ~25% of its layers removed.

Run:  python benchmarks/depth.py [--nsamples 32] [--calib-seqlen 2048] [--eval-windows 16]
      [--parts bi,sweep,seeds,speed] [--ppl-nsamples 8] [--ppl-seqlen 256] [--seed-counts 1,2,4]

``seeds`` draws the random baseline again with seeds 1-4 at the ``--seed-counts`` removal counts:
one draw (the sweep's ``random`` column, seed 0) can land on the layers BI would pick, so the
table also gives the mean, min and max of the five draws.
Writes benchmarks/results/depth.json, depth.md, depth_bi.png and depth_sweep.png. Finished parts
are kept in the JSON and skipped on the next run.
"""

from __future__ import annotations

import argparse
import statistics

import torch

import prunekit
from prunekit.api import block_influence
from prunekit.data import evaluation_windows, resolve_data_root
from prunekit.eval.perplexity import perplexity
from prunekit.methods.shortgpt import ShortGPT
from prunekit.recipe import CalibrationSettings

from common import copy_model, RESULTS, SHARED_MODELS, checkpoint_mb, load_results, markdown_table, store_results, timings

METRICS = ("bi", "angular", "ppl", "reverse", "random")
EXTRA_RANDOM_SEEDS = (1, 2, 3, 4)  # seed 0 is the sweep's own random column


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


def removal_sets(base, entry: dict, calib: dict, args, depth: int) -> dict:
    """For each metric, a function count -> layers it removes — computed once, not per count.

    BI and the greedy perplexity order are nested (the first n of one ranking), so one scoring
    pass serves every count; the angular block needs the same last-token states for each n.
    Reverse and random use the method's own plans. Each set is then removed through
    ``shortgpt --layers`` so every point runs the same removal code.
    """
    from prunekit.capture import angular_distances, layer_io_statistics
    from prunekit.data import calibration_windows, resolve_data_root

    windows = calibration_windows(base.tokenizer, "pg19", nsamples=args.nsamples, seqlen=args.calib_seqlen, seed=0,
                                  data_root=resolve_data_root())
    stats = layer_io_statistics(base, windows.ids, batch_size=max(1, 4096 // args.calib_seqlen), progress=True)
    bi_order = torch.sort(stats["bi"], stable=True).indices.tolist()
    if "greedy_ppl_order" not in entry:
        record = prunekit.prune(copy_model(base), "shortgpt", remove_layers=max(counts_for(depth)), metric="ppl",
                                calibration=CalibrationSettings(corpus="pg19", nsamples=args.ppl_nsamples,
                                                                seqlen=args.ppl_seqlen), progress=True)
        entry["greedy_ppl_order"] = record["depth"]["removal_order"]
    greedy_order = entry["greedy_ppl_order"]

    def angular(count: int) -> list[int]:
        start = int(torch.argmin(angular_distances(stats["last_token"], count)))
        return list(range(start, start + count))

    return {"bi": lambda n: bi_order[:n], "angular": angular, "ppl": lambda n: greedy_order[:n],
            "reverse": planned(base, "reverse"), "random": planned(base, "random")}


def planned(base, metric: str, **options):
    """count -> the layers ShortGPT's own plan removes for a data-free metric (reverse, random)."""
    return lambda count: ShortGPT(None, ShortGPT.parse_options({"remove_layers": count, "metric": metric, **options})).plan(
        base, None, batch_size=1, progress=False)["remove"]


def removal_ppl(model_dir, remove: list[int], windows) -> tuple[float, list[int]]:
    """Perplexity after removing ``remove`` through ``shortgpt --layers`` (the same code for every point)."""
    lm = prunekit.load(model_dir)
    record = prunekit.prune(lm, "shortgpt", layers=",".join(map(str, remove)), progress=False)
    return perplexity(lm.model, windows, progress=False)["ppl"], record["depth"]["remove"]



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--calib-seqlen", type=int, default=2048)
    parser.add_argument("--eval-windows", type=int, default=16, help="WikiText-2 windows per sweep point")
    parser.add_argument("--eval-seqlen", type=int, default=2048)
    parser.add_argument("--parts", default="bi,sweep,seeds,speed")
    parser.add_argument("--seed-counts", default="1,2,4", help="removal counts at which the random baseline is redrawn")
    parser.add_argument("--ppl-nsamples", type=int, default=8, help="calibration windows of the greedy ppl metric")
    parser.add_argument("--ppl-seqlen", type=int, default=256, help="their length (the greedy search runs ~230 evaluations)")
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
            orders = removal_sets(base, entry, calib, args, depth)
            for count in counts_for(depth):
                for metric in METRICS:
                    point = sweep.setdefault(str(count), {})
                    if metric in point:
                        continue
                    point[metric], point[f"{metric}_removed"] = removal_ppl(model_dir, orders[metric](count), windows)
                    store_results(path, results)
                    print(name, count, metric, point[metric], flush=True)
        if "seeds" in parts:
            counts = [c for c in counts_for(depth) if str(c) in args.seed_counts.split(",")]
            for seed in EXTRA_RANDOM_SEEDS:
                draw = planned(base, "random", random_baseline_seed=seed)
                for count in counts:
                    point = entry.setdefault("sweep", {}).setdefault(str(count), {})
                    key = f"random_seed{seed}"
                    if key in point:
                        continue
                    point[key], point[f"{key}_removed"] = removal_ppl(model_dir, draw(count), windows)
                    store_results(path, results)
                    print(name, count, key, point[key], flush=True)
        if "speed" in parts and "speed" not in entry:
            count = round(0.25 * depth)
            lm = prunekit.load(model_dir)
            prunekit.prune(lm, "shortgpt", remove_layers=count, calibration=calib["pg19"], progress=False)
            entry["speed"] = {
                "removed": count, "rounds": SPEED_ROUNDS,
                "dense": {"params": sum(p.numel() for p in base.model.parameters()), "checkpoint_mb": checkpoint_mb(base)},
                "pruned": {"params": sum(p.numel() for p in lm.model.parameters()), "checkpoint_mb": checkpoint_mb(lm)},
            }
            for label, measured in alternating_timings(base, lm).items():
                entry["speed"][label].update(measured)
            store_results(path, results)
    write_outputs(results, args)


SPEED_ROUNDS = 3


def alternating_timings(dense, pruned) -> dict:
    """Dense and pruned timed in turns, ``SPEED_ROUNDS`` rounds, the median of each: on this shared
    machine the speed drifts over minutes, and timing one model after the other put the drift into
    the comparison (one sequential run showed no prefill gain; in turns it is ~20%)."""
    rounds = {"dense": [], "pruned": []}
    for _ in range(SPEED_ROUNDS):
        for label, lm in (("dense", dense), ("pruned", pruned)):
            rounds[label].append(timings(lm))
    return {label: {key: statistics.median(r[key] for r in runs) for key in runs[0]} for label, runs in rounds.items()}


def write_outputs(results: dict, args) -> None:
    from prunekit.report import bar_plot

    lines = [f"Calibration {args.nsamples} PG19 windows x {args.calib_seqlen} tokens (greedy ppl metric: "
             f"{args.ppl_nsamples} x {args.ppl_seqlen}); sweep perplexity on the first "
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
            rows = [[str(c)] + [f"{entry['sweep'][str(c)].get(m, float('nan')):.2f}" for m in METRICS]
                    + [random_draws(entry["sweep"][str(c)])] for c in counts]
            lines.append(f"### {name}: WikiText-2 perplexity after removing n layers (dense {entry['sweep']['0']['dense']:.2f})\n")
            lines.append(markdown_table(["n"] + list(METRICS) + ["random, 5 seeds: mean (min–max)"], rows))
            lines.append("`random` is seed 0; the last column adds seeds " + ", ".join(map(str, EXTRA_RANDOM_SEEDS))
                         + " where they were drawn (`--parts seeds`).\n")
            _sweep_plot(entry, counts, name)
        if "speed" in entry:
            d, p = entry["speed"]["dense"], entry["speed"]["pruned"]
            lines.append(f"### {name}: {entry['speed']['removed']} layers removed by BI — speed and size (CPU)\n")
            lines.append(markdown_table(["", "params", "checkpoint MB", "prefill ms (256 tokens)", "decode tok/s"], [
                ["dense", f"{d['params']:,}", f"{d['checkpoint_mb']:.0f}", f"{d['prefill_ms']:.0f}", f"{d['decode_tok_s']:.1f}"],
                ["pruned", f"{p['params']:,}", f"{p['checkpoint_mb']:.0f}", f"{p['prefill_ms']:.0f}", f"{p['decode_tok_s']:.1f}"]]))
    (RESULTS / "depth.md").write_text("\n".join(lines))
    print("\n".join(lines))


def random_values(point: dict) -> list:
    """The random baseline's perplexity for seed 0 and each extra seed (None where not drawn)."""
    return [point.get("random")] + [point.get(f"random_seed{s}") for s in EXTRA_RANDOM_SEEDS]


def random_draws(point: dict) -> str:
    """Mean (min–max) of the random baseline over seed 0 and the extra seeds, when all were drawn."""
    values = random_values(point)
    if any(v is None for v in values):
        return "–"
    return f"{statistics.mean(values):.2f} ({min(values):.2f}–{max(values):.2f})"


def _sweep_plot(entry: dict, counts: list[int], name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for metric in METRICS:
        ax.plot(counts, [entry["sweep"][str(c)].get(metric, float("nan")) for c in counts], marker="o", label=metric)
    drawn = [c for c in counts if random_draws(entry["sweep"][str(c)]) != "–"]
    if drawn:
        means = [statistics.mean(random_values(entry["sweep"][str(c)])) for c in drawn]
        ax.plot(drawn, means, marker="x", linestyle=":", color="grey", label="random, 5-seed mean")
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
