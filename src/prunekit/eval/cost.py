"""What a model costs to keep and to run: parameters, disk, memory, prefill latency, decode speed.

Each model is measured in its own fresh process (``spawn``), so the resident-memory figures are
that model's alone: the peak while loading, then — after the kernel's high-water mark is reset —
the peak while generating. Timings follow one warm-up run and are the median of ``repeats``.

On CPU, unstructured and N:M zeros are stored and multiplied densely: such a model is no faster
and no smaller in memory than its dense parent. :func:`compare` says so instead of hiding it.
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import torch

from ..errors import ArgumentError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")


@dataclass(frozen=True)
class CostSettings:
    prompt_len: int = 128
    batch: int = 4
    new_tokens: int = 32
    repeats: int = 5
    sparse_kernels: bool = False  # CUDA: also time the model with 2:4 weights on semi-structured kernels

    def validate(self) -> "CostSettings":
        for name, value in asdict(self).items():
            if not isinstance(value, bool) and value < 1:
                raise ArgumentError(f"--{name.replace('_', '-')} must be at least 1 (got {value})")
        return self


def weight_files(model_dir: Path) -> list[Path] | None:
    """The weight files of a model directory (or the one file given); None for a hub id."""
    path = Path(model_dir)
    if not path.exists():  # a hub id: nothing local to measure
        return None
    return [path] if path.is_file() else [p for p in path.rglob("*") if p.suffix in WEIGHT_SUFFIXES]


def disk_mb(model_dir: Path) -> float | None:
    """Size of the weight files on disk (a GGUF directory: the GGUF file as stored)."""
    files = weight_files(model_dir)
    return None if files is None else sum(p.stat().st_size for p in files) / 2**20


def storage_format(model_dir: Path) -> str | None:
    """How the weights are stored: ``gguf`` (possibly quantised) or ``safetensors``/``bin``/``pt``."""
    files = weight_files(model_dir)
    if files is None:
        return None
    kinds = sorted({p.suffix.lstrip(".") for p in files})
    return "gguf" if "gguf" in kinds else "+".join(kinds) or None


def weights_mb(model) -> float:
    """The parameters' size in the dtype they were loaded in (tied weights once): what the model
    occupies as loaded, and what a checkpoint of it in that dtype holds."""
    return sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20


def param_counts(model) -> dict:
    total = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    return {"params": total, "params_nonzero": nonzero}


@torch.inference_mode()
def timings(model, settings: CostSettings = CostSettings()) -> dict:
    """Prefill latency of ``batch`` prompts of ``prompt_len`` tokens, and greedy decode tokens/s.

    Decode is timed on its own: after the prefill, ``new_tokens`` single-token steps continue from
    the KV cache (``batch × new_tokens / seconds``). The first run is a warm-up; medians follow.
    """
    from .loglik import cache_keyword

    device = next(model.parameters()).device
    ids = torch.randint(0, model.get_input_embeddings().num_embeddings, (settings.batch, settings.prompt_len),
                        generator=torch.Generator().manual_seed(0)).to(device)
    cache_arg = cache_keyword(model)
    prefill, decode = [], []
    for attempt in range(settings.repeats + 1):
        _sync(device)
        started = time.perf_counter()
        out = model(input_ids=ids, use_cache=True)
        _sync(device)
        t_prefill = time.perf_counter() - started
        cache = getattr(out, "cache", None) or out.past_key_values
        token = out.logits[:, -1:].argmax(-1)
        started = time.perf_counter()
        for _ in range(settings.new_tokens):
            out = model(input_ids=token, use_cache=True, **{cache_arg: cache})
            cache = getattr(out, "cache", None) or out.past_key_values
            token = out.logits[:, -1:].argmax(-1)
        _sync(device)
        t_decode = time.perf_counter() - started
        if attempt:  # the first run is the warm-up
            prefill.append(t_prefill)
            decode.append(settings.new_tokens * settings.batch / t_decode)
    return {"prefill_ms": 1000 * statistics.median(prefill), "decode_tok_s": statistics.median(decode)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _hwm_mb() -> float | None:
    """The kernel's resident high-water mark of this process (Linux), in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure(model: str, load_options: dict, settings: CostSettings, quiet: bool = True) -> dict:
    """Load ``model`` in this process and measure it (run it in a fresh process: see :func:`measure_cost`)."""
    from ..models.loading import load_model  # not prunekit.api, which imports this module

    if quiet:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()

    _reset_hwm()
    before = _hwm_mb()
    started = time.perf_counter()
    loaded = load_model(model, **load_options, require_adapter=False)
    load_seconds = time.perf_counter() - started
    at_load = _hwm_mb()
    reset = _reset_hwm()
    speed = timings(loaded.model, settings)
    during_generation = _hwm_mb() if reset else None
    if settings.sparse_kernels:
        from .sparse_kernels import convert

        kernels = convert(loaded)
        fast = timings(loaded.model, settings) if kernels["converted"] else {}
        speed["sparse_kernels"] = {**kernels, **fast}
        if fast:
            speed["sparse_kernels"]["prefill_speedup"] = speed["prefill_ms"] / fast["prefill_ms"]
    return {"model": model, "layers": loaded.adapter.num_layers(), "dtype": str(next(loaded.model.parameters()).dtype),
            "device": str(next(loaded.model.parameters()).device), **param_counts(loaded.model),
            "disk_mb": disk_mb(Path(model)), "storage": storage_format(Path(model)),
            "weights_mb": weights_mb(loaded.model), "rss_before_load_mb": before, "peak_rss_load_mb": at_load,
            "peak_rss_generate_mb": during_generation, "load_seconds": load_seconds, **speed}


def measure_cost(model: str, load_options: dict | None = None, settings: CostSettings = CostSettings()) -> dict:
    """:func:`measure` in a freshly spawned process, so memory figures belong to this model alone."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(measure, str(model), dict(load_options or {}), settings).result()


RATIO_KEYS = ("params", "params_nonzero", "weights_mb", "disk_mb", "peak_rss_load_mb", "peak_rss_generate_mb",
              "prefill_ms", "decode_tok_s")


def compare(model: dict, baseline: dict) -> dict:
    """Ratios model / baseline, and plain-language notes where a ratio would mislead.

    Sizes are compared like with like: ``weights_mb`` is each model in the dtype it was measured
    in; the on-disk ratio is given only when both are stored the same way (a 4-bit GGUF baseline
    against a float32 checkpoint would make the pruned model look several times bigger).
    """
    ratios = {k: model[k] / baseline[k] for k in RATIO_KEYS if model.get(k) and baseline.get(k)}
    notes = []
    if model.get("storage") != baseline.get("storage") or model.get("dtype") != baseline.get("dtype"):
        ratios.pop("disk_mb", None)
        notes.append(f"the files are stored differently (model: {model.get('storage')}, {model.get('disk_mb') or 0:.1f} MB; "
                     f"baseline: {baseline.get('storage')}, {baseline.get('disk_mb') or 0:.1f} MB), so their disk sizes "
                     f"are not compared; as loaded ({model.get('dtype')} / {baseline.get('dtype')}) the weights take "
                     f"{model['weights_mb']:.1f} MB and {baseline['weights_mb']:.1f} MB")
    zeros = 1 - model["params_nonzero"] / model["params"]
    if zeros > 0.05 and model["params"] == baseline["params"]:
        notes.append(f"{100 * zeros:.0f}% of the parameters are zeros stored densely: dense kernels do the same work, "
                     "so no speed-up or memory saving is expected from them on this device (sparse storage or "
                     "2:4 sparse kernels on a GPU are needed for that)")
    if ratios.get("prefill_ms", 1) > 0.95 and model["params"] < 0.95 * baseline["params"]:
        notes.append("fewer parameters but no prefill speed-up at this prompt size: the run may be dominated by "
                     "fixed costs (embedding/LM head, Python overhead); try a larger --batch or --prompt-len")
    return {"ratios": ratios, "notes": notes}
