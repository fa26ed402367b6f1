"""Write a (pruned) checkpoint as a GGUF file llama.cpp runs: ``prunekit export --format gguf``.

Order of work, so bad input fails in one line before anything slow: the output type and path, the
checkpoint's config (its architecture must be one llama.cpp's converter registers; per-layer
shapes must be expressible), then the converter and runtime. Only then are weights read.

What each kind of checkpoint becomes:
- a stock checkpoint (dense, masked, depth-pruned, uniformly thinned) goes to the converter as it is;
  masked zeros stay zeros (GGUF has no sparse storage: the file is as large, and no faster);
- per-layer widths (LLM-Pruner's or SPP's non-uniform layers) on a Llama-architecture model are
  written as llama.cpp's ``deci`` architecture with per-layer head/KV-head/MLP-width arrays (see
  :mod:`prunekit.export.convert_driver`); other architectures read one width for all layers in
  llama.cpp and are refused naming the config field;
- SVD ``--factored`` maps are multiplied back into dense weights (llama.cpp has no factored linear).

The converter writes f32/f16/bf16; every other type is llama.cpp's ``llama_model_quantize`` from an
f32 intermediate (exact: no double rounding through f16). The GGUF is written under a temporary
name beside the target and renamed at the end, so a failure leaves no partial ``.gguf``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from ..errors import ArgumentError, ModelLoadError, OutputExistsError, UnsupportedArchitectureError
from ..io.shapes import FACTORED_KEY, SHAPES_KEY
from . import llamacpp
from .convert_driver import LAYERS_KEY
from .llamacpp import CONVERTER_TYPES, NEEDS_IMATRIX, OUTTYPES

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# the converter classes whose GGUF architecture llama.cpp reads per-layer shapes for (via deci)
PER_LAYER_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")


def check_outtype(outtype: str, imatrix: Any = None) -> str:
    name = outtype.lower()
    if name not in OUTTYPES:
        raise ArgumentError(f"unknown --outtype {outtype!r}; choose one of {', '.join(OUTTYPES)}")
    if name in NEEDS_IMATRIX and imatrix is None:
        raise ArgumentError(f"--outtype {name} needs an importance matrix (llama.cpp refuses it without one): "
                            "pass --imatrix")
    return name


def check_gguf_output(out: str | os.PathLike, overwrite: bool) -> Path:
    path = Path(out).expanduser()
    if path.suffix != ".gguf":
        raise ArgumentError(f"--out {path} must name a .gguf file")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"output file {path} exists; pass --overwrite to replace it")
    if path.is_dir():
        raise OutputExistsError(f"output path {path} is a directory")
    return path


def read_checkpoint_config(model_dir: str | os.PathLike) -> tuple[Path, dict]:
    directory = Path(model_dir).expanduser()
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{directory} is not a Hugging Face checkpoint (no config.json)")
    return directory, json.loads(config_file.read_text(encoding="utf-8"))


def plan_export(config: dict, architectures: set[str]) -> dict:
    """What the checkpoint needs to become a GGUF, from its config alone; refusals are one line."""
    names = config.get("architectures") or []
    text = config.get("text_config") or {}
    arch = (text.get("architectures") or names or [None])[0]
    if arch is None:
        raise UnsupportedArchitectureError("the checkpoint's config names no architecture ('architectures')")
    if arch not in architectures:
        raise UnsupportedArchitectureError(f"llama.cpp's converter has no {arch} (model_type "
                                           f"{config.get('model_type')}): it cannot be written as GGUF")
    per_layer = config.get(SHAPES_KEY) is not None
    if per_layer and arch not in PER_LAYER_ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"this {arch} checkpoint has per-layer shapes ('{SHAPES_KEY}' in config.json): llama.cpp's GGUF "
            f"architecture for it reads one head_count / feed_forward_length for all layers, so GGUF cannot "
            f"express it (per-layer arrays are written for {', '.join(PER_LAYER_ARCHITECTURES)} only); prune with "
            "the same width in every layer to export it")
    check_llamacpp_attention_scale(text or config, arch)
    return {"architecture": arch, "per_layer": per_layer, "factored": bool(config.get(FACTORED_KEY)),
            "config_fixes": converter_config_fixes(config, arch)}


def converter_config_fixes(config: dict, arch: str) -> dict:
    """Config values llama.cpp's converter would misread, set to what transformers' model uses.

    Falcon-7B's layout (``multi_query``, not ``new_decoder_architecture``) has one KV head whatever
    ``num_kv_heads`` says, but transformers saves ``num_kv_heads`` = the head count for it and the
    converter splits the fused q/k/v rows by that field, so a re-saved Falcon-7B fails to convert."""
    if arch == "FalconForCausalLM" and config.get("multi_query", True) and not config.get("new_decoder_architecture") \
            and config.get("num_kv_heads", 1) != 1:
        return {"num_kv_heads": 1}
    return {}


def converter_view(source: Path, staging: Path, fixes: dict) -> Path:
    """``source`` as the converter should read it: its files linked, config.json with ``fixes``."""
    staging.mkdir(parents=True)
    for item in source.iterdir():
        if item.name != "config.json":
            (staging / item.name).symlink_to(item.resolve())
    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    (staging / "config.json").write_text(json.dumps({**config, **fixes}, indent=2), encoding="utf-8")
    return staging


# llama.cpp does not read Gemma-2/3's query_pre_attn_scalar: it scales queries by 1/sqrt(hidden / heads) when
# the layer count says 27B (Gemma-2 27B: 46 layers, Gemma-3 27B: 62) and by 1/sqrt(head_dim) otherwise
LLAMACPP_GEMMA_27B_LAYERS = {"Gemma2ForCausalLM": 46, "Gemma3ForCausalLM": 62, "Gemma3ForConditionalGeneration": 62}
GEMMA_DEFAULT_QUERY_SCALAR = 256  # transformers' Gemma2Config / Gemma3TextConfig default


def check_llamacpp_attention_scale(fields: dict, arch: str) -> None:
    """Refuse a Gemma-2/3 checkpoint whose attention scale llama.cpp would get wrong: its graph infers
    the scale from the model size, which it reads off the layer count — so a depth-cut 27B (or one
    whose heads were thinned) would run with another scale than transformers', and different logits."""
    size_layers = LLAMACPP_GEMMA_27B_LAYERS.get(arch)
    if size_layers is None:
        return
    layers, hidden, heads = fields["num_hidden_layers"], fields["hidden_size"], fields["num_attention_heads"]
    head_dim = fields.get("head_dim") or hidden // heads
    wanted = fields.get("query_pre_attn_scalar", GEMMA_DEFAULT_QUERY_SCALAR)
    used = hidden // heads if layers == size_layers else head_dim
    if used != wanted:
        raise UnsupportedArchitectureError(
            f"llama.cpp would scale this {arch}'s queries by 1/sqrt({used}) but transformers by 1/sqrt({wanted}) "
            f"(query_pre_attn_scalar): llama.cpp infers the scale from the layer count ({size_layers} layers = 27B: "
            f"1/sqrt(hidden_size / heads); otherwise 1/sqrt(head_dim)), and this checkpoint has {layers} layers, "
            f"{heads} heads, head_dim {head_dim}; its GGUF would compute other logits, so it is not written")


IMATRIX_FROM_CALIBRATION = "calibration"


def export_gguf(model_dir: str | os.PathLike, out: str | os.PathLike, outtype: str = "f16", *,
                overwrite: bool = False, imatrix: str | os.PathLike | None = None,
                calibration: Any = None, data_root: str | os.PathLike | None = None,
                threads: int | None = None, progress: bool = True) -> dict:
    """Write ``model_dir`` (a Hugging Face checkpoint, pruned or not) to ``out`` as GGUF; return a
    record (type, architecture, size, seconds, what was done to make it expressible).

    ``imatrix``: a ``.npz`` (GGUF tensor name -> mean squared input per column), or
    ``"calibration"`` to compute one from prunekit's calibration windows (``calibration``, a
    :class:`~prunekit.recipe.CalibrationSettings`; default 64 C4 windows of 512 tokens)."""
    outtype = check_outtype(outtype, imatrix)
    target = check_gguf_output(out, overwrite)
    source, config = read_checkpoint_config(model_dir)
    from_calibration = imatrix is not None and str(imatrix) == IMATRIX_FROM_CALIBRATION
    if imatrix is not None and not from_calibration and not Path(imatrix).is_file():
        raise ArgumentError(f"--imatrix {imatrix} does not exist (give a .npz file or 'calibration')")
    windows = _imatrix_windows(source, calibration, data_root) if from_calibration and outtype not in CONVERTER_TYPES \
        else None
    if imatrix is not None and outtype in CONVERTER_TYPES:
        raise ArgumentError(f"--imatrix applies to quantized types, not {outtype}")
    converter = llamacpp.find_converter()
    plan = plan_export(config, converter.text_architectures())
    if outtype not in CONVERTER_TYPES:
        llamacpp.runtime_version()
    started = time.perf_counter()
    notes = []
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{target.stem}.", dir=target.parent) as scratch:
        work = Path(scratch)
        staged = source
        if plan["per_layer"] or plan["factored"]:
            staged, layer_notes = stage_plain_checkpoint(source, work / "checkpoint")
            notes += layer_notes
        if plan["config_fixes"]:
            staged = converter_view(staged, work / "converter_view", plan["config_fixes"])
            notes.append("config values the converter would misread, set to the model's own: "
                         + ", ".join(f"{k} = {v}" for k, v in plan["config_fixes"].items()))
        first = work / ("model.gguf" if outtype in CONVERTER_TYPES else "model-f32.gguf")
        driver = Path(__file__).with_name("convert_driver.py")
        llamacpp.run_converter(converter, staged, first, outtype if outtype in CONVERTER_TYPES else "f32", driver)
        final = first
        if outtype not in CONVERTER_TYPES:
            notes += block_fallback_notes(first, outtype)
            final = work / "model.gguf"
            matrix = Path(imatrix) if imatrix and not from_calibration else None
            if windows is not None:
                matrix = _calibration_imatrix(staged, windows, first, work / "imatrix.npz", progress)
                notes.append(f"importance matrix from {windows.ids.shape[0]} × {windows.ids.shape[1]} "
                             f"{windows.provenance.get('corpus')} calibration tokens")
            llamacpp.quantize(first, final, outtype, threads=threads, imatrix=matrix)
            first.unlink()
        if llamacpp.runtime_available():
            llamacpp.check_loads(final, plan["architecture"])
        else:
            notes.append("not loaded in llama.cpp here (llama-cpp-python is not installed): its graphs fix shapes "
                         "that no config field states, so check that it loads before relying on the file")
        partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
        shutil.move(str(final), partial)
        os.replace(partial, target)
    return {"file": str(target), "outtype": outtype, "architecture": plan["architecture"],
            "gguf_architecture": "deci" if plan["per_layer"] else None, "size_mb": round(target.stat().st_size / 2**20, 2),
            "seconds": round(time.perf_counter() - started, 1), "imatrix": str(imatrix) if imatrix else None,
            "calibration": windows.provenance if windows is not None else None,
            "notes": notes + mask_notes(source)}


def _imatrix_windows(source: Path, calibration: Any, data_root: str | os.PathLike | None):
    """The calibration windows for ``--imatrix calibration``, drawn before any conversion (bad corpus
    or sizes fail first)."""
    from transformers import AutoTokenizer

    from ..data import calibration_windows, resolve_data_root
    from ..recipe import CalibrationSettings

    calibration = calibration or CalibrationSettings(corpus="c4", nsamples=64, seqlen=512)
    calibration.validate()
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    return calibration_windows(tokenizer, calibration.corpus or "c4", nsamples=calibration.nsamples or 64,
                               seqlen=calibration.seqlen or 512, seed=calibration.seed,
                               data_root=resolve_data_root(data_root))


def _calibration_imatrix(checkpoint: Path, windows, gguf_file: Path, out: Path, progress: bool) -> Path:
    from ..models.loading import load_model
    from .imatrix import activation_imatrix, gguf_names, write_imatrix

    loaded = load_model(str(checkpoint), dtype="float32", device="cpu", require_adapter=False)
    values = activation_imatrix(loaded.model, windows.ids, progress=progress)
    del loaded
    return write_imatrix(gguf_names(values, gguf_file), out)


def quant_block(outtype: str) -> int:
    """Input columns per quantization block of ``outtype``'s main type (k-quants and most i-quants:
    256; the legacy types and iq4_nl: 32)."""
    return 32 if outtype.startswith(("q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "iq4_nl")) else 256


def block_fallback_notes(gguf_file: Path, outtype: str) -> list[str]:
    """Matrices whose input width the type's blocks do not divide: llama.cpp writes those at a
    fallback type (e.g. Q4_K -> Q5_0, Q8_0 -> F16), so a thinned model can come out *larger*."""
    from gguf import GGUFReader

    block = quant_block(outtype)
    matrices = [t for t in GGUFReader(gguf_file).tensors if len(t.shape) >= 2]
    odd = sorted({int(t.shape[0]) for t in matrices if int(t.shape[0]) % block})
    if not odd:
        return []
    count = sum(1 for t in matrices if int(t.shape[0]) % block)
    return [f"{count} of {len(matrices)} matrices have input widths that {block}-column {outtype} blocks do not divide "
            f"({', '.join(map(str, odd[:6]))}{', …' if len(odd) > 6 else ''}): llama.cpp stores them at a larger "
            f"fallback type, so the file shrinks less than the parameters did; width-prune with --round-to {block} "
            "for this type"]


def mask_notes(source: Path) -> list[str]:
    """Say that zeros cost the same in GGUF when the checkpoint's record shows mask pruning."""
    record_file = source / "prunekit.json"
    if not record_file.is_file():
        return []
    record = json.loads(record_file.read_text(encoding="utf-8"))
    sparsity = (record.get("sparsity") or {}).get("overall")
    if sparsity:
        return [f"{sparsity:.1%} of the pruned weights are zeros, stored as zeros: GGUF and llama.cpp have no sparse "
                "format or kernels, so the file is no smaller and no faster than the dense one at the same type"]
    return []


def stage_plain_checkpoint(source: Path, staging: Path) -> tuple[Path, list[str]]:
    """A checkpoint the converter can read: factored maps multiplied back, per-layer shapes as
    ``prunekit_gguf_layers`` (heads, KV heads, MLP width per layer), stock config otherwise."""
    from ..models.loading import load_model
    from ..surgery.lowrank import densify_factored

    loaded = load_model(str(source), dtype="float32", device="cpu")
    notes = []
    densified = densify_factored(loaded.model)
    if densified:
        notes.append(f"{densified} SVD-factored maps written back dense (llama.cpp has no factored linear layer): "
                     "the GGUF holds the same function, not the smaller factors")
    config = loaded.model.config
    for key in (SHAPES_KEY, FACTORED_KEY):
        if hasattr(config, key):
            delattr(config, key)
    auto_map = dict(getattr(config, "auto_map", None) or {})
    auto_map.pop("AutoModelForCausalLM", None)
    config.auto_map = auto_map or None
    loaded.model.save_pretrained(staging, safe_serialization=True)
    for item in source.iterdir():  # tokenizer and generation files, as they are
        if item.is_file() and item.suffix not in WEIGHT_SUFFIXES and item.name not in (
                "config.json", "model.safetensors.index.json") and not (staging / item.name).exists():
            shutil.copy2(item, staging / item.name)
    adapter = loaded.adapter
    shapes = [adapter.layer_shape(i) for i in range(adapter.num_layers())]
    written = json.loads((staging / "config.json").read_text(encoding="utf-8"))
    written.pop("auto_map", None)
    source_config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    written["architectures"] = source_config.get("architectures")  # the stock class, not prunekit's rebuild
    if len({tuple(sorted(s.items())) for s in shapes}) > 1:
        written[LAYERS_KEY] = {"heads": [s["heads"] for s in shapes], "kv_heads": [s["kv_heads"] for s in shapes],
                               "ffn": [s["channels"] for s in shapes]}
        written["head_dim"] = adapter.head_dim
        notes.append("per-layer widths written as llama.cpp's 'deci' architecture (the Llama graph with per-layer "
                     "head_count, head_count_kv and feed_forward_length)")
    else:
        shape = shapes[0]
        written.update(adapter.stock_shape_fields(**shape) or {})
    (staging / "config.json").write_text(json.dumps(written, indent=2), encoding="utf-8")
    return staging, notes


def input_gguf(model: str | os.PathLike, gguf_file: str | None = None) -> Path | None:
    """The GGUF file a ``--model`` argument names (a .gguf path, or a directory holding one), else None."""
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir() and not (path / "config.json").is_file():
        from ..models.loading import _find_gguf

        name = gguf_file or _find_gguf(path)
        return path / name if name else None
    return None


def gguf_outtype(path: Path) -> str:
    """The quantization type of a GGUF file (its ``general.file_type``), as an ``--outtype`` name."""
    from gguf import GGUFReader, LlamaFileType

    field = GGUFReader(path).fields.get("general.file_type")
    if field is None:
        raise ArgumentError(f"{path} records no general.file_type: give --outtype explicitly")
    name = LlamaFileType(int(field.contents())).name  # e.g. MOSTLY_Q4_1, ALL_F32
    outtype = name.split("_", 1)[1].lower()
    if outtype not in OUTTYPES:
        raise ArgumentError(f"{path} is {name}, which prunekit cannot write back: give --outtype explicitly")
    return outtype


def plan_round_trip(model: str | os.PathLike, outtype: str, gguf_file: str | None = None) -> dict:
    """Everything ``prune --export-gguf`` can check before pruning: the type (``same``: the input
    GGUF's own), llama.cpp's presence and that its converter knows the model's architecture."""
    source = input_gguf(model, gguf_file)
    if outtype == "same":
        if source is None:
            raise ArgumentError("--outtype same means the input GGUF's type, but --model is not a GGUF; "
                                "give --outtype (e.g. f16, q8_0, q4_k_m)")
        outtype = gguf_outtype(source)
    outtype = check_outtype(outtype)
    converter = llamacpp.find_converter()
    if outtype not in CONVERTER_TYPES:
        llamacpp.runtime_version()
    from ..models.loading import peek_config

    config = peek_config(model, gguf_file)
    if config is not None:
        plan_export({"architectures": getattr(config, "architectures", None) or
                     [_architecture_for(config)], "model_type": config.model_type}, converter.text_architectures())
    return {"outtype": outtype, "source_gguf": str(source) if source else None}


def _architecture_for(config) -> str | None:
    """A GGUF-read config carries no ``architectures``: the causal-LM class of its model type."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.model_type)
