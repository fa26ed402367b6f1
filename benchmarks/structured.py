"""LLM-Pruner on every shared model: importance criteria at 10/20/30% of parameters removed, LoRA
recovery at 20%, and what the shrink buys in size and speed.

Parts (finished ones are kept in the JSON and skipped on the next run):
- ``sweep``: WikiText-2 and PTB perplexity for element1, element2, vector, l2 and random groups at
  10%, 20%, 30% of all parameters removed (``--param-ratio``; default layer range, KV-group heads).
  Perplexity on the first ``--eval-windows`` windows of ``--eval-seqlen`` tokens of each test set
  (15 states × 2 full test sets would take ~15 CPU hours here); the dense row uses the same windows.
- ``recovery``: element1 at 20%, then LoRA (r=8, α=16, dropout 0.05) for ``--lora-steps`` steps
  of ``--lora-batch`` × ``--lora-seqlen`` C4-train tokens; perplexity before/after, loss curve PNG.
- ``speed``: parameters, checkpoint size, prefill latency and decode tokens/s, dense vs element1 20%.

Run:  python benchmarks/structured.py [--parts sweep,recovery,speed] [--eval-windows 16] [--eval-seqlen 512]
Writes benchmarks/results/structured.json, structured.md, structured_sweep.png, structured_lora_loss.png.
"""

from __future__ import annotations

import argparse
import time

import prunekit
from prunekit.data import evaluation_windows, resolve_data_root
from prunekit.eval.perplexity import perplexity
from prunekit.models.loading import LoadedModel
from prunekit.recovery import LoraSettings
from prunekit.report import line_plot

from common import copy_model, RESULTS, SHARED_MODELS, checkpoint_mb, load_results, markdown_table, store_results, timings

IMPORTANCES = ("element1", "element2", "vector", "l2", "random")
RATIOS = (0.1, 0.2, 0.3)
DATASETS = ("wikitext2", "ptb")



def _ppl(lm: LoadedModel, windows: dict) -> dict:
    return {name: perplexity(lm.model, w, progress=False)["ppl"] for name, w in windows.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--parts", default="sweep,recovery,speed")
    parser.add_argument("--eval-windows", type=int, default=16)
    parser.add_argument("--eval-seqlen", type=int, default=512)
    parser.add_argument("--lora-steps", type=int, default=40)
    parser.add_argument("--lora-batch", type=int, default=2)
    parser.add_argument("--lora-seqlen", type=int, default=256)
    parser.add_argument("--lora-lr", type=float, default=3e-4)
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    path = RESULTS / "structured.json"
    results = load_results(path)
    root = resolve_data_root()
    for name, model_dir in SHARED_MODELS.items():
        dense = prunekit.load(model_dir)
        windows = {d: evaluation_windows(dense.tokenizer, d, seqlen=args.eval_seqlen, data_root=root,
                                         max_windows=args.eval_windows) for d in DATASETS}
        entry = results.setdefault(name, {"eval": {"windows": args.eval_windows, "seqlen": args.eval_seqlen}})
        if "dense" not in entry:
            entry["dense"] = {"ppl": _ppl(dense, windows), "params": sum(p.numel() for p in dense.model.parameters())}
            store_results(path, results)
        if "sweep" in parts:
            sweep = entry.setdefault("sweep", {})
            for ratio in RATIOS:
                for importance in IMPORTANCES:
                    key = f"{importance}@{ratio}"
                    if key in sweep:
                        continue
                    lm = copy_model(dense)
                    step = prunekit.prune(lm, "llm-pruner", param_ratio=ratio, importance=importance, progress=False)
                    sweep[key] = {"importance": importance, "param_ratio": ratio, "ppl": _ppl(lm, windows),
                                  "removed": step["width"]["params_removed_fraction"], "ratio": step["width"]["ratio"],
                                  "prune_seconds": step["timings"]["prune"]}
                    store_results(path, results)
                    print(name, key, sweep[key]["ppl"], flush=True)
        if "recovery" in parts and "recovery" not in entry:
            lm = copy_model(dense)
            prunekit.prune(lm, "llm-pruner", param_ratio=0.2, importance="element1", progress=False)
            before = _ppl(lm, windows)
            settings = LoraSettings(steps=args.lora_steps, batch_size=args.lora_batch, seqlen=args.lora_seqlen,
                                    lr=args.lora_lr)
            step = prunekit.recover(lm, settings, progress=False)
            entry["recovery"] = {"before": before, "after": _ppl(lm, windows), "settings": step["recovery"]["settings"],
                                 "losses": step["recovery"]["losses"], "seconds": step["recovery"]["seconds"],
                                 "tokens": step["recovery"]["tokens"]}
            store_results(path, results)
        if "speed" in parts and "speed" not in entry:
            lm = copy_model(dense)
            prunekit.prune(lm, "llm-pruner", param_ratio=0.2, importance="element1", progress=False)
            entry["speed"] = {}
            for label, model in (("dense", dense), ("element1 20%", lm)):
                started = time.perf_counter()
                entry["speed"][label] = {"params": sum(p.numel() for p in model.model.parameters()),
                                         "checkpoint_mb": checkpoint_mb(model), **timings(model)}
                entry["speed"][label]["seconds"] = round(time.perf_counter() - started, 1)
            store_results(path, results)
        del dense
    write_outputs(results)


def write_outputs(results: dict) -> None:
    lines = []
    for name, entry in results.items():
        ev = entry["eval"]
        header = ["importance"] + [f"{d} @{int(r * 100)}%" for r in RATIOS for d in DATASETS]
        rows = [["dense"] + [f"{entry['dense']['ppl'][d]:.2f}" for _ in RATIOS for d in DATASETS]]
        sweep = entry.get("sweep", {})
        for importance in IMPORTANCES:
            cells = []
            for ratio in RATIOS:
                point = sweep.get(f"{importance}@{ratio}")
                cells += [f"{point['ppl'][d]:.2f}" if point else "–" for d in DATASETS]
            rows.append([importance] + cells)
        removed = {f"{r:.0%}": f"{sweep[f'element1@{r}']['removed']:.3f} (ratio {sweep[f'element1@{r}']['ratio']:.3f})"
                   for r in RATIOS if f"element1@{r}" in sweep}
        lines.append(f"### {name}: LLM-Pruner importance criteria — perplexity vs parameters removed\n")
        lines.append(markdown_table(header, rows))
        lines.append(f"Perplexity on the first {ev['windows']} windows × {ev['seqlen']} tokens of each test set. "
                     f"Achieved fraction of parameters removed (per-layer ratio): {removed}. Layers 4–27 of 30 pruned "
                     "(the reference's 4:30 of 32 as fractions), heads by KV group.\n")
        if sweep:
            series = {imp: [sweep[f"{imp}@{r}"]["ppl"]["wikitext2"] for r in RATIOS if f"{imp}@{r}" in sweep]
                      for imp in IMPORTANCES}
            line_plot({k: v for k, v in series.items() if len(v) == len(RATIOS)}, RESULTS / "structured_sweep.png",
                      x=[100 * r for r in RATIOS], title=f"LLM-Pruner on {name}", xlabel="% parameters removed",
                      ylabel="WikiText-2 perplexity", logy=True)
        if "recovery" in entry:
            rec = entry["recovery"]
            s = rec["settings"]
            lines.append(f"### {name}: LoRA recovery of element1 at 20%\n")
            lines.append(markdown_table(["state"] + list(DATASETS),
                                        [["dense"] + [f"{entry['dense']['ppl'][d]:.2f}" for d in DATASETS],
                                         ["pruned 20%"] + [f"{rec['before'][d]:.2f}" for d in DATASETS],
                                         ["pruned 20% + LoRA"] + [f"{rec['after'][d]:.2f}" for d in DATASETS]]))
            lines.append(f"LoRA r={s['rank']}, α={s['alpha']}, dropout {s['dropout']}, lr {s['lr']}, {s['steps']} steps × "
                         f"{s['batch_size']} × {s['seqlen']} tokens of {s['data']} ({rec['tokens']} tokens), "
                         f"{rec['seconds']:.0f} s on this CPU; merged into the weights.\n")
            line_plot({"training loss": rec["losses"]}, RESULTS / "structured_lora_loss.png",
                      title=f"LoRA recovery — {name}, LLM-Pruner 20%", xlabel="step", ylabel="causal-LM loss")
        if "speed" in entry:
            sp = entry["speed"]
            d, p = sp["dense"], sp["element1 20%"]
            lines.append(f"### {name}: size and speed, dense vs LLM-Pruner 20% (CPU, 2 cores)\n")
            lines.append(markdown_table(
                ["model", "params", "checkpoint MB", "prefill ms (1×256)", "decode tok/s"],
                [["dense", f"{d['params']:,}", f"{d['checkpoint_mb']:.0f}", f"{d['prefill_ms']:.0f}", f"{d['decode_tok_s']:.1f}"],
                 ["element1 20%", f"{p['params']:,}", f"{p['checkpoint_mb']:.0f}", f"{p['prefill_ms']:.0f}", f"{p['decode_tok_s']:.1f}"],
                 ["ratio", f"{p['params'] / d['params']:.3f}", f"{p['checkpoint_mb'] / d['checkpoint_mb']:.3f}",
                  f"{d['prefill_ms'] / p['prefill_ms']:.2f}× faster", f"{p['decode_tok_s'] / d['decode_tok_s']:.2f}×"]]))
    lines.append("Generated by `python benchmarks/structured.py`.\n")
    (RESULTS / "structured.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
