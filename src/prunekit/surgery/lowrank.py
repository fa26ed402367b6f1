"""Low-rank replacement of a linear map: ``W ≈ U_r Σ_r V_rᵀ`` (SVD clipping).

The exact SVD of a weight is computed once in float32 (:class:`Spectrum`); any clipping rate is
then a cheap product of its leading factors, so a search over rates never recomputes it. The
product is written back dense (the default: same shapes, same checkpoint format), or the map is
replaced by two linears ``in -> r -> out`` (:class:`FactoredLinear`), which stores fewer
parameters when ``r < in·out / (in + out)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ArgumentError
from ..io.shapes import FACTORED_KEY
from ..models.adapters.base import LinearView


@dataclass
class Spectrum:
    """``W = U diag(S) Vh`` with singular values descending (float32, on the weight's device)."""

    U: torch.Tensor
    S: torch.Tensor
    Vh: torch.Tensor

    @classmethod
    def of(cls, weight: torch.Tensor) -> "Spectrum":
        """The SVD; on CPU single-threaded, because LAPACK's result depends (in the last bits) on
        the thread count — pinned, a layer gives the same factors in this process and in any
        worker of a layer-parallel run (at these sizes one thread is as fast as two)."""
        matrix = weight.detach().float()
        if matrix.device.type != "cpu":
            return cls(*torch.linalg.svd(matrix, full_matrices=False))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            U, S, Vh = torch.linalg.svd(matrix, full_matrices=False)
        finally:
            torch.set_num_threads(threads)
        return cls(U, S, Vh)

    @property
    def size(self) -> int:
        return self.S.numel()

    def condition_number(self) -> float:
        """``σ_max / σ_min`` over the non-zero singular values (numerically: above ``σ_max·n·eps``)."""
        largest = float(self.S[0])
        if largest == 0.0:
            return float("inf")
        tolerance = largest * max(self.U.shape[0], self.Vh.shape[1]) * torch.finfo(torch.float32).eps
        return largest / float(self.S[self.S > tolerance].min())

    def product(self, rank: int) -> torch.Tensor:
        return (self.U[:, :rank] * self.S[:rank]) @ self.Vh[:rank]

    def discarded_energy(self, rank: int) -> float:
        """``Σ_{i>r} σ_i²`` — the squared Frobenius error of the rank-r product (Eckart–Young)."""
        return float((self.S[rank:].double() ** 2).sum())


def kept_rank(rate: float, size: int) -> int:
    """The spec's ``r = max(1, round((1 − ξ)·n))`` for clipping rate ``ξ ∈ [0, 1)``."""
    if not 0.0 <= rate < 1.0:
        raise ArgumentError(f"--rate must be in [0, 1), got {rate}")
    return max(1, round((1.0 - rate) * size))


class FactoredLinear(nn.Sequential):
    """``x -> second(first(x))`` with ``first: in -> r`` (no bias) and ``second: r -> out``.

    A plain ``nn.Sequential`` in the checkpoint (keys ``0.weight``, ``1.weight``, ``1.bias``), so
    the saved model rebuilds it without prunekit; ``weight`` gives the dense ``out×in`` product
    for reading (sparsity checks, spectra), and cannot be written.
    """

    @property
    def weight(self) -> torch.Tensor:
        return self[1].weight @ self[0].weight

    @property
    def rank(self) -> int:
        return self[0].out_features


def factor(view: LinearView, spectrum: Spectrum, rank: int) -> FactoredLinear:
    """Replace ``view``'s module in its parent by the two factors of its rank-``rank`` product."""
    old = view.module
    reference = old.weight
    bias = getattr(old, "bias", None)
    first = nn.Linear(view.in_features, rank, bias=False)
    second = nn.Linear(rank, view.out_features, bias=bias is not None)
    with torch.no_grad():
        first.weight.copy_(spectrum.Vh[:rank])
        second.weight.copy_(spectrum.U[:, :rank] * spectrum.S[:rank])
        if bias is not None:
            second.bias.copy_(bias.detach().reshape(-1))
    module = FactoredLinear(first, second).to(device=reference.device, dtype=reference.dtype)
    return module


def install(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, module)


def record_factored(config, name: str, module: FactoredLinear) -> None:
    """Note a factored map in the config, so the checkpoint's loader rebuilds its two factors."""
    entries = dict(getattr(config, FACTORED_KEY, None) or {})
    entries[name] = {"rank": module.rank, "in": module[0].in_features, "out": module[1].out_features,
                     "bias": module[1].bias is not None}
    setattr(config, FACTORED_KEY, entries)


def adopt_factored(model: nn.Module) -> int:
    """Give the plain ``nn.Sequential`` factors of a reloaded checkpoint the :class:`FactoredLinear` class."""
    entries = getattr(model.config, FACTORED_KEY, None) or {}
    for name in entries:
        module = model.get_submodule(name)
        if type(module) is nn.Sequential:
            module.__class__ = FactoredLinear
    return len(entries)


def densify_factored(model: nn.Module) -> int:
    """Replace every factored map by one ``nn.Linear`` holding the product (for targets that have no
    factored layer, e.g. GGUF); returns how many were replaced and drops the config's note of them."""
    entries = getattr(model.config, FACTORED_KEY, None) or {}
    for name in entries:
        module = model.get_submodule(name)
        first, second = module[0], module[1]
        dense = nn.Linear(first.in_features, second.out_features, bias=second.bias is not None)
        with torch.no_grad():
            dense.weight.copy_(second.weight.float() @ first.weight.float())
            if second.bias is not None:
                dense.bias.copy_(second.bias)
        install(model, name, dense.to(device=first.weight.device, dtype=first.weight.dtype))
    if entries:
        delattr(model.config, FACTORED_KEY)
    return len(entries)
