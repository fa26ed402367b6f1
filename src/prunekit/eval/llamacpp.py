"""Measuring a GGUF model where it runs: llama.cpp (through ``llama-cpp-python``).

- :func:`perplexity` feeds prunekit's own evaluation windows (token ids from the source
  checkpoint's tokenizer, no BOS added, exactly as :mod:`prunekit.eval.perplexity` sees them) to
  llama.cpp and scores positions 1..seqlen-1 from llama.cpp's logits, so the two perplexities
  differ only by what the GGUF and llama.cpp's kernels change.
- :func:`speed` times load, prompt processing and generation of several GGUF files *in turns*
  (one repeat of each, then the next repeat), so drift of the machine's speed hits all alike;
  medians are reported with the thread count.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data.windows import TokenWindows
from ..export.llamacpp import runtime_version


# llama.cpp repacks quantized weights into CPU-specific layouts ("extra buffer types"). In the
# llama-cpp-python 0.3.36 build measured here that path segfaults on every quantized model (q8_0,
# q4_k_m, the shared Q4_1) on this AVX-512/AMX CPU, while f16 runs; so it is off unless asked for.
# Figures say which way they were measured.
DEFAULT_REPACK = False


F32 = 0  # ggml_type GGML_TYPE_F32, for the KV cache types


@contextlib.contextmanager
def _model_params(repack: bool):
    """Let ``Llama`` build its model parameters with ``use_extra_bufts = repack`` (it exposes no
    argument for it): its defaults are read from the bindings module at construction."""
    import llama_cpp.llama_cpp as bindings

    original = bindings.llama_model_default_params

    def params():
        value = original()
        value.use_extra_bufts = repack
        return value

    bindings.llama_model_default_params = params
    try:
        yield
    finally:
        bindings.llama_model_default_params = original


def _llama(path: str | os.PathLike, *, n_ctx: int, threads: int, logits_all: bool, repack: bool = DEFAULT_REPACK,
           f32_cache: bool = False):
    runtime_version()
    import llama_cpp

    if not Path(path).is_file():
        from ..errors import ModelLoadError

        raise ModelLoadError(f"GGUF file not found: {path}")
    with _model_params(repack):
        return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=min(n_ctx, 2048),
                               n_ubatch=min(n_ctx, 512), n_threads=threads, n_threads_batch=threads,
                               logits_all=logits_all, verbose=False,
                               **({"type_k": F32, "type_v": F32} if f32_cache else {}))


def open_gguf(path: str | os.PathLike, *, n_ctx: int, threads: int | None = None, logits_all: bool = True,
              repack: bool = DEFAULT_REPACK, f32_cache: bool = False):
    """A ``llama_cpp.Llama`` over ``path`` as prunekit measures it (see ``DEFAULT_REPACK``);
    ``f32_cache`` keeps keys and values in f32 (llama.cpp's default cache is f16, which alone moves
    logits by ~1e-3 of their scale), for exactness checks of an f32 export."""
    return _llama(path, n_ctx=n_ctx, threads=threads or default_threads(), logits_all=logits_all, repack=repack,
                  f32_cache=f32_cache)


def default_threads() -> int:
    return os.cpu_count() or 1


def sequence_logits(path: str | os.PathLike, ids: torch.Tensor, *, threads: int | None = None,
                    f32_cache: bool = False) -> torch.Tensor:
    """llama.cpp's float32 logits for every position of one token sequence (``ids``: ``[1, n]``),
    to compare an exported file with the checkpoint it came from."""
    model = open_gguf(path, n_ctx=ids.shape[1], threads=threads, f32_cache=f32_cache)
    try:
        model.eval(ids[0].tolist())
        return torch.from_numpy(model.scores[: ids.shape[1]].copy()).float()
    finally:
        model.close()


def perplexity(path: str | os.PathLike, windows: TokenWindows, *, threads: int | None = None,
               progress: bool = True, desc: str = "llama.cpp ppl") -> dict:
    """Perplexity of the GGUF at ``path`` on ``windows``, computed from llama.cpp's logits."""
    ids = windows.ids
    count, seqlen = ids.shape
    threads = threads or default_threads()
    model = _llama(path, n_ctx=seqlen, threads=threads, logits_all=True)
    total_nll, predicted = 0.0, 0
    started = time.perf_counter()
    try:
        bar = tqdm(range(count), desc=desc, unit="window", disable=not progress, leave=False)
        for row in bar:
            tokens = ids[row].tolist()
            model.reset()
            model.eval(tokens)
            logits = torch.from_numpy(model.scores[: seqlen - 1]).float()
            labels = ids[row, 1:]
            total_nll += float(F.cross_entropy(logits, labels, reduction="sum"))
            predicted += labels.numel()
            bar.set_postfix(ppl=f"{math.exp(total_nll / predicted):.3f}")
    finally:
        with contextlib.suppress(Exception):
            model.close()
    return {"ppl": math.exp(total_nll / predicted), "nll_sum": total_nll, "predicted_tokens": predicted,
            "windows": count, "seqlen": seqlen, "threads": threads, "seconds": round(time.perf_counter() - started, 3)}


def _time_one(path: str, prompt: list[int], new_tokens: int, threads: int) -> dict:
    import numpy as np

    began = time.perf_counter()
    model = _llama(path, n_ctx=len(prompt) + new_tokens + 8, threads=threads, logits_all=False)
    loaded = time.perf_counter()
    try:
        model.eval(prompt)
        prompted = time.perf_counter()
        token = int(np.argmax(model.scores[model.n_tokens - 1]))
        for _ in range(new_tokens):
            model.eval([token])
            token = int(np.argmax(model.scores[model.n_tokens - 1]))
        generated = time.perf_counter()
    finally:
        with contextlib.suppress(Exception):
            model.close()
    return {"load_s": loaded - began, "prompt_tok_s": len(prompt) / (prompted - loaded),
            "gen_tok_s": new_tokens / (generated - prompted)}


def speed(paths: dict[str, str | os.PathLike], *, prompt_len: int = 128, new_tokens: int = 64, repeats: int = 5,
          threads: int | None = None, seed: int = 0, progress: bool = True) -> dict[str, dict]:
    """Per label: file MB and median load seconds, prompt tokens/s and generation tokens/s over
    ``repeats`` timed runs (after one untimed warm-up each), the files timed in turns."""
    threads = threads or default_threads()
    generator = torch.Generator().manual_seed(seed)
    prompt = torch.randint(100, 1000, (prompt_len,), generator=generator).tolist()  # ids every vocabulary has
    runs: dict[str, list[dict]] = {label: [] for label in paths}
    for label, path in paths.items():  # warm-up: page cache and allocator, not timed
        _time_one(str(path), prompt[:16], 4, threads)
    bar = tqdm(total=repeats * len(paths), desc="llama.cpp speed", unit="run", disable=not progress, leave=False)
    for _ in range(repeats):
        for label, path in paths.items():
            runs[label].append(_time_one(str(path), prompt, new_tokens, threads))
            bar.update(1)
    bar.close()
    out = {}
    for label, path in paths.items():
        medians = {key: statistics.median(run[key] for run in runs[label]) for key in runs[label][0]}
        out[label] = {"file": str(path), "file_mb": round(Path(path).stat().st_size / 2**20, 2),
                      **{key: round(value, 4) for key, value in medians.items()},
                      "threads": threads, "repeats": repeats, "prompt_len": prompt_len, "new_tokens": new_tokens}
    return out


def _tokenizer(gguf_path: Path, source: str | os.PathLike | None):
    """The tokenizer whose ids the windows hold: the source checkpoint's, else the GGUF's own."""
    from transformers import AutoTokenizer

    if source is not None:
        return AutoTokenizer.from_pretrained(str(source))
    return AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)


def bench(model: str | os.PathLike, *, baseline: str | os.PathLike | None = None,
          source: str | os.PathLike | None = None, baseline_source: str | os.PathLike | None = None,
          datasets: tuple[str, ...] | list[str] = (), seqlen: int = 2048, max_windows: int | None = None,
          data_root: str | os.PathLike | None = None, prompt_len: int = 128, new_tokens: int = 64,
          repeats: int = 5, threads: int | None = None, progress: bool = True) -> dict:
    """``prunekit bench --engine llama.cpp``: speed of ``model`` (and ``baseline``) in turns, and
    perplexity from llama.cpp's logits on prunekit's windows beside prunekit's own perplexity of
    the HF checkpoint each GGUF came from (``source`` / ``baseline_source``)."""
    from ..data import resolve_data_root
    from ..data.windows import evaluation_windows

    threads = threads or default_threads()
    files = {"model": Path(model)} | ({"baseline": Path(baseline)} if baseline else {})
    for path in files.values():
        if not path.is_file() or path.suffix != ".gguf":
            from ..errors import ModelLoadError

            raise ModelLoadError(f"--engine llama.cpp measures GGUF files: {path} is not one")
    report: dict = {"engine": "llama.cpp", "llama_cpp_python": runtime_version(), "threads": threads}
    report["speed"] = speed(files, prompt_len=prompt_len, new_tokens=new_tokens, repeats=repeats, threads=threads,
                            progress=progress)
    if baseline:
        m, b = report["speed"]["model"], report["speed"]["baseline"]
        report["ratios"] = {"file_mb": round(m["file_mb"] / b["file_mb"], 4),
                            "prompt_speedup": round(m["prompt_tok_s"] / b["prompt_tok_s"], 4),
                            "gen_speedup": round(m["gen_tok_s"] / b["gen_tok_s"], 4)}
    if datasets:
        root = resolve_data_root(data_root)
        tokenizer = _tokenizer(files["model"], source)
        sources = {"model": source, "baseline": baseline_source}
        report["perplexity"] = {}
        for name in datasets:
            windows = evaluation_windows(tokenizer, name, seqlen=seqlen, data_root=root, max_windows=max_windows)
            entry: dict = {"windows": windows.ids.shape[0], "seqlen": seqlen, "provenance": windows.provenance}
            for label, path in files.items():
                entry[f"{label}_llamacpp"] = perplexity(path, windows, threads=threads, progress=progress,
                                                        desc=f"llama.cpp ppl {name} ({label})")["ppl"]
                if sources[label] is not None:
                    entry[f"{label}_prunekit"] = _hf_perplexity(sources[label], windows, progress)
            report["perplexity"][name] = entry
    return report


def _hf_perplexity(checkpoint: str | os.PathLike, windows: TokenWindows, progress: bool) -> float:
    from ..models.loading import load_model
    from .perplexity import perplexity as torch_perplexity

    loaded = load_model(str(checkpoint), dtype="float32", device="cpu", require_adapter=False)
    try:
        return torch_perplexity(loaded.model, windows, progress=progress, desc="prunekit ppl")["ppl"]
    finally:
        del loaded
