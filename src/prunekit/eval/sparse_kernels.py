"""Run a 2:4 model on PyTorch's semi-structured sparse kernels (CUDA), to time what 2:4 buys.

A 2:4 checkpoint stores its zeros densely; only when a linear's weight is handed to
``torch.sparse.to_sparse_semi_structured`` (cuSPARSELt or CUTLASS, Ampere or newer, fp16/bf16) does
the matrix multiply skip them. :func:`convert` swaps every eligible decoder linear in place and
says which were left dense and why; the cost report times the model before and after.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ArgumentError
from ..models.loading import LoadedModel
from ..sparsity import check_nm

KERNEL_DTYPES = (torch.float16, torch.bfloat16)


def candidates(loaded: LoadedModel) -> tuple[list, dict[str, str]]:
    """Decoder linears whose weights are valid 2:4 ``nn.Linear`` weights in fp16/bf16; the rest with a reason."""
    eligible, skipped = [], {}
    for index in range(loaded.adapter.num_layers()):
        for view in loaded.adapter.linears(index):
            module = view.module
            if not isinstance(module, nn.Linear) or not isinstance(module.weight, nn.Parameter):
                skipped[view.name] = "not a plain nn.Linear (Conv1D or low-rank factors)"
            elif module.weight.dtype not in KERNEL_DTYPES:
                skipped[view.name] = f"dtype {str(module.weight.dtype).removeprefix('torch.')} (kernels need float16/bfloat16)"
            elif not check_nm(module.weight.detach(), 2, 4):
                skipped[view.name] = "weight is not 2:4 along its inputs"
            else:
                eligible.append(view)
    return eligible, skipped


def convert(loaded: LoadedModel) -> dict:
    """Hand every eligible weight to the semi-structured kernels; ``{converted, skipped: {name: reason}}``."""
    if loaded.device.type != "cuda":
        raise ArgumentError(f"--sparse-kernels needs a CUDA GPU (PyTorch's 2:4 kernels); this model is on {loaded.device}")
    from torch.sparse import to_sparse_semi_structured

    eligible, skipped = candidates(loaded)
    converted = 0
    for view in eligible:
        try:
            sparse = to_sparse_semi_structured(view.module.weight.detach())
        except (RuntimeError, ValueError, NotImplementedError) as exc:  # shape or hardware the kernels refuse
            skipped[view.name] = str(exc).strip().splitlines()[0][:200]
            continue
        view.module.weight = nn.Parameter(sparse, requires_grad=False)
        converted += 1
    return {"converted": converted, "skipped": skipped}
