"""Helpers shared by the benchmark scripts: where the shared models are, result files, tables."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PRUNEKIT_SHARED", REPO.parent / "shared"))
RESULTS = REPO / "benchmarks" / "results"

# Every real model in ../shared/models (the models README lists them).
SHARED_MODELS = {"smollm2-135m": SHARED / "models" / "smollm2-135m-instruct"}


def slug(name: str) -> str:
    """A state's name as a file name ("shortgpt -8 layers" -> "shortgpt__8_layers")."""
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


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


def timings(lm) -> dict:
    """Prefill latency of one 256-token prompt and decode tokens/s of 32 new tokens (prunekit's cost
    measurement: one warm-up, median of 9)."""
    from prunekit.eval.cost import CostSettings, timings as measure

    return measure(lm.model, CostSettings(prompt_len=256, batch=1, new_tokens=32, repeats=9))


def checkpoint_mb(lm) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        lm.model.save_pretrained(tmp)
        return sum(p.stat().st_size for p in Path(tmp).glob("*.safetensors")) / 2**20


def copy_model(lm):
    """An independent in-memory copy of a loaded model (prune the copy, keep the dense one)."""
    import copy

    from prunekit.models.adapters import adapter_for
    from prunekit.models.loading import LoadedModel

    model = copy.deepcopy(lm.model)
    return LoadedModel(model, lm.tokenizer, adapter_for(model), dict(lm.source))


def prune_and_save(method: str, options: dict, out: Path):
    """Prune the shared SmolLM2 with ``method`` and save it to ``out`` with its record (a
    ``calibration`` option may be a ``(corpus, nsamples, seqlen)`` tuple); ``(lm, record, seconds)``."""
    import time

    import prunekit
    from prunekit.recipe import CalibrationSettings

    options = dict(options)
    if isinstance(options.get("calibration"), tuple):
        corpus, n, length = options["calibration"]
        options["calibration"] = CalibrationSettings(corpus=corpus, nsamples=n, seqlen=length, seed=0)
    lm = prunekit.load(SHARED_MODELS["smollm2-135m"])
    started = time.perf_counter()
    record = prunekit.prune(lm, method, progress=False, **options)
    seconds = time.perf_counter() - started
    prunekit.save(lm, out, record=prunekit.build_record(lm, [record]), overwrite=True, report=False)
    return lm, record, seconds
