"""The architecture zoo: every capability on a tiny random model of every causal-LM type.

For each model type in the installed transformers' causal-LM mapping, ``prunekit.zoo`` builds a
tiny random model from its config class (``prunekit/models/tiny.py``: 3 layers, width 64, 4 heads
/ 2 KV heads of 16, 4 experts top-2 for MoE, the shared tokenizer's vocabulary) and runs each
capability on a fresh copy: perplexity; magnitude, Wanda and SparseGPT at 50% and SparseGPT 2:4;
ShortGPT removing one layer; LLM-Pruner removing half of every layer's heads (KV groups) and MLP
channels; expert pruning (MoE); streamed Wanda. Each pruned
model is saved, reloaded with plain transformers and compared with the in-memory pruned model
(logits within 1e-4); mask methods are checked for their exact fraction / 2:4 validity. Random
weights say nothing about quality.

Run:  python benchmarks/zoo.py [--types llama,qwen3_moe] [--table-only]
Writes benchmarks/results/zoo.json and zoo.md (a row per model type, a column per capability).
"""

from __future__ import annotations

import argparse
import sys
import time

from common import RESULTS, SHARED, load_results, markdown_table, store_results

JSON = RESULTS / "zoo.json"
MASK_AND_DEPTH = ("magnitude 50%", "wanda 50%", "sparsegpt 50%", "sparsegpt 2:4", "shortgpt -1")


def _tokenizer():
    from transformers import AutoTokenizer

    from prunekit.models.loading import _find_gguf, convert_gguf

    model_dir = SHARED / "models" / "smollm2-135m-instruct"
    return AutoTokenizer.from_pretrained(convert_gguf(model_dir, _find_gguf(model_dir)))


def run(types: list[str] | None) -> None:
    import transformers
    from transformers.utils import logging as hf_logging

    from prunekit.zoo import zoo_matrix

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    results = load_results(JSON)
    results["transformers"] = transformers.__version__
    results.setdefault("rows", {})
    started = time.perf_counter()

    def keep(model_type: str, row: dict) -> None:
        results["rows"][model_type] = row
        store_results(JSON, results)
        ok = sum(v is None for v in row.get("capabilities", {}).values())
        print(f"{time.perf_counter() - started:7.0f} s  {model_type}: "
              + (row["reason"] if "reason" in row else f"{ok}/{len(row['capabilities'])} pass"), flush=True)

    zoo_matrix(_tokenizer(), SHARED / "data", types, on_row=keep)


def _cell(value: str | None) -> str:
    return "✅" if value is None else value.replace("|", "\\|")


def write_table(results: dict) -> None:
    from prunekit.zoo import CAPABILITIES, WIDTH

    rows = results.get("rows", {})
    tested = {t: r["capabilities"] for t, r in rows.items() if "capabilities" in r}
    excluded = {t: r["reason"] for t, r in rows.items() if "reason" in r}
    passes = {c: sum(caps.get(c, "") is None for caps in tested.values()) for c in CAPABILITIES}
    every_mask_and_depth = [t for t, caps in tested.items() if all(caps.get(c, "") is None for c in MASK_AND_DEPTH)]
    moe = [t for t, caps in tested.items() if caps.get("expert-prune 50%") != "n/a (dense model)"]
    moe_pass = [t for t in moe if tested[t].get("expert-prune 50%") is None]
    lines = ["# Architecture zoo", "",
             f"transformers {results.get('transformers')}: every model type in its causal-LM mapping. A tiny random "
             "model per type (3 layers, width 64, 4 heads / 2 KV heads, 4 experts top-2; Doge: 16 product-key experts, a "
             "4x4 key grid), each capability on a fresh "
             "copy, checked (exact sparsity or 2:4, layer count), saved, reloaded with plain transformers and compared "
             "with the in-memory pruned model (logits within 1e-4). ✅ = passed; otherwise the one-line reason. Random "
             "weights: this proves plumbing, not quality.", "",
             "Command: `python benchmarks/zoo.py` (writes this file from `zoo.json`).", "",
             f"Totals: {len(tested)} decoder-only types tested, {len(excluded)} not decoder-only text models. "
             f"Every mask method and depth removal: **{len(every_mask_and_depth)}** types; LLM-Pruner (half the units): "
             f"**{passes[WIDTH]}**; MoE types with expert pruning: **{len(moe_pass)} of {len(moe)}**; "
             f"streamed Wanda: **{passes['stream wanda 50%']}**.", "",
             markdown_table(["capability", "types passing"], [[c, f"{passes[c]} / {len(tested)}"] for c in CAPABILITIES]),
             markdown_table(["model type", *CAPABILITIES],
                            [[t, *(_cell(caps.get(c, "not run")) for c in CAPABILITIES)] for t, caps in sorted(tested.items())]),
             "Not in the zoo (not decoder-only text models):", "",
             markdown_table(["model type", "reason"], [[t, r.replace("|", "\\|")] for t, r in sorted(excluded.items())])]
    (RESULTS / "zoo.md").write_text("\n".join(lines))
    width = sorted(t for t, caps in tested.items() if caps.get(WIDTH) is None)
    summary = [f"Measured by `python benchmarks/zoo.py` on transformers {results.get('transformers')} (tiny random "
               f"models of every causal-LM type; full matrix in `benchmarks/results/zoo.md`): **{len(tested)}** "
               f"decoder-only types tested.", "",
               f"- Every mask method (magnitude, Wanda, SparseGPT 50% and 2:4) and depth removal, saved and reloaded "
               f"to identical logits — **{len(every_mask_and_depth)} types**: {', '.join(sorted(every_mask_and_depth))}.",
               f"- LLM-Pruner width pruning (family adapters) — **{len(width)} types**: {', '.join(width)}.",
               f"- Expert pruning — **{len(moe_pass)} of {len(moe)} MoE types**: {', '.join(sorted(moe_pass))}.",
               f"- Refused with the reason (recurrent, state-space and hybrid models; types whose tiny config or forward "
               f"fails): the rest, each listed with its one-line reason in `zoo.md`."]
    _replace_readme_block("\n".join(summary))


def _replace_readme_block(text: str) -> None:
    """The README's supported-models list is this benchmark's output, between its two markers."""
    readme = RESULTS.parents[1] / "README.md"
    content = readme.read_text()
    begin, end = "<!-- zoo:begin -->", "<!-- zoo:end -->"
    if begin in content and end in content:
        head, rest = content.split(begin, 1)
        readme.write_text(head + begin + "\n" + text + "\n" + end + rest.split(end, 1)[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--types", help="comma-separated model types (default: every causal-LM type)")
    parser.add_argument("--table-only", action="store_true", help="rewrite zoo.md from zoo.json")
    args = parser.parse_args(argv)
    if not args.table_only:
        run([t.strip() for t in args.types.split(",")] if args.types else None)
    write_table(load_results(JSON))
    return 0


if __name__ == "__main__":
    sys.exit(main())
