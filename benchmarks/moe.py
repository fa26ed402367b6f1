"""Mixture-of-experts at a real model's layer shapes: expert pruning 25% / 50%, Wanda 50% on the experts, and
LLM-Pruner removing a quarter of the attention heads beside them.

No MoE checkpoint is reachable from this machine (no model hub), so the model is built from
transformers' own ``Qwen3MoeConfig`` with Qwen3-30B-A3B's per-layer shapes — hidden 2048, 32 query
/ 4 KV heads of width 128, 128 experts of width 768, top-8 routing — with 2 of its 48 layers and the
shared tokenizer's vocabulary (so calibration is real C4 text), in float32 with random weights
(seed 0): 1.45 B parameters, 5.8 GB, sized so that a run's copies (the model being pruned, the
calibration activations, the reloaded checkpoint) stay within the 24 GiB machine. Random weights
prove the plumbing at full width, not quality: no perplexity is reported.

For each run: parameters before/after, experts per layer, the wall time and peak RSS, and the
reloaded checkpoint's logits against the in-memory pruned model (plain ``from_pretrained``).

Command: ``python benchmarks/moe.py`` (each run in its own process; writes ``benchmarks/results/moe.json``
and ``moe.md``).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, RESULTS, SHARED, SHARED_MODELS, load_results, markdown_table, store_results  # noqa: E402

OUT = REPO / "benchmarks" / "out" / "moe"
JSON = RESULTS / "moe.json"
MD = RESULTS / "moe.md"
SHAPE = dict(hidden_size=2048, num_attention_heads=32, num_key_value_heads=4, head_dim=128, moe_intermediate_size=768,
             intermediate_size=6144, num_experts=128, num_experts_per_tok=8, num_hidden_layers=2, norm_topk_prob=True,
             max_position_embeddings=4096, tie_word_embeddings=False)
CALIBRATION = {"corpus": "c4", "nsamples": 32, "seqlen": 512}
RUNS = {"expert-prune 25%": ("expert-prune", {"remove_fraction": 0.25, "criterion": "reap"}),
        "expert-prune 50%": ("expert-prune", {"remove_fraction": 0.5, "criterion": "reap"}),
        "wanda 50%": ("wanda", {"sparsity": 0.5}),
        # width beside the experts: a quarter of each layer's KV groups (with their query heads), Taylor importance
        "llm-pruner heads 25%": ("llm-pruner", {"ratio": 0.25, "layer_range": "0:2"})}


def _tokenizer():
    from transformers import AutoTokenizer

    from prunekit.models.loading import _find_gguf, convert_gguf

    model_dir = SHARED_MODELS["smollm2-135m"]
    return AutoTokenizer.from_pretrained(convert_gguf(model_dir, _find_gguf(model_dir)))


def build_dense(tokenizer) -> Path:
    """The random Qwen3-MoE checkpoint at the shapes above, saved once."""
    from transformers import AutoModelForCausalLM, Qwen3MoeConfig

    path = OUT / "dense"
    if (path / "config.json").exists():
        return path
    torch.manual_seed(0)
    config = Qwen3MoeConfig(vocab_size=len(tokenizer), **SHAPE)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def measure(name: str, dense: Path, ids: torch.Tensor) -> dict:
    """One run: load the dense checkpoint, prune, save, reload with plain transformers, compare."""
    from transformers import AutoModelForCausalLM

    import prunekit
    from prunekit.recipe import CalibrationSettings

    method, options = RUNS[name]
    lm = prunekit.load(dense)
    before = _params(lm.model)
    started = time.perf_counter()
    record = prunekit.prune(lm, method, calibration=CalibrationSettings(**CALIBRATION), data_root=SHARED / "data",
                            progress=False, **options)
    seconds = time.perf_counter() - started
    expected = _logits(lm.model, ids)
    out = OUT / name.replace(" ", "-").replace("%", "")
    shutil.rmtree(out, ignore_errors=True)
    prunekit.save(lm, out, record=prunekit.build_record(lm, [record]), report=False)
    after = _params(lm.model)
    del lm
    plain = AutoModelForCausalLM.from_pretrained(out)
    difference = (_logits(plain, ids) - expected).abs().max().item()
    row = {"method": method, "options": options, "params_before": before, "params_after": after,
           "params_saved": _params(plain), "prune_s": round(seconds, 1), "reload_max_abs_diff": difference,
           "experts_after": plain.config.num_experts, "top_k": plain.config.num_experts_per_tok,
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    if method == "expert-prune":
        row["experts_before"] = record["experts"]["experts_before"]
    elif method == "llm-pruner":
        width = record["width"]
        row.update(heads_before=SHAPE["num_attention_heads"], heads_after=plain.config.num_attention_heads,
                   kv_heads_after=plain.config.num_key_value_heads, config=width["config"], units=width["units"])
    else:
        modules = [(n, m) for layer in record["layers"] for n, m in layer["modules"].items()]
        experts = [m for n, m in modules if ".experts." in n]
        row.update(expert_matrices=len(experts), expert_sparsity_exact=all(m["sparsity"] == 0.5 for m in experts),
                   overall_sparsity=record["sparsity"]["overall"],
                   experts_without_tokens=sum(1 for m in experts if "fallback" in m))
    del plain
    return row


def write_markdown(results: dict) -> None:
    rows = []
    for name, r in results["runs"].items():
        experts = f"{r.get('experts_before', r['experts_after'])} → {r['experts_after']}"
        if "expert_matrices" in r:
            detail = (f"{r['expert_matrices']} expert matrices at exactly 50%: {'yes' if r['expert_sparsity_exact'] else 'NO'}; "
                      f"{r['experts_without_tokens']} with no routed token (magnitude fallback)")
        elif "heads_after" in r:
            detail = (f"heads {r['heads_before']} → {r['heads_after']} per layer ({r['kv_heads_after']} KV), "
                      f"units pruned: {', '.join(r['units'])}; {r['config']} config fields; experts untouched")
        else:
            detail = f"top-k {r['top_k']}"
        rows.append([name, f"{r['params_before'] / 1e9:.3f} B", f"{r['params_after'] / 1e9:.3f} B",
                     f"{1 - r['params_after'] / r['params_before']:.1%}", experts, f"{r['prune_s']:.0f}",
                     f"{r['peak_rss_mb']}", f"{r['reload_max_abs_diff']:.1e}", detail])
    shape = results["shape"]
    text = (
        "# Mixture-of-experts: expert pruning, Wanda and head pruning on a Qwen3-30B-A3B-shaped model\n\n"
        f"transformers `Qwen3MoeConfig` with Qwen3-30B-A3B's layer shapes (hidden {shape['hidden_size']}, "
        f"{shape['num_attention_heads']}/{shape['num_key_value_heads']} heads of {shape['head_dim']}, "
        f"{shape['num_experts']} experts of width {shape['moe_intermediate_size']}, top-{shape['num_experts_per_tok']}), "
        f"{shape['num_hidden_layers']} of its 48 layers, the shared tokenizer's vocabulary, float32, **random weights** "
        "(seed 0; no MoE checkpoint is reachable here) — correctness and cost at full width, not quality. "
        f"Calibration {CALIBRATION['corpus']} {CALIBRATION['nsamples']} × {CALIBRATION['seqlen']} tokens; 2 CPU cores. "
        "Each pruned model is saved, reloaded with plain `AutoModelForCausalLM.from_pretrained` and its logits "
        "compared with the in-memory model's on 64 tokens. Each run is its own process; peak RSS is its high-water mark.\n\n"
        "Command: `python benchmarks/moe.py` (writes this file from `moe.json`).\n\n"
        + markdown_table(["run", "params before", "params after", "removed", "experts per layer", "prune s",
                          "peak RSS MB", "reload: largest logit difference", "check"], rows)
        + "\nExpert pruning shrinks the router rows, every expert tensor and `num_experts` (top-k stays "
          f"{shape['num_experts_per_tok']}, below the experts left); REAP scores each expert by the mean over its "
          "routed tokens of router weight × ‖expert output‖. Wanda prunes each expert's matrices with the "
          "statistics of the tokens routed to that expert only; the router is not pruned. Zeros in a dense "
          "checkpoint save nothing at serving time (no 2:4 or unstructured kernels in vLLM in 2026); removed "
          "experts do.\n")
    MD.write_text(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="*", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--markdown-only", action="store_true")
    args = parser.parse_args(argv)
    results = load_results(JSON) or {"runs": {}}
    results["shape"] = SHAPE
    if not args.markdown_only:
        tokenizer = _tokenizer()
        dense = build_dense(tokenizer)
        ids = torch.tensor([tokenizer("The experts of a mixture-of-experts layer are chosen per token by a router. " * 4)
                            ["input_ids"][:64]])
        if len(args.runs) > 1:  # one process per run, so each peak RSS is that run's own
            for name in args.runs:
                subprocess.run([sys.executable, __file__, "--runs", name], check=True)
            results = load_results(JSON)
            write_markdown(results)
            return
        name = args.runs[0]  # (each child writes moe.json and moe.md after its run)
        print(f"{name} ...", flush=True)
        results["runs"][name] = measure(name, dense, ids)
        print(results["runs"][name], flush=True)
        store_results(JSON, results)
    write_markdown(results)


if __name__ == "__main__":
    main()
