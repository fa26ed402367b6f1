"""Pruned SmolLM2-135M where people run it: GGUF files in llama.cpp, measured.

Rows: dense, ShortGPT −8 layers, LLM-Pruner 20% and SparseGPT 2:4 (the recovery benchmark's
states, same options), SPP 30% (non-uniform widths: llama.cpp's 'deci' arrays), and LLM-Pruner 20%
with its MLP widths rounded to 256 columns (what k-quant blocks need); each exported
with ``prunekit export`` to f16, q8_0 and q4_k_m. Columns: file MB; prompt and generation
tokens/s in llama.cpp (all states of one type timed in turns, medians of ``--repeats``, threads
stated); speed-up against dense at the same type; perplexity from llama.cpp's logits on prunekit's
WikiText-2 windows (the first 4 × 2048), beside prunekit's perplexity of the HF checkpoint on the same
windows.

Phases (``--phases``): ``prune`` (HF checkpoints), ``export``, ``ppl``, ``speed``; each skips what
its results file already holds, so an interrupted run continues. Writes
``benchmarks/results/llamacpp.md`` and ``llamacpp.json``.

Command: ``python benchmarks/llamacpp.py`` (needs ``pip install -e '.[gguf]'``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, RESULTS, SHARED_MODELS, load_results, markdown_table, prune_and_save, slug, store_results  # noqa: E402

from recovery import STATES as RECOVERY_STATES, model_dir as recovery_model_dir  # noqa: E402

JSON = RESULTS / "llamacpp.json"
MD = RESULTS / "llamacpp.md"
WORK = REPO / "benchmarks" / "out" / "llamacpp"
TYPES = ("f16", "q8_0", "q4_k_m")
STATES = {
    "dense": None,
    **{state: RECOVERY_STATES[state] for state in ("shortgpt -8 layers", "llm-pruner 20%")},
    "spp 30%": ("spp", {"ratio": 0.3, "calibration": ("c4", 128, 512)}),
    "sparsegpt 2:4": RECOVERY_STATES["sparsegpt 2:4"],
    # k-quants pack 256 input columns per block: widths they do not divide fall back to larger types
    "llm-pruner 20%, round-to 256": ("llm-pruner", {"param_ratio": 0.2, "importance": "element1", "round_to": 256}),
}
PHASES = ("prune", "export", "ppl", "speed", "readback", "imatrix")
# importance matrix from prunekit's calibration windows against none, at the same type
IMATRIX_STATES, IMATRIX_TYPES = ("dense", "shortgpt -8 layers"), ("q4_k_m", "q3_k_m")
READBACK_IDS = 64  # probe tokens for the transformers read-back


def checkpoint(state: str) -> Path:
    if state in RECOVERY_STATES:  # the recovery benchmark's pruned checkpoints, same options: shared
        return recovery_model_dir(state, "none")
    if state == "dense":
        from prunekit.models.loading import _find_gguf, convert_gguf

        model = SHARED_MODELS["smollm2-135m"]
        return convert_gguf(model, _find_gguf(model))  # the shared GGUF as a float HF checkpoint
    return WORK / slug(state)


def gguf_file(state: str, outtype: str, imatrix: bool = False) -> Path:
    return WORK / "gguf" / f"{slug(state)}-{outtype}{'-imatrix' if imatrix else ''}.gguf"


def prune_state(state: str) -> dict:
    method, options = STATES[state]
    lm, _, seconds = prune_and_save(method, options, checkpoint(state))
    return {"prune_seconds": round(seconds, 1)}


def parameter_counts(state: str) -> dict:
    """All parameters, and the weights multiplied per generated token (every decoder linear plus
    the LM head: the work a depth or width cut removes)."""
    import prunekit

    lm = prunekit.load(checkpoint(state))
    decoder = sum(view.weight.numel() for index in range(lm.adapter.num_layers()) for view in lm.adapter.linears(index))
    return {"params": sum(p.numel() for p in lm.model.parameters()),
            "matmul_params": decoder + lm.model.get_output_embeddings().weight.numel()}


def removed_block_share(state: str, outtype: str = "q4_k_m") -> float:
    """Bytes of the blocks a depth cut removed, as a share of the dense GGUF file at ``outtype``."""
    import json

    from gguf import GGUFReader

    record = json.loads((checkpoint(state) / "prunekit.json").read_text())
    removed = set(record["steps"][0]["depth"]["remove"])
    dense = GGUFReader(gguf_file("dense", outtype))
    block_bytes = sum(int(t.n_bytes) for t in dense.tensors
                      if t.name.startswith("blk.") and int(t.name.split(".")[1]) in removed)
    return block_bytes / gguf_file("dense", outtype).stat().st_size


def windows(eval_windows: int):
    from transformers import AutoTokenizer

    from prunekit.data import resolve_data_root
    from prunekit.data.windows import evaluation_windows

    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint("dense")))
    return evaluation_windows(tokenizer, "wikitext2", seqlen=2048, data_root=resolve_data_root(None),
                              max_windows=eval_windows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phases", nargs="*", default=list(PHASES), choices=PHASES)
    parser.add_argument("--states", nargs="*", default=list(STATES), choices=list(STATES))
    parser.add_argument("--types", nargs="*", default=list(TYPES))
    parser.add_argument("--eval-windows", type=int, default=4, help="WikiText-2 windows of 2048 tokens for perplexity "
                        "(4: llama.cpp without repacking takes ~1 min per file on 2 cores)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--redo", action="store_true", help="measure again what the results file holds")
    args = parser.parse_args(argv)
    results = load_results(JSON)
    settings = results.setdefault("settings", {})  # what the stored figures were measured with
    if "ppl" in args.phases:
        settings.update({"eval_windows": args.eval_windows, "seqlen": 2048})
    if "speed" in args.phases:
        settings.update({"threads": args.threads, "repeats": args.repeats, "prompt_len": args.prompt_len,
                         "new_tokens": args.new_tokens})
    states = results.setdefault("states", {})
    for state in args.states:
        entry = states.setdefault(state, {})
        if "prune" in args.phases and state != "dense" and (args.redo or not checkpoint(state).exists()):
            entry.update(prune_state(state))
        if "prune" in args.phases and (args.redo or "matmul_params" not in entry):
            entry.update(parameter_counts(state))
        store_results(JSON, results)
    if "export" in args.phases:
        from prunekit.export import export_gguf

        for state in args.states:
            for outtype in args.types:
                target = gguf_file(state, outtype)
                exports = states[state].setdefault("export", {})
                if args.redo or not target.exists() or outtype not in exports:
                    record = export_gguf(checkpoint(state), target, outtype, overwrite=True, threads=args.threads)
                    exports[outtype] = {k: record[k] for k in ("size_mb", "seconds", "gguf_architecture", "notes")}
                    print(state, outtype, exports[outtype], flush=True)
                    store_results(JSON, results)
    if "ppl" in args.phases:
        from prunekit.eval import llamacpp
        from prunekit.eval.perplexity import perplexity
        from prunekit.models.loading import load_model

        token_windows = windows(args.eval_windows)
        for state in args.states:
            entry = states[state]
            if args.redo or "prunekit_ppl" not in entry:
                loaded = load_model(str(checkpoint(state)), dtype="float32", device="cpu")
                entry["prunekit_ppl"] = perplexity(loaded.model, token_windows, progress=False)["ppl"]
                del loaded
            for outtype in args.types:
                measured = entry.setdefault("llamacpp_ppl", {})
                if args.redo or outtype not in measured:
                    measured[outtype] = llamacpp.perplexity(gguf_file(state, outtype), token_windows,
                                                            threads=args.threads, progress=False)["ppl"]
                    print(state, outtype, "ppl", round(measured[outtype], 3), flush=True)
            store_results(JSON, results)
    if "export" in args.phases and "q4_k_m" in args.types and {"shortgpt -8 layers", "dense"} <= set(args.states):
        states["shortgpt -8 layers"]["removed_block_share_q4_k_m"] = removed_block_share("shortgpt -8 layers")
        store_results(JSON, results)
    if "readback" in args.phases:
        for state in args.states:
            if args.redo or "readback_f16" not in states[state]:
                states[state]["readback_f16"] = readback(state)
                print(state, "readback", states[state]["readback_f16"], flush=True)
                store_results(JSON, results)
    if "imatrix" in args.phases:
        measure_imatrix(states, args, lambda: store_results(JSON, results))
    if "speed" in args.phases:
        from prunekit.eval import llamacpp

        for outtype in args.types:
            measured = llamacpp.speed({state: gguf_file(state, outtype) for state in args.states},
                                      prompt_len=args.prompt_len, new_tokens=args.new_tokens, repeats=args.repeats,
                                      threads=args.threads, progress=False)
            for state, values in measured.items():
                states[state].setdefault("speed", {})[outtype] = values
                print(state, outtype, values, flush=True)
            store_results(JSON, results)
    write_markdown(results)


def readback(state: str) -> dict:
    """transformers' own GGUF loader on the f16 file against the checkpoint it came from (matrices
    rounded to fp16, as the file stores them): largest logit difference relative to the largest
    logit, and next-token argmax agreement; or the loader's one-line refusal."""
    import torch
    from transformers import AutoModelForCausalLM

    from prunekit.zoo import _one_line

    path = gguf_file(state, "f16")
    ids = torch.randint(0, 1000, (1, READBACK_IDS), generator=torch.Generator().manual_seed(0))
    reference = AutoModelForCausalLM.from_pretrained(checkpoint(state), dtype=torch.float32,
                                                     trust_remote_code=True).eval()
    with torch.no_grad():
        for parameter in reference.parameters():
            if parameter.dim() > 1:
                parameter.copy_(parameter.half().float())
        expected = reference(ids).logits[0]
    try:
        again = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
        with torch.no_grad():
            got = again(ids).logits[0]
    except Exception as exc:  # noqa: BLE001 - the loader's refusal is the finding
        return {"error": _one_line(exc)}
    return {"rel_max_diff": float((got - expected).abs().max() / expected.abs().max()),
            "argmax_agree": float((got.argmax(-1) == expected.argmax(-1)).float().mean())}


def measure_imatrix(states: dict, args, save) -> None:
    """Each (state, type) of IMATRIX_STATES × IMATRIX_TYPES with and without an importance matrix
    from prunekit's calibration windows: file MB and llama.cpp perplexity on the same windows."""
    from prunekit.eval import llamacpp
    from prunekit.export import export_gguf

    token_windows = windows(args.eval_windows)
    for state in IMATRIX_STATES:
        for outtype in IMATRIX_TYPES:
            entry = states[state].setdefault("imatrix", {}).setdefault(outtype, {})
            for with_matrix in (False, True):
                key = "with" if with_matrix else "without"
                if not args.redo and key in entry:
                    continue
                target = gguf_file(state, outtype, imatrix=with_matrix)
                if args.redo or not target.exists():
                    export_gguf(checkpoint(state), target, outtype, overwrite=True, threads=args.threads,
                                imatrix="calibration" if with_matrix else None, progress=False)
                entry[key] = {"size_mb": round(target.stat().st_size / 2**20, 2),
                              "ppl": llamacpp.perplexity(target, token_windows, threads=args.threads,
                                                         progress=False)["ppl"]}
                print(state, outtype, key, entry[key], flush=True)
                save()


def _readback_lines(states: dict) -> list[str]:
    lines = []
    for state, entry in states.items():
        check = entry.get("readback_f16")
        if check is None:
            continue
        if "error" in check:
            lines.append(f"- {state}: transformers' GGUF loader refuses the f16 file: {check['error']}")
        else:
            lines.append(f"- {state}: largest logit difference {check['rel_max_diff']:.1e} of the largest logit, "
                         f"argmax agreement {check['argmax_agree']:.0%}")
    return lines


def _imatrix_rows(states: dict) -> list[list[str]]:
    rows = []
    for state, entry in states.items():
        for outtype, pair in entry.get("imatrix", {}).items():
            if "with" in pair and "without" in pair:
                rows.append([state, outtype, f"{pair['without']['ppl']:.2f}", f"{pair['with']['ppl']:.2f}",
                             f"{pair['with']['ppl'] / pair['without']['ppl'] - 1:+.1%}",
                             f"{pair['with']['size_mb']:.1f}"])
    return rows


def write_markdown(results: dict) -> None:
    states, settings = results["states"], results["settings"]
    dense = states.get("dense", {})
    rows = []
    for state, entry in states.items():
        for outtype in TYPES:
            speed = entry.get("speed", {}).get(outtype)
            base = dense.get("speed", {}).get(outtype)
            llama_ppl = entry.get("llamacpp_ppl", {}).get(outtype)
            cells = [state, outtype, f"{entry['export'][outtype]['size_mb']:.1f}" if outtype in entry.get("export", {}) else "–"]
            if speed and base:
                cells += [f"{speed['prompt_tok_s']:.0f}", f"{speed['gen_tok_s']:.1f}",
                          f"{speed['prompt_tok_s'] / base['prompt_tok_s']:.2f}×",
                          f"{speed['gen_tok_s'] / base['gen_tok_s']:.2f}×"]
            else:
                cells += ["–"] * 4
            cells += [f"{llama_ppl:.2f}" if llama_ppl else "–",
                      f"{entry['prunekit_ppl']:.2f}" if "prunekit_ppl" in entry else "–"]
            rows.append(cells)
    checks = _targets(states)
    MD.write_text(
        "# Pruned SmolLM2-135M as GGUF in llama.cpp\n\n"
        f"llama.cpp through llama-cpp-python, {settings['threads']} threads; prompt {settings['prompt_len']} tokens, "
        f"{settings['new_tokens']} generated greedily; medians of {settings['repeats']} runs, all states of one type "
        "timed in turns. Perplexity: WikiText-2 test, the first "
        f"{settings['eval_windows']} windows of {settings['seqlen']} tokens, from llama.cpp's logits and from prunekit "
        "on the HF checkpoint (float32) — the same token ids.\n\n"
        "SparseGPT 2:4 keeps its zeros as zeros: GGUF has no sparse storage and llama.cpp no sparse kernels, so its "
        "file and speed are the dense model's. Structure (layers, widths) is what makes the GGUF smaller and faster.\n\n"
        "Command: `python benchmarks/llamacpp.py`.\n\n"
        + markdown_table(["state", "type", "file MB", "prompt tok/s", "gen tok/s", "prompt vs dense", "gen vs dense",
                          "llama.cpp ppl", "prunekit ppl (HF)"], rows)
        + ("\n## Targets\n\n" + "\n".join(f"- {line}" for line in checks) + "\n" if checks else "")
        + _extra_sections(states, settings))


def _extra_sections(states: dict, settings: dict) -> str:
    text = ""
    readback_lines = _readback_lines(states)
    if readback_lines:
        text += ("\n## Read back by transformers\n\nEach f16 GGUF loaded with `AutoModelForCausalLM.from_pretrained(dir, "
                 f"gguf_file=...)` (transformers' own GGUF reader), logits on {READBACK_IDS} probe tokens against the "
                 "checkpoint it was exported from with its matrices rounded to fp16 (what the file stores):\n\n"
                 + "\n".join(readback_lines) + "\n")
    rows = _imatrix_rows(states)
    if rows:
        text += ("\n## Importance matrix from prunekit's calibration\n\n`prunekit export --imatrix calibration`: the "
                 "mean squared input of every matrix's columns over prunekit's calibration windows (64 × 512 C4 "
                 "tokens), handed to llama.cpp's quantizer; perplexity from llama.cpp on the same "
                 f"{settings.get('eval_windows')} WikiText-2 windows as above.\n\n"
                 + markdown_table(["state", "type", "ppl without", "ppl with imatrix", "change", "file MB"], rows))
    return text


def _targets(states: dict) -> list[str]:
    lines = []
    for state, entry in states.items():
        llama_ppl, ours = entry.get("llamacpp_ppl", {}).get("f16"), entry.get("prunekit_ppl")
        if llama_ppl and ours:
            lines.append(f"{state}: f16 llama.cpp perplexity {llama_ppl:.2f} vs prunekit {ours:.2f} "
                         f"({llama_ppl / ours - 1:+.2%}; target within 1%)")
    dense, short = states.get("dense", {}), states.get("shortgpt -8 layers", {})
    if dense.get("matmul_params") and short.get("matmul_params"):
        removed = 1 - short["matmul_params"] / dense["matmul_params"]
        for outtype in TYPES:
            d, s = dense.get("speed", {}).get(outtype), short.get("speed", {}).get(outtype)
            if d and s:
                fall = 1 - d["gen_tok_s"] / s["gen_tok_s"]
                lines.append(f"ShortGPT −8 at {outtype}: time per generated token falls {fall:.1%}; per-token matmul "
                             f"weights removed {removed:.1%}; target ≥ 0.8 × that = {0.8 * removed:.1%}: "
                             f"{'met' if fall >= 0.8 * removed else 'not met'}")
        d, s = dense.get("export", {}).get("q4_k_m"), short.get("export", {}).get("q4_k_m")
        if d and s:
            shrink = 1 - s["size_mb"] / d["size_mb"]
            params_removed = 1 - short["params"] / dense["params"]
            blocks = short.get("removed_block_share_q4_k_m")
            lines.append(f"ShortGPT −8 q4_k_m file {shrink:.1%} smaller than dense q4_k_m; parameters removed "
                         f"{params_removed:.1%}: {'met' if shrink >= params_removed - 0.005 else 'not met'}"
                         + (f" — the removed blocks held {blocks:.1%} of the dense q4_k_m file's bytes (q4_k_m keeps "
                            "the tied embedding/output matrix, 21% of the parameters, at 6 bits and the blocks at "
                            "~4.5–5, so a parameter share is not a byte share)" if blocks else ""))
    return lines


if __name__ == "__main__":
    main()
