"""SparseGPT (Frantar & Alistarh, 2023): prune with an approximate second-order weight update.

Minimise ``||W X − Ŵ X||²`` row-wise, choosing the mask on the fly: with ``H = 2 X Xᵀ / n``
damped by ``percdamp · mean(diag H)``, take the upper Cholesky factor of ``H⁻¹`` and sweep the
columns in blocks. Within a block the mask is chosen from ``w² / [H⁻¹]_jj²`` (for N:M every M
columns per row); each pruned column's error is spread over the block's remaining columns, and
after the block over all later columns with one matrix product (the lazy batch update).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from ..errors import ArgumentError, NumericalError
from ..sparsity import prune_count
from .base import Method, ViewResult, register

log = logging.getLogger(__name__)

MAX_DAMPING_RETRIES = 4


@dataclass
class SparseGPTOptions:
    blocksize: int = field(default=128, metadata={"help": "SparseGPT: columns per lazy-update block (default 128)"})
    percdamp: float = field(default=0.01, metadata={"help": "SparseGPT: damping as a fraction of mean(diag H) (default 0.01)"})
    precision: str = field(default="float32", metadata={"choices": ("float32", "float64"),
                                                         "help": "SparseGPT: dtype of statistics and the solve"})
    true_sequential: bool = field(default=False, metadata={
        "help": "SparseGPT: calibrate q/k/v, then o, then gate/up, then down, each on inputs from the already "
                "pruned maps before it in the layer (default: all from the dense layer, as the reference)"})


def inverse_hessian_factor(hessian: torch.Tensor, percdamp: float, where: str) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor of ``(H + λ·mean(diag H)·I)⁻¹``; retries with 10× damping on failure."""
    if not torch.isfinite(hessian).all():
        raise NumericalError(f"{where}: the Hessian has NaN/inf entries (non-finite calibration activations)")
    mean_diag = float(torch.diag(hessian).mean())
    eye = torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
    damp = percdamp
    tried = []
    for attempt in range(MAX_DAMPING_RETRIES + 1):
        tried.append(damp)
        damped = hessian + damp * mean_diag * eye
        lower, info = torch.linalg.cholesky_ex(damped)
        if int(info) == 0:
            inverse = torch.cholesky_inverse(lower)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if int(info) == 0 and torch.isfinite(upper).all():
                if attempt:
                    log.warning("%s: Hessian needed damping %.3g (asked %.3g)", where, damp, percdamp)
                return upper, damp
        damp = max(damp * 10, 0.01)
    raise NumericalError(f"{where}: the Hessian is not positive definite even with damping {tried[-1]:.3g} "
                         f"(tried {', '.join(f'{d:.3g}' for d in tried)})")


def sparsegpt_prune(weight: torch.Tensor, gram: torch.Tensor, tokens: int, *, fraction: float | None,
                    n: int | None, m: int | None, blocksize: int, percdamp: float, where: str,
                    dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Return ``(new weight, prune mask, info)`` for one ``out×in`` matrix; rows are processed together."""
    W = weight.detach().to(dtype).clone()
    rows, cols = W.shape
    H = gram.to(device=W.device, dtype=dtype) * (2.0 / max(tokens, 1))
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    Hinv, damp = inverse_hessian_factor(H, percdamp, where)
    mask = torch.zeros(rows, cols, dtype=torch.bool, device=W.device)
    pruned_so_far = 0

    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        diag1 = torch.diag(Hinv1)
        if n is None:
            # exactly round(p · numel) pruned once the sweep ends: each block takes its cumulative share
            k = prune_count(rows * i2, fraction) - pruned_so_far  # type: ignore[arg-type]
            scores = (W1 ** 2 / diag1.unsqueeze(0) ** 2).reshape(-1)
            block_mask = torch.zeros(rows * count, dtype=torch.bool, device=W.device)
            if k > 0:
                block_mask[torch.sort(scores, stable=True).indices[:k]] = True
            block_mask = block_mask.view(rows, count)
            pruned_so_far += k
        else:
            block_mask = torch.zeros(rows, count, dtype=torch.bool, device=W.device)
        for i in range(count):
            w = W1[:, i]
            d = diag1[i]
            if n is not None and i % m == 0:  # type: ignore[operator]
                group = W1[:, i : i + m] ** 2 / diag1[i : i + m].unsqueeze(0) ** 2
                drop = torch.sort(group, dim=1, stable=True).indices[:, : m - n]  # type: ignore[operator]
                block_mask[:, i : i + m].scatter_(1, drop, True)
            q = w.masked_fill(block_mask[:, i], 0)
            Q1[:, i] = q
            err = (w - q) / d
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        mask[:, i1:i2] = block_mask
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return W, mask, {"damping": damp, "dead_inputs": int(dead.sum())}


@register
class SparseGPT(Method):
    name = "sparsegpt"
    summary = "second-order mask selection with weight reconstruction (Frantar & Alistarh 2023); N:M"
    needs = frozenset({"gram"})
    Options = SparseGPTOptions

    @classmethod
    def validate_options(cls, options):
        if options.blocksize < 1:
            raise ArgumentError(f"--blocksize must be at least 1 (got {options.blocksize})")
        if not 0 <= options.percdamp < 10:
            raise ArgumentError(f"--percdamp must be in [0, 10) (got {options.percdamp})")

    @property
    def collect_upfront(self):
        return not self.options.true_sequential

    def prune_layer(self, ctx):
        if not self.options.true_sequential:
            return super().prune_layer(ctx)
        reports: dict[str, dict] = {}
        for group in dict.fromkeys(v.input_group for v in ctx.views):  # data-flow order
            views = [v for v in ctx.views if v.input_group == group]
            ctx.recollect(views)
            reports.update(self.prune_views(ctx, views))
        return reports

    @property
    def stats_dtype(self):
        return torch.float64 if self.options.precision == "float64" else torch.float32

    def prune_view(self, view, ctx):
        target = self.target
        if target.is_nm and self.options.blocksize % target.m:
            raise ArgumentError(f"--blocksize {self.options.blocksize} must be a multiple of M={target.m} for N:M")
        stats = ctx.stats_for(view)
        weight, mask, info = sparsegpt_prune(
            view.weight, stats.gram, stats.tokens, fraction=None if target.is_nm else target.fraction,
            n=target.n, m=target.m, blocksize=self.options.blocksize, percdamp=self.options.percdamp,
            where=view.name, dtype=self.stats_dtype,
        )
        return ViewResult(mask, weight, extra=info)
