"""Models larger than memory: decoder layers live on disk and are materialised one at a time.

The model is built on the meta device (``accelerate.init_empty_weights``: parameters take no
memory; buffers such as rotary frequencies are real). Everything outside the decoder layers —
embeddings, final norm, LM head — is read from the safetensors shards at once. A decoder layer is
read from the shards just before the layer-wise pass reaches it and, once the pass is done with
it, written to the output shards and returned to the meta device. Peak memory is therefore the
non-layer weights + one layer + the calibration activations, whatever the depth.

The output keeps the source checkpoint's tensor names and dtypes, one shard per decoder layer
plus one for the rest, with a ``model.safetensors.index.json``: plain ``from_pretrained`` reads it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelLoadError
from .loading import LoadedModel, check_config, resolve_source

INDEX_NAME = "model.safetensors.index.json"
COPIED_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt", "chat_template.jinja")


class ShardReader:
    """Tensor name -> the safetensors file holding it, read lazily (one tensor at a time)."""

    def __init__(self, directory: Path):
        index = directory / INDEX_NAME
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            self.files = {name: directory / file for name, file in weight_map.items()}
        elif (directory / "model.safetensors").is_file():
            from safetensors import safe_open

            with safe_open(directory / "model.safetensors", "pt") as handle:
                self.files = {name: directory / "model.safetensors" for name in handle.keys()}
        else:
            raise ModelLoadError(f"{directory}: streaming needs safetensors weights (model.safetensors or {INDEX_NAME})")

    def read(self, names: list[str]) -> dict[str, torch.Tensor]:
        from safetensors import safe_open

        out: dict[str, torch.Tensor] = {}
        by_file: dict[Path, list[str]] = {}
        for name in names:
            by_file.setdefault(self.files[name], []).append(name)
        for file, group in by_file.items():
            with safe_open(file, "pt") as handle:
                for name in group:
                    out[name] = handle.get_tensor(name)
        return out


class ShardWriter:
    """Writes tensors to numbered shards and, at the end, the index ``from_pretrained`` reads."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.weight_map: dict[str, str] = {}
        self.shards: list[str] = []
        self.total_bytes = 0

    def write(self, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        if not tensors:
            return
        name = f"model-{len(self.shards) + 1:05d}.safetensors"
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, self.directory / name,
                  metadata={"format": "pt"})
        self.shards.append(name)
        self.weight_map.update({k: name for k in tensors})
        self.total_bytes += sum(v.numel() * v.element_size() for v in tensors.values())

    def finish(self) -> None:
        # shard names carry no "-of-N" total: the index is what transformers follows
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(self.weight_map.items()))}
        (self.directory / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")


def return_freed_memory_to_the_os() -> None:
    """Pin glibc's mmap threshold (1 MiB) so every freed layer buffer goes back to the OS.

    glibc raises the threshold after a large mmapped block is freed; later blocks of that size
    then come from the heap, where freed layers stay resident and RSS grows with every layer
    streamed (measured: ~27 MB per SmolLM2 layer without this, flat with it). No-op off glibc.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


class StreamedModel:
    """A causal LM whose decoder layers are read from disk on demand and written out when done."""

    def __init__(self, model: str, *, gguf_file: str | None = None):
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        return_freed_memory_to_the_os()
        load_from, source = resolve_source(model, gguf_file)
        if not isinstance(load_from, Path) and not Path(str(load_from)).is_dir():
            raise ModelLoadError(f"streaming needs a local checkpoint; '{model}' is a hub id")
        self.directory = Path(load_from)
        self.reader = ShardReader(self.directory)
        config = AutoConfig.from_pretrained(self.directory)
        adapter_cls = check_config(config, str(model))
        dtype = self.reader.read([next(iter(self.reader.files))])
        self.dtype = next(iter(dtype.values())).dtype if next(iter(dtype.values())).is_floating_point() else torch.float32
        with init_empty_weights():
            hf_model = AutoModelForCausalLM.from_config(config, dtype=self.dtype)
        hf_model.eval()
        hf_model.config.use_cache = False
        adapter = adapter_cls(hf_model)
        self.layers_prefix = _module_path(hf_model, adapter.decoder_layers())
        self.names = checkpoint_names(hf_model, list(self.reader.files))  # file key -> parameter name
        self.layer_keys = {i: [] for i in range(adapter.num_layers())}
        self.rest_keys: list[str] = []
        for key, name in self.names.items():
            index = _layer_index(name, self.layers_prefix)
            (self.layer_keys[index] if index is not None else self.rest_keys).append(key)
        self._materialise(hf_model, self.rest_keys)
        if getattr(config, "tie_word_embeddings", False):
            hf_model.tie_weights()
        missing = [n for n, p in hf_model.named_parameters() if p.is_meta and _layer_index(n, self.layers_prefix) is None]
        if missing:
            raise ModelLoadError(f"{self.directory}: no tensors for {', '.join(missing[:3])} in the checkpoint")
        tokenizer = AutoTokenizer.from_pretrained(self.directory)
        source.update({"family": adapter_cls.family, "model_type": config.model_type,
                       "dtype": str(self.dtype).removeprefix("torch."), "device": "cpu",
                       "num_layers": adapter.num_layers(), "streamed": True})
        self.loaded = LoadedModel(hf_model, tokenizer, adapter, source)
        self.written: set[int] = set()
        self.writer: ShardWriter | None = None

    def _materialise(self, model: nn.Module, keys: list[str]) -> None:
        from accelerate.utils import set_module_tensor_to_device

        for key, tensor in self.reader.read(keys).items():
            set_module_tensor_to_device(model, self.names[key], "cpu", value=tensor)

    def _current(self, keys: list[str]) -> dict[str, torch.Tensor]:
        """The tensors under their checkpoint keys, as the model holds them now."""
        params = saved_tensors(self.loaded.model)
        return {key: params[self.names[key]].data for key in keys}

    def begin_output(self, directory: Path) -> None:
        """Output shards go to ``directory`` (the temporary folder of an atomic save)."""
        self.writer = ShardWriter(directory)

    def before(self, index: int) -> None:
        """Read decoder layer ``index`` from the shards."""
        self._materialise(self.loaded.model, self.layer_keys[index])

    def after(self, index: int) -> None:
        """Write layer ``index`` as it is now to the output, then free its memory."""
        layer = self.loaded.adapter.decoder_layers()[index]
        self.writer.write(self._current(self.layer_keys[index]))
        self.written.add(index)
        layer.to("meta")

    def finish(self, directory: Path) -> None:
        """Copy the layers the pass did not reach, write the rest and the index, config, tokenizer."""
        for index in self.layer_keys:
            if index not in self.written:
                self.before(index)
                self.after(index)
        self.writer.write(self._current(self.rest_keys))
        self.writer.finish()
        for name in COPIED_FILES:
            if (self.directory / name).is_file():
                shutil.copy(self.directory / name, directory / name)


def saved_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor a checkpoint of ``model`` holds: parameters and persistent buffers (Gemma-4's
    per-layer ``layer_scalar`` is a buffer), by name."""
    tensors = dict(model.named_parameters(remove_duplicate=False))
    for module_name, module in model.named_modules(remove_duplicate=False):
        for name, buffer in module.named_buffers(recurse=False):
            if buffer is not None and name not in module._non_persistent_buffers_set:
                tensors[f"{module_name}.{name}" if module_name else name] = buffer
    return tensors


def checkpoint_names(model: nn.Module, keys: list[str]) -> dict[str, str]:
    """Checkpoint tensor key -> the model's parameter name.

    Usually the same; transformers renames some legacy keys when loading (GPT-NeoX's
    ``embed_out`` is ``lm_head``) and may add or strip the base-model prefix. Its own renaming
    rules are applied where this transformers version has them. Keys that would need merging or
    splitting (fused experts) are refused: streaming writes tensors back one to one.
    """
    params = saved_tensors(model)
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming, rename_source_key

        transforms = get_model_conversion_mapping(model)
        renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
        converters = [t for t in transforms if not isinstance(t, WeightRenaming)]
    except ImportError:  # an older transformers: keys are the parameter names
        rename_source_key, renamings, converters = None, [], []
    names = {}
    for key in keys:
        name = key
        if key not in params and rename_source_key is not None:
            name, converter = rename_source_key(key, renamings, converters, base_model_prefix=model.base_model_prefix,
                                                meta_state_dict=params)
            if converter is not None:
                raise ModelLoadError(f"checkpoint tensor {key} is converted (merged or split) on load; streaming needs "
                                     "tensors that map one to one onto the model")
        if name not in params:
            raise ModelLoadError(f"checkpoint tensor {key} matches no parameter or buffer of the model")
        names[key] = name
    return names


def _module_path(model: nn.Module, target: nn.Module) -> str:
    for name, module in model.named_modules():
        if module is target:
            return name
    raise ModelLoadError("cannot locate the decoder layer list in the model")


def _layer_index(name: str, prefix: str) -> int | None:
    if not name.startswith(prefix + "."):
        return None
    return int(name[len(prefix) + 1:].split(".", 1)[0])
