"""An importance matrix for llama.cpp's quantizer, from prunekit's calibration windows.

llama.cpp's quantizer weighs each input column of a matrix by how much signal it carries: the
mean over calibration tokens of that column's squared input activation — what llama.cpp's
``llama-imatrix`` tool collects (its ``in_sum2 / counts``) and what prunekit's Wanda statistic
already is. Here it is accumulated with forward hooks on every linear map of the HF checkpoint
(the LM head included, as llama.cpp does), then keyed by the GGUF tensor names the converter gave
those maps (the ``gguf`` package's own name map for the file's architecture).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm


def activation_imatrix(model: nn.Module, ids: torch.Tensor, *, batch_size: int = 4,
                       progress: bool = True) -> dict[str, np.ndarray]:
    """``{module name: mean squared input per column}`` of every ``nn.Linear`` over ``ids``."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    handles = []

    def hook(name: str):
        def record(_module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            sums[name] = sums.get(name, 0) + (x * x).sum(0)
            counts[name] = counts.get(name, 0) + x.shape[0]
        return record

    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            handles.append(module.register_forward_pre_hook(hook(name)))
    try:
        with torch.inference_mode():
            for start in tqdm(range(0, ids.shape[0], batch_size), desc="imatrix", unit="batch", disable=not progress,
                              leave=False):
                model(input_ids=ids[start : start + batch_size], use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return {name: (sums[name] / counts[name]).cpu().numpy().astype(np.float32) for name in sums}


def gguf_names(values: dict[str, np.ndarray], gguf_file: Path) -> dict[str, np.ndarray]:
    """Re-key HF module names to the tensor names inside ``gguf_file`` (those it holds only)."""
    from gguf import MODEL_ARCH_NAMES, GGUFReader, get_tensor_name_map

    reader = GGUFReader(gguf_file)
    arch_name = reader.fields["general.architecture"].contents()
    arch = next(key for key, name in MODEL_ARCH_NAMES.items() if name == arch_name)
    blocks = int(reader.fields[f"{arch_name}.block_count"].contents())
    present = {tensor.name: tensor for tensor in reader.tensors}
    mapping = get_tensor_name_map(arch, blocks)
    out = {}
    for hf_name, vector in values.items():
        name = mapping.get_name(f"{hf_name}.weight", try_suffixes=(".weight",))
        if name in present and int(present[name].shape[0]) == vector.size:  # GGUF shapes are (in, out)
            out[name] = vector
    if "output.weight" not in present and "token_embd.weight" in present and "lm_head" in values:
        out["token_embd.weight"] = values["lm_head"]  # tied embeddings: the LM head is the embedding matrix
    return out


def write_imatrix(values: dict[str, np.ndarray], path: str | os.PathLike) -> Path:
    path = Path(path)
    np.savez(path, **values)
    return path
