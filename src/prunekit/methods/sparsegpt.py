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
from ..models.adapters.base import views_by_input_group
from ..sparsity import lowest_count_mask, prune_count
from .base import MaskOptions, Method, ViewResult, register

log = logging.getLogger(__name__)

MAX_DAMPING_RETRIES = 4
# Columns per inner block: the unit of one batched triangular solve (unstructured) or of the
# column-by-column rank-1 updates (N:M); the rest of the outer block is updated by one product per
# inner block. Same algebra as the reference's sweep, which updates the whole outer block per
# column; the results differ from it only by float rounding.
INNER_BLOCK = 16


@dataclass
class SparseGPTOptions(MaskOptions):
    blocksize: int = field(default=128, metadata={"help": "SparseGPT: columns per lazy-update block (default 128)"})
    percdamp: float = field(default=0.01, metadata={"help": "SparseGPT: damping as a fraction of mean(diag H) (default 0.01)"})
    precision: str = field(default="float32", metadata={"choices": ("float32", "float64"),
                                                         "help": "SparseGPT: dtype of statistics and the solve"})
    true_sequential: bool = field(default=False, metadata={
        "help": "SparseGPT: calibrate q/k/v, then o, then gate/up, then down, each on inputs from the already "
                "pruned maps before it in the layer (default: all from the dense layer, as the reference)"})


def inverse_hessian_factor(hessian: torch.Tensor, percdamp: float, where: str) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor ``U`` of ``(H + λ·mean(diag H)·I)⁻¹`` (``H⁻¹ = UᵀU``); retries with 10×
    damping on failure.

    The reference inverts ``H`` and factors the inverse again. With ``J`` the reversal matrix and
    ``L`` the lower Cholesky factor of ``J H J``, ``H = R Rᵀ`` for the upper ``R = J L J``, so
    ``H⁻¹ = R⁻ᵀ R⁻¹`` and ``U = R⁻¹ = J L⁻¹ J``: the same factor from one Cholesky and one
    triangular inverse, half the work and no explicit inverse.
    """
    diagonal = torch.diag(hessian)
    if not torch.isfinite(diagonal).all():  # a NaN/inf activation reaches the diagonal of X Xᵀ
        raise NumericalError(f"{where}: the Hessian has NaN/inf entries (non-finite calibration activations)")
    mean_diag = float(diagonal.mean())
    eye = torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
    reversed_hessian = hessian.flip(0, 1)
    damp = percdamp
    tried = []
    for attempt in range(MAX_DAMPING_RETRIES + 1):
        tried.append(damp)
        lower, info = torch.linalg.cholesky_ex(reversed_hessian + damp * mean_diag * eye)
        if int(info) == 0:
            upper = lower_triangular_inverse(lower).flip(0, 1)
            if torch.isfinite(upper.sum()):  # one pass; a sum that overflows asks for more damping too
                if attempt:
                    log.warning("%s: Hessian needed damping %.3g (asked %.3g)", where, damp, percdamp)
                return upper, damp
        damp = max(damp * 10, 0.01)
    raise NumericalError(f"{where}: the Hessian is not positive definite even with damping {tried[-1]:.3g} "
                         f"(tried {', '.join(f'{d:.3g}' for d in tried)})")


# below this order one triangular solve against the identity is fastest; above it two halves and a product
# (1536: 18.6 -> 9.1 ms here)
TRIANGULAR_INVERSE_SPLIT = 1024


def lower_triangular_inverse(lower: torch.Tensor) -> torch.Tensor:
    """``L⁻¹`` of a lower-triangular ``L``, by blocks for large orders:
    ``[[A, 0], [B, C]]⁻¹ = [[A⁻¹, 0], [−C⁻¹ B A⁻¹, C⁻¹]]`` — two half-size inverses and two products
    instead of a solve against the full identity, which LAPACK's solver does not know is triangular."""
    n = lower.shape[0]
    if n < TRIANGULAR_INVERSE_SPLIT:
        eye = torch.eye(n, dtype=lower.dtype, device=lower.device)
        return torch.linalg.solve_triangular(lower, eye, upper=False)
    half = n // 2
    top, bottom = lower_triangular_inverse(lower[:half, :half]), lower_triangular_inverse(lower[half:, half:])
    inverse = torch.zeros_like(lower)
    inverse[:half, :half] = top
    inverse[half:, half:] = bottom
    inverse[half:, :half] = -(bottom @ (lower[half:, :half] @ top))
    return inverse


def sparsegpt_prune(weight: torch.Tensor, gram: torch.Tensor, tokens: int, *, fraction: float | None,
                    n: int | None, m: int | None, blocksize: int, percdamp: float, where: str,
                    dtype: torch.dtype = torch.float32,
                    segments: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Return ``(new weight, prune mask, info)`` for one ``out×in`` matrix; rows are processed together.

    ``segments`` (row counts summing to ``out``) marks several matrices stacked on one input —
    q/k/v, or gate/up, share ``X`` and so ``H⁻¹``: one sweep serves them all, row for row the same
    arithmetic as separate sweeps, while the unstructured count stays exact per matrix.
    """
    W = weight.detach().to(dtype).clone()
    rows, cols = W.shape
    segments = segments or [rows]
    if sum(segments) != rows:
        raise ValueError(f"{where}: segments {segments} do not add up to {rows} rows")
    bounds = [(sum(segments[:i]), sum(segments[: i + 1])) for i in range(len(segments))]
    H = gram.to(device=W.device, dtype=dtype) * (2.0 / max(tokens, 1))
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    Hinv, damp = inverse_hessian_factor(H, percdamp, where)
    mask = torch.zeros(rows, cols, dtype=torch.bool, device=W.device)
    pruned_so_far = [0] * len(bounds)

    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        Hinv1 = Hinv[i1:i2, i1:i2]
        if n is None:
            # exactly round(p · numel) pruned per matrix once the sweep ends: each block takes its
            # cumulative share, the lowest w² / [H⁻¹]_jj² of the block (ties by position)
            scores = W[:, i1:i2] ** 2 / torch.diag(Hinv1).unsqueeze(0) ** 2
            block_mask = torch.zeros(rows, i2 - i1, dtype=torch.bool, device=W.device)
            for s, (r1, r2) in enumerate(bounds):
                k = prune_count((r2 - r1) * i2, fraction) - pruned_so_far[s]  # type: ignore[arg-type]
                block_mask[r1:r2] = lowest_count_mask(scores[r1:r2].reshape(1, -1), k).view(r2 - r1, -1)
                pruned_so_far[s] += k
            Q1, Err1 = _sweep_known_mask(W[:, i1:i2], block_mask, Hinv1)
        else:
            Q1, Err1, block_mask = _sweep_nm(W[:, i1:i2], Hinv1, n, m)  # type: ignore[arg-type]
        W[:, i1:i2] = Q1
        mask[:, i1:i2] = block_mask
        W[:, i2:].sub_(Err1 @ Hinv[i1:i2, i2:])
    return W, mask, {"damping": damp, "dead_inputs": int(dead.sum())}


def _sweep_known_mask(block: torch.Tensor, block_mask: torch.Tensor,
                      Hinv1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One block's sweep when its mask is already chosen (unstructured): ``(pruned block, errors)``.

    Column by column, the reference sets ``e_c = g_c · w_c`` (``g_c = mask / [H⁻¹]_cc``, ``w_c``
    the column as updated by the errors before it) and subtracts ``e_c · H⁻¹[c, c:]``. For a known
    mask that recursion is, per row, the unit upper-triangular system
    ``e (I + U_s diag(g)) = w ∘ g`` (``U_s`` the strictly upper part of ``H⁻¹``) — so each inner
    block is one batched triangular solve over all rows instead of a Python loop over columns.
    """
    W1 = block.clone()
    rows, count = W1.shape
    gain = torch.where(block_mask, 1.0 / torch.diag(Hinv1).unsqueeze(0), 0.0)
    Err1 = torch.empty_like(W1)
    for j1 in range(0, count, INNER_BLOCK):
        j2 = min(j1 + INNER_BLOCK, count)
        strict = Hinv1[j1:j2, j1:j2].triu(1)
        g = gain[:, j1:j2]
        system = strict.unsqueeze(0) * g.unsqueeze(1)  # the unit diagonal is implied
        err = torch.linalg.solve_triangular(system, (W1[:, j1:j2] * g).unsqueeze(1), upper=True, left=False,
                                            unitriangular=True).squeeze(1)
        W1[:, j1:j2].sub_(err @ strict)  # each column as it stood at its turn; pruned ones are zeroed below
        W1[:, j2:].sub_(err @ Hinv1[j1:j2, j2:])  # the lazy batch update, one level down
        Err1[:, j1:j2] = err
    return W1.masked_fill_(block_mask, 0), Err1


def _sweep_nm(block: torch.Tensor, Hinv1: torch.Tensor, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One block's sweep for N:M, where each group's mask is chosen from the columns as updated so
    far: ``(pruned block, errors, mask)``. The block is held transposed so a column is contiguous,
    and rank-1 updates stay within an inner block of columns (the rest is one product per inner
    block) — the reference's algebra with less memory traffic."""
    W1 = block.t().contiguous()
    count, rows = W1.shape
    diag1 = torch.diag(Hinv1)
    M1 = torch.zeros(count, rows, dtype=torch.bool, device=W1.device)
    gain = torch.zeros_like(W1)
    Err1 = torch.empty_like(W1)
    hinv_rows = Hinv1.unbind(0)
    inner = m * -(-INNER_BLOCK // m)
    for j1 in range(0, count, inner):
        j2 = min(j1 + inner, count)
        for i in range(j1, j2):
            if i % m == 0:
                group = W1[i : i + m] ** 2 / diag1[i : i + m].unsqueeze(1) ** 2
                drop = torch.sort(group, dim=0, stable=True).indices[: m - n]
                M1[i : i + m].scatter_(0, drop, True)
                # a pruned weight's error is its current value over its pivot; a kept one's is 0
                gain[i : i + m] = torch.where(M1[i : i + m], 1.0 / diag1[i : i + m].unsqueeze(1), 0.0)
            err = torch.mul(W1[i], gain[i], out=Err1[i])
            W1[i:j2].addr_(hinv_rows[i][i:j2], err, alpha=-1)
        W1[j2:].sub_(Hinv1[j1:j2, j2:].t() @ Err1[j1:j2])
    # kept entries of column i were left untouched by its own update (err = 0 there)
    return W1.masked_fill_(M1, 0).t(), Err1.t(), M1.t()


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
        for views in views_by_input_group(ctx.views):  # data-flow order
            ctx.recollect(views)
            reports.update(self.prune_views(ctx, views))
        return reports

    @property
    def stats_dtype(self):
        return torch.float64 if self.options.precision == "float64" else torch.float32

    def solve_groups(self, views):
        """Maps reading one input share its Hessian: they are swept together (see ``segments``)."""
        return views_by_input_group(views)

    def prune_group(self, views, ctx):
        target = self.target_for(views[0])  # one input group: one layer, one target
        if target.is_nm and self.options.blocksize % target.m:
            raise ArgumentError(f"--blocksize {self.options.blocksize} must be a multiple of M={target.m} for N:M")
        stats = ctx.stats_for(views[0])
        stacked = views[0].weight if len(views) == 1 else torch.cat([v.weight for v in views])
        weight, mask, info = sparsegpt_prune(
            stacked, stats.gram, stats.tokens, fraction=None if target.is_nm else target.fraction,
            n=target.n, m=target.m, blocksize=self.options.blocksize, percdamp=self.options.percdamp,
            where=", ".join(v.name for v in views), dtype=self.stats_dtype,
            segments=[v.out_features for v in views],
        )
        results, start = [], 0
        for view in views:
            stop = start + view.out_features
            results.append(ViewResult(mask[start:stop], weight[start:stop], extra=dict(info)))
            start = stop
        return results
