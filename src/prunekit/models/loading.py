"""Loading a causal LM from a local Hugging Face directory, a GGUF file or (with internet) a hub id.

GGUF checkpoints are dequantised by transformers on every load, which takes tens of seconds;
prunekit converts each GGUF file once into a float Hugging Face directory under its cache
(``$PRUNEKIT_CACHE`` or ``~/.cache/prunekit``) and loads that afterwards.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

import torch
from torch import nn

from ..errors import ModelLoadError, UnsupportedArchitectureError
from ..io.shapes import REMOTE_FILE, needs_remote_code, remote_code_text
from ..surgery.lowrank import adopt_factored
from .adapters import Adapter, adapter_class_for, fallback_adapter_class, has_family_adapter, unprunable_reason
from .adapters.experts import expert_count

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    """A model with everything prunekit needs alongside it."""

    model: nn.Module
    tokenizer: Any
    adapter: Adapter
    source: dict[str, Any] = field(default_factory=dict)
    # files a step wants saved next to the model (name -> writer into the output directory), e.g. SPP's path.json
    artifacts: dict[str, Callable[[Path], Any]] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def cache_root() -> Path:
    return Path(os.environ.get("PRUNEKIT_CACHE") or Path.home() / ".cache" / "prunekit")


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """``auto`` is float32 on CPU (bf16/fp16 matmuls are slow or inexact there) and bf16 on GPU."""
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype '{dtype}': choose auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device '{device}' requested but CUDA is not available on this machine")
    return device


def _own_remote_code(load_from, config) -> bool:
    """True when ``load_from`` holds exactly the ``modeling_prunekit.py`` prunekit writes for it."""
    if not needs_remote_code(config) or not isinstance(load_from, Path):
        return False
    target = (getattr(config, "auto_map", None) or {}).get("AutoModelForCausalLM", "")
    file = load_from / REMOTE_FILE
    return file.is_file() and file.read_text() == remote_code_text(target.rpartition(".")[2].removeprefix("Prunekit"),
                                                                  config.model_type)


def _looks_like_local_path(name: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else is meant as a path on this machine."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or name.endswith(".gguf")


def _hub_unreachable_reason() -> str | None:
    """Why the Hugging Face Hub cannot be reached, decided at once (offline mode or no DNS)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return "HF_HUB_OFFLINE is set"
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError as exc:
        return f"cannot resolve {host} ({exc.strerror or exc})"
    return None


def _gguf_cache_dir(gguf_path: Path) -> Path:
    import transformers

    stat = gguf_path.stat()
    key = f"{gguf_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{transformers.__version__}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_root() / "gguf" / f"{gguf_path.stem}-{digest}"


def convert_gguf(model_dir: Path, gguf_file: str) -> Path:
    """Dequantise ``model_dir/gguf_file`` once into a cached float HF directory; return that directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = model_dir / gguf_file
    if not gguf_path.is_file():
        raise ModelLoadError(f"GGUF file not found: {gguf_path}")
    target = _gguf_cache_dir(gguf_path)
    if (target / "config.json").is_file():
        return target
    log.info("converting %s to a float checkpoint in %s (once)", gguf_path, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        try:
            model = AutoModelForCausalLM.from_pretrained(str(model_dir), gguf_file=gguf_file, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(str(model_dir), gguf_file=gguf_file)
        except ImportError as exc:
            raise ModelLoadError(f"reading GGUF needs the 'gguf' package ({exc})") from exc
        except Exception as exc:  # noqa: BLE001 - transformers raises many kinds for a bad file
            raise ModelLoadError(f"cannot read GGUF file {gguf_path}: {exc}") from exc
        # The weights are already dequantised floats; only the quantizer marker blocks saving them.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "config.json").is_file():  # another process may have won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _find_gguf(model_dir: Path) -> str | None:
    if (model_dir / "config.json").is_file():
        return None
    ggufs = sorted(p.name for p in model_dir.glob("*.gguf"))
    if len(ggufs) == 1:
        return ggufs[0]
    if len(ggufs) > 1:
        raise ModelLoadError(f"{model_dir} holds several GGUF files ({', '.join(ggufs)}); choose one with --gguf-file")
    raise ModelLoadError(f"{model_dir} is not a Hugging Face model directory (no config.json, no .gguf file)")


def check_config(config: Any, where: str, require_adapter: bool = True) -> type[Adapter]:
    """The adapter class for ``config``: its family's, else the structural fallback found from the
    model itself; for a recurrent or hybrid type the role-less evaluation adapter, which pruning
    (``require_adapter``) refuses here — from the config, before any conversion or weight load —
    unless the model has routed experts (expert pruning needs only the layers, which it finds)."""
    archs = getattr(config, "architectures", None) or []
    if archs and not any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in archs):
        raise UnsupportedArchitectureError(
            f"{where} is not a causal language model (architectures: {', '.join(archs)})"
        )
    model_type = getattr(config, "model_type", "<unknown>")
    if has_family_adapter(model_type):
        return adapter_class_for(model_type)
    reason = not_decoder_only(config)
    if reason:
        raise UnsupportedArchitectureError(f"unsupported architecture '{model_type}': {reason}")
    adapter_cls = fallback_adapter_class(config)
    # a recurrent / hybrid MoE model still loads for pruning: its experts can be removed (the
    # method check refuses every other method)
    if require_adapter and not adapter_cls.prunable and expert_count(config) is None:
        raise UnsupportedArchitectureError(f"cannot prune model type '{model_type}': {unprunable_reason(config)}")
    return adapter_cls


def not_decoder_only(config: Any) -> str | None:
    """Why a config is not a decoder-only causal LM that transformers can build, or None."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

    model_type = getattr(config, "model_type", None)
    if getattr(config, "is_encoder_decoder", False):
        return "an encoder-decoder model; prunekit works on decoder-only causal LMs"
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "transformers has no causal-LM class for this model type"
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:  # BERT-like: a causal head exists, but it is an encoder
        return "an encoder model (its causal-LM head is a decoder add-on); prunekit works on decoder-only causal LMs"
    return None


def peek_config(model: str | os.PathLike, gguf_file: str | None = None) -> Any | None:
    """A local model's config without loading or converting it: ``config.json``, an already
    converted GGUF's cached config, or the GGUF file's metadata (a few seconds, not a conversion).
    None for a hub id or a path that does not exist (loading reports those)."""
    from transformers import AutoConfig

    path = Path(str(model)).expanduser()
    if path.is_file() and path.suffix == ".gguf" and not gguf_file:
        path, gguf_file = path.parent, path.name
    if not path.is_dir():
        return None
    gguf_file = gguf_file or _find_gguf(path)
    try:
        if gguf_file is None:
            return AutoConfig.from_pretrained(str(path))
        cached = _gguf_cache_dir(path / gguf_file)
        if (cached / "config.json").is_file():
            return AutoConfig.from_pretrained(str(cached))
        return AutoConfig.from_pretrained(str(path), gguf_file=gguf_file)
    except ValueError as exc:  # transformers' GGUF reader: "GGUF model with architecture X is not supported yet."
        raise UnsupportedArchitectureError(f"{path / gguf_file if gguf_file else path}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"cannot read the config of {path}: {exc}") from exc


def resolve_source(model: str | os.PathLike, gguf_file: str | None = None) -> tuple[str | Path, dict[str, Any]]:
    """Where the weights are read from (a local HF directory, the converted GGUF, or a hub id) and
    the record of what was asked for."""
    name = str(model)
    path = Path(name).expanduser()
    source: dict[str, Any] = {"model": name, "gguf_file": gguf_file}
    if path.is_dir():
        gguf_file = gguf_file or _find_gguf(path)
        load_from = convert_gguf(path, gguf_file) if gguf_file else path
        source["gguf_file"] = gguf_file
    elif path.is_file() and path.suffix == ".gguf" and not gguf_file:
        gguf_file = path.name
        load_from = convert_gguf(path.parent, gguf_file)
        source["gguf_file"] = gguf_file
    elif path.exists():
        raise ModelLoadError(f"{path} is not a model directory or a .gguf file")
    elif _looks_like_local_path(name) or gguf_file:
        raise ModelLoadError(f"model directory not found: {path}")
    else:
        reason = _hub_unreachable_reason()
        if reason:
            raise ModelLoadError(f"'{name}' is not a local directory, and the Hugging Face Hub is unreachable: {reason}")
        load_from = name  # a hub id: works where the Hugging Face Hub is reachable
    source["resolved"] = str(load_from)
    return load_from, source


def load_model(
    model: str | os.PathLike,
    *,
    gguf_file: str | None = None,
    dtype: str = "auto",
    device: str = "auto",
    num_layers: int | None = None,
    require_adapter: bool = True,
) -> LoadedModel:
    """Load a causal LM and its tokenizer, and pick the adapter for its family.

    With ``require_adapter`` (what pruning needs) a model type without a family adapter is refused
    from its config *before* any GGUF conversion or weight load; without it (evaluation, bench,
    check) any causal LM loads, with the role-less generic adapter where no family adapter exists.
    ``num_layers`` keeps only the first layers (used to measure how memory scales with depth).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    if require_adapter:
        early = peek_config(model, gguf_file)
        if early is not None:
            check_config(early, str(model))
    load_from, source = resolve_source(model, gguf_file)
    name = source["model"]

    try:
        config = AutoConfig.from_pretrained(str(load_from))
    except Exception as exc:  # noqa: BLE001
        if isinstance(load_from, str):
            raise ModelLoadError(
                f"'{name}' is not a local directory and could not be fetched from the Hugging Face Hub: "
                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            ) from exc
        raise ModelLoadError(f"cannot read the config of {load_from}: {exc}") from exc
    adapter_cls = check_config(config, name, require_adapter)
    trusted_code = _own_remote_code(load_from, config)
    if needs_remote_code(config) and not trusted_code:
        raise ModelLoadError(f"{load_from} has pruned shapes (per-layer or factored) but its {REMOTE_FILE} is not the one prunekit "
                             "writes; refusing to run foreign code (load it with transformers and trust_remote_code)")
    if num_layers is not None:
        key = "num_hidden_layers" if hasattr(config, "num_hidden_layers") else "n_layer"
        setattr(config, key, num_layers)

    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(str(load_from), config=config, dtype=torch_dtype,
                                                        trust_remote_code=trusted_code)
        tokenizer = AutoTokenizer.from_pretrained(str(load_from))
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"cannot load model from {load_from}: {exc}") from exc
    hf_model.to(device)
    adopt_factored(hf_model)
    hf_model.eval()
    hf_model.config.use_cache = False
    source.update(
        {
            "family": adapter_cls.family,
            "model_type": config.model_type,
            "dtype": str(torch_dtype).removeprefix("torch."),
            "device": device,
            "num_layers": len(adapter_cls(hf_model).decoder_layers()),
            "load_seconds": round(time.perf_counter() - started, 3),
        }
    )
    return LoadedModel(model=hf_model, tokenizer=tokenizer, adapter=adapter_cls(hf_model), source=source)
