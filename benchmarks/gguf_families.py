"""Every family llama.cpp converts, pruned by prunekit, exported to GGUF and run in llama.cpp.

Rows: the families the GGUF issue names and the MoE families llama.cpp has (``DEFAULT_TYPES``;
``--all``: every model type the architecture zoo passes whose Hugging Face class llama.cpp's
converter registers, read from the converter itself). For each, a tiny random model
(the zoo's shapes, ``models/tiny.py``) in four states — dense, ShortGPT −1 layer, LLM-Pruner removing
half of every layer's heads (KV groups) and MLP channels (the same width in every layer), and expert pruning 50% for MoE types — is saved, exported with
``prunekit export`` to f32 GGUF, and its logits on 48 probe tokens compared with the in-memory
model's: in llama.cpp (the runtime people use) and in transformers read back from the GGUF by its
own loader (or that loader's refusal). A cell passes when llama.cpp's largest logit difference is
below 1e-3 of the largest logit and every next-token argmax agrees; llama.cpp runs with an f32 KV
cache here (its default f16 cache alone moves logits by about that much).

Tokenizers: the converter writes the model's vocabulary into the GGUF, so each checkpoint carries
one — SmolLM2's BPE tokenizer (the shared model's); where the converter asks for a SentencePiece
``tokenizer.model`` instead (Gemma, Phi-3, …), or does not recognise that BPE tokenizer's
pre-tokenizer (its hash table names released checkpoints; SmolLM2's, re-saved from the GGUF, is not
among them), the cell is retried with a 4,096-piece model trained here on the shared C4 sample,
which the converter pads to the model's vocabulary. Config values llama.cpp hard-codes
for a family are set to what every released checkpoint of it uses (``LLAMACPP_FIXED``), and said.

Random weights: this proves the export and the runtimes agree, not quality.

Command: ``python benchmarks/gguf_families.py`` (needs ``pip install -e '.[gguf]'``; ``--types``
re-runs some types into ``gguf_families.json``).
"""

from __future__ import annotations

import argparse
import gzip
import io
import itertools
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, SHARED, load_results, markdown_table, store_results  # noqa: E402

JSON = RESULTS / "gguf_families.json"
MD = RESULTS / "gguf_families.md"
# the families the GGUF issue names (Llama/SmolLM/Mistral, Qwen2/3, Gemma-2/3, Phi-3), a few more with
# width adapters, and the MoE families llama.cpp has; --all runs every candidate (~1 min per type)
DEFAULT_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "phi", "olmo2",
                 "granite", "stablelm", "starcoder2", "glm4", "falcon", "bloom", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe",
                 "granitemoe", "gpt_oss", "deepseek_v2")
STATES = ("dense", "shortgpt -1", "llm-pruner 50% units, uniform", "expert-prune 50%")
TOLERANCE = 1e-3
# family -> config values llama.cpp's graph assumes instead of reading them (every released
# checkpoint of the family has these): Gemma-2/3 scale queries by head_dim^-1/2 (query_pre_attn_scalar
# = head_dim, 16 here) except at 27B, llama.cpp's qwen3moe always renormalises the top-k router
# weights, its phi2 and olmoe graphs have no grouped-query attention (neither have the released
# Phi-1/1.5/2 and OLMoE checkpoints), and its converter writes Phi-2's and Falcon's MLP width as 4 × hidden.
LLAMACPP_FIXED = {
    "phi": {"num_key_value_heads": 4, "intermediate_size": 256},
    "falcon": {"ffn_hidden_size": 256},
    "olmoe": {"num_key_value_heads": 4},
    "gemma2": {"query_pre_attn_scalar": 16},
    "gemma3_text": {"query_pre_attn_scalar": 16},
    "qwen3_moe": {"norm_topk_prob": True},
}
PROBE = None  # filled lazily: 48 token ids


def _probe():
    import torch

    global PROBE
    if PROBE is None:
        PROBE = torch.randint(0, 1000, (1, 48), generator=torch.Generator().manual_seed(0))
    return PROBE


def bpe_tokenizer():
    from transformers import AutoTokenizer

    from prunekit.models.loading import _find_gguf, convert_gguf

    model_dir = SHARED / "models" / "smollm2-135m-instruct"
    return AutoTokenizer.from_pretrained(convert_gguf(model_dir, _find_gguf(model_dir)))


def sentencepiece_model(cache: Path) -> Path:
    """A 4,096-piece SentencePiece BPE model trained on the shared C4 sample (seconds)."""
    import sentencepiece

    path = cache / "tokenizer.model"
    if not path.is_file():
        with gzip.open(SHARED / "data" / "c4" / "c4_sample.jsonl.gz", "rt") as lines:
            texts = [json.loads(line)["text"] for line in itertools.islice(lines, 3000)]
        buffer = io.BytesIO()
        sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=buffer, vocab_size=4096,
                                                 model_type="bpe", pad_id=0, eos_id=1, bos_id=2, unk_id=3,
                                                 byte_fallback=True, minloglevel=2)
        cache.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buffer.getvalue())
    return path


def candidate_types(converter) -> dict[str, str]:
    """Zoo-passing model type -> its HF causal-LM class, for the classes the converter registers."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    zoo = load_results(RESULTS / "zoo.json").get("rows", {})
    passing = [t for t, row in zoo.items() if row.get("capabilities", {}).get("shortgpt -1", "x") is None]
    registered = converter.text_architectures()
    return {t: MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[t] for t in sorted(passing)
            if MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(t) in registered}


def _logits(model, ids):
    import torch

    with torch.inference_mode():
        return model(input_ids=ids, use_cache=False).logits[0].float()


def _agreement(got, expected) -> dict:
    scale = float(expected.abs().max())
    return {"rel_max_diff": float((got - expected).abs().max()) / scale,
            "argmax_agree": float((got.argmax(-1) == expected.argmax(-1)).float().mean())}


def _passes(check: dict) -> bool:
    return check["rel_max_diff"] < TOLERANCE and check["argmax_agree"] == 1.0


def _prune(lm, state: str, data_root: Path) -> dict | None:
    import prunekit
    from prunekit.zoo import CALIBRATION

    calibration = prunekit.CalibrationSettings(**CALIBRATION)
    if state == "dense":
        return None
    if state == "shortgpt -1":
        return prunekit.prune(lm, "shortgpt", remove_layers=1, calibration=calibration, data_root=data_root,
                              progress=False)
    if state == "expert-prune 50%":
        return prunekit.prune(lm, "expert-prune", remove_fraction=0.5, calibration=calibration, data_root=data_root,
                              progress=False)
    layers = lm.adapter.num_layers()  # a fraction of units: a tiny model's embedding holds most of its parameters
    return prunekit.prune(lm, "llm-pruner", ratio=0.5, layer_range=f"0:{layers}", calibration=calibration,
                          data_root=data_root, progress=False)


def run_cell(model_type: str, state: str, tokenizer, spm: Path | None, work: Path) -> dict:
    """One (type, state): prune, save, export f32, compare logits in llama.cpp and transformers."""
    import torch
    from transformers import AutoModelForCausalLM

    import prunekit
    from prunekit.eval.llamacpp import sequence_logits
    from prunekit.export import export_gguf
    from prunekit.models.adapters.experts import expert_count
    from prunekit.zoo import _one_line, tiny_loaded

    lm = tiny_loaded(model_type, tokenizer, **LLAMACPP_FIXED.get(model_type, {}))
    lm.model.config.use_cache = False
    if state == "expert-prune 50%" and expert_count(lm.model.config) is None:
        return {"result": "n/a (dense model)"}
    cell: dict = {}
    try:
        record = _prune(lm, state, SHARED / "data")
        checkpoint = work / "checkpoint"
        prunekit.save(lm, checkpoint, record=prunekit.build_record(lm, [record] if record else []), overwrite=True,
                      report=False)
        if spm is not None:
            shutil.copy(spm, checkpoint / "tokenizer.model")
        exported = export_gguf(checkpoint, work / "model.gguf", "f32", overwrite=True, progress=False)
        cell["gguf_architecture"] = exported["gguf_architecture"] or _gguf_architecture(work / "model.gguf")
        cell["per_layer"] = "prunekit_shapes" in json.loads((checkpoint / "config.json").read_text())
        expected = _logits(lm.model, _probe())
        cell["llama.cpp"] = _agreement(sequence_logits(work / "model.gguf", _probe(), threads=2, f32_cache=True),
                                       expected)
        try:  # transformers' own GGUF loader; its refusal ("not supported yet") is the finding
            again = AutoModelForCausalLM.from_pretrained(work, gguf_file="model.gguf", dtype=torch.float32).eval()
            cell["transformers"] = _agreement(_logits(again, _probe()), expected)
        except Exception as exc:  # noqa: BLE001
            cell["transformers"] = {"error": _one_line(exc)}
        cell["result"] = "pass" if _passes(cell["llama.cpp"]) else "logits differ"
    except Exception as exc:  # noqa: BLE001 - one line per failed cell
        cell["result"] = _one_line(exc)
        cell["detail"] = str(exc).strip()[:600]
        # the converter wants a SentencePiece model, or does not know this BPE tokenizer's pre-tokenizer
        cell["needs_sentencepiece"] = "tokenizer.model" in str(exc) or "pre-tokenizer was not recognized" in str(exc)
    return cell


def _gguf_architecture(path: Path) -> str:
    from gguf import GGUFReader

    field = GGUFReader(path).fields["general.architecture"]
    return bytes(field.parts[field.data[0]]).decode()


def run(types: list[str] | None, every: bool = False) -> None:
    from transformers.utils import logging as hf_logging

    from prunekit.export.llamacpp import find_converter, runtime_version

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    converter = find_converter()
    candidates = candidate_types(converter)
    results = load_results(JSON)
    results["llama_cpp_python"] = runtime_version()
    rows = results.setdefault("rows", {})
    tokenizer = bpe_tokenizer()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        spm_path = sentencepiece_model(Path(scratch) / "spm")
        for model_type in types or (list(candidates) if every else [t for t in DEFAULT_TYPES if t in candidates]):
            architecture = candidates.get(model_type)
            if architecture is None:
                rows[model_type] = {"architecture": None, "cells": {}}
                continue
            row = {"architecture": architecture, "tokenizer": "bpe", "fixed": LLAMACPP_FIXED.get(model_type, {}),
                   "cells": {}}
            for state in STATES:
                with tempfile.TemporaryDirectory(dir=scratch) as work:
                    cell = run_cell(model_type, state, tokenizer, None, Path(work))
                if cell.get("needs_sentencepiece"):  # the converter reads only a SentencePiece model
                    row["tokenizer"] = "sentencepiece"
                    with tempfile.TemporaryDirectory(dir=scratch) as work:
                        cell = run_cell(model_type, state, tokenizer, spm_path, Path(work))
                row["cells"][state] = cell
            rows[model_type] = row
            store_results(JSON, results)
            print(f"{time.perf_counter() - started:6.0f} s  {model_type}: "
                  + ", ".join(f"{s}={c['result']}" for s, c in row["cells"].items()), flush=True)


def _cell_text(cell: dict) -> str:
    if cell["result"] == "n/a (dense model)":
        return "n/a"
    if "llama.cpp" not in cell:
        detail = cell.get("detail", "")
        if "check_tensor_dims:" in detail:  # llama.cpp's loader names the tensor its graph shapes differently
            return "llama.cpp rejects: " + " ".join(detail.split("check_tensor_dims:", 1)[1].split())
        return cell["result"]
    text = ("✅" if cell["result"] == "pass" else "✗") + f" {cell['llama.cpp']['rel_max_diff']:.0e}"
    readback = cell.get("transformers")
    if readback is not None and "error" in readback:
        text += " / tf: " + ("not supported" if "not supported" in readback["error"] else readback["error"][:60])
    elif readback is not None:
        text += (" / tf ✅ " if _passes(readback) else " / tf ✗ ") + f"{readback['rel_max_diff']:.0e}"
    if cell.get("per_layer"):
        text += f" ({cell['gguf_architecture']} per-layer)"
    return text


def write_markdown(results: dict) -> None:
    rows = {t: r for t, r in sorted(results.get("rows", {}).items()) if r.get("architecture")}
    table = [[t, r["architecture"], r["cells"].get("dense", {}).get("gguf_architecture", "-"), r["tokenizer"]]
             + [_cell_text(r["cells"][s]) for s in STATES] for t, r in rows.items()]
    counted = {s: [t for t, r in rows.items() if r["cells"][s]["result"] == "pass"] for s in STATES}
    moe = [t for t, r in rows.items() if r["cells"]["expert-prune 50%"]["result"] != "n/a (dense model)"]
    fixed = "; ".join(f"{t}: " + ", ".join(f"{k} = {v}" for k, v in values.items())
                      for t, values in LLAMACPP_FIXED.items())
    lines = [
        "# Pruned models of every llama.cpp family, as GGUF", "",
        f"llama-cpp-python {results.get('llama_cpp_python')} (its vendored converter and runtime). The families the "
        "GGUF issue names, those with width adapters, and the MoE families llama.cpp has (`--all`: every model type "
        "the architecture zoo passes whose Hugging Face class llama.cpp's converter registers): a tiny random model "
        "(zoo shapes) dense and pruned, saved, exported with `prunekit export --outtype f32`, and its logits on 48 "
        "probe tokens compared with the in-memory model's (llama.cpp with an f32 KV cache). A cell shows ✅ when "
        "llama.cpp's largest logit "
        f"difference is below {TOLERANCE:g} of the largest logit and every argmax agrees, then that relative "
        "difference; `tf` is the same check after transformers' own GGUF loader reads the file back (where it "
        "knows the architecture). Random weights: the runtimes agree with the checkpoint, nothing about quality.", "",
        "Tokenizers: SmolLM2's BPE; where the converter reads only `tokenizer.model` or does not recognise that BPE "
        "tokenizer's pre-tokenizer, a 4,096-piece SentencePiece model trained on the shared C4 sample (padded by the "
        "converter to the model's vocabulary). Values llama.cpp "
        f"hard-codes instead of reading, set to the released checkpoints' own: {fixed}.", "",
        "Command: `python benchmarks/gguf_families.py` (writes this file from `gguf_families.json`).", "",
        f"Totals: {len(rows)} types. " + "; ".join(
            f"{s}: **{len(counted[s])}**" + (f" of {len(moe)} MoE" if s == "expert-prune 50%" else "")
            for s in STATES) + ".", "",
        markdown_table(["model type", "HF class", "GGUF arch", "tokenizer", *STATES], table),
    ]
    MD.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--types", help="comma-separated model types (default: every candidate)")
    parser.add_argument("--all", action="store_true", help="every candidate type, not only DEFAULT_TYPES")
    parser.add_argument("--table-only", action="store_true", help="rewrite gguf_families.md from the JSON")
    args = parser.parse_args(argv)
    if not args.table_only:
        run([t.strip() for t in args.types.split(",")] if args.types else None, every=args.all)
    write_markdown(load_results(JSON))
    return 0


if __name__ == "__main__":
    sys.exit(main())
