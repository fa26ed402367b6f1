"""Helpers shared by the benchmark scripts: where the shared models are, result files, tables."""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PRUNEKIT_SHARED", REPO.parent / "shared"))
RESULTS = REPO / "benchmarks" / "results"

# Every real model in ../shared/models (the models README lists them).
SHARED_MODELS = {"smollm2-135m": SHARED / "models" / "smollm2-135m-instruct"}


def load_results(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def store_results(path: Path, data: dict) -> None:
    """Rewrite the results file after every measurement so a long run keeps what it finished."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(rows_i) + " |" for rows_i in rows]
    return "\n".join(lines) + "\n"


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
