"""Exact quadratic models of a layer's reconstruction error as a function of per-unit masks.

SPP needs, for every candidate mask vector, the layer-wise reconstruction loss
``||Y_dense − Y(m)||²`` over the calibration tokens — thousands of times per layer. Running the
layer each time would cost a forward and a backward pass per step; instead this module captures,
in one pass over the calibration inputs, the second moments that make the loss a closed form.

**MLP channels.** The mask ``m_c`` scales channel ``c``'s contribution (its column of the down
projection; for ``m ∈ {0, 1}`` identical to masking its gate/up rows too). With ``H`` the down
projection's inputs and ``D`` its weight, ``Y(m) − Y(1) = H diag(m − 1) Dᵀ``, so
``loss = (m − 1)ᵀ Q (m − 1)`` with ``Q = (HᵀH) ∘ (DᵀD)`` (blocks summed per unit).

**Heads, two masks each (pair-wise sharing).** The VO mask scales the head's value/output path;
the QK mask scales its query (and key) rows, which at 0 makes every attention logit of the head
zero. ``U_h``, the head's output with its QK pair at 0, is measured, not modelled: the layer is
run a second time with those rows zeroed by hooks (uniform causal attention for most families;
windowed or position-biased attention stays whatever the family does with zero logits). The
relaxation interpolates between the head's real output ``Z_h`` (its block of the output
projection's input) and ``U_h``: ``Ẑ_h = m_vo (m_qk Z_h + (1 − m_qk) U_h)`` — exact at every vertex
of ``{0, 1}²`` and multilinear in between. With the coefficients
``c = [m_vo m_qk − 1 ; m_vo (1 − m_qk)]`` the loss is ``cᵀ Q c`` where ``Q`` is the block sum of
``([Z U]ᵀ[Z U]) ∘ ([W_o W_o]ᵀ[W_o W_o])``.

Both Gram matrices accumulate in float32 over all calibration tokens; ``energy`` is the squared
norm of the dense sub-block output (``1ᵀ Q 1`` over the real part), used to make losses of
different layers comparable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..models.adapters.units import UnitGroup


@dataclass
class UnitQuadratic:
    """``loss(c) = cᵀ Q c / energy`` for one unit group of one layer."""

    kind: str  # "heads" (c has 2·units entries: real then uniform part) or "channels"
    units: int
    q: torch.Tensor  # float32, (2·units)² for heads, units² for channels
    energy: float

    def loss(self, coefficients: torch.Tensor) -> float:
        return float(coefficients @ (self.q @ coefficients)) / self.energy


def _member(group: UnitGroup, role: str):
    return next(m for m in group.members if m.role == role)


def _zero_rows(out: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    out = out.clone()
    out[..., rows.to(out.device)] = 0
    return out


def _block_sum(full: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``Pᵀ full P`` where ``P`` sums the columns ``index[u]`` of unit ``u`` (index: units × width)."""
    if index.shape[1] == 1:
        flat = index[:, 0]
        return full[flat][:, flat]
    units = index.shape[0]
    assign = torch.zeros(full.shape[0], units, dtype=full.dtype, device=full.device)
    assign[index.reshape(-1).to(full.device), torch.arange(units, device=full.device).repeat_interleave(index.shape[1])] = 1
    return assign.t() @ full @ assign


class UnitQuadraticCapture:
    """Hooks on one layer's q/k, o and down maps that accumulate what :meth:`finish` needs.

    :meth:`run` takes two callables that each run the layer over its calibration inputs (the first
    may collect other statistics on the way). The first replay sees the dense layer (``Z`` is kept, the MLP Gram accumulates), the second one has the
    heads' QK rows zeroed (``U`` meets the kept ``Z`` in the joint Gram). Peak extra memory: ``Z``
    for all calibration tokens, the size of one activation buffer of the layer-wise pass.
    """

    def __init__(self, groups: dict[str, UnitGroup]):
        self.groups = groups
        heads = groups.get("heads")
        self.o_view = _member(heads, "o").view if heads is not None else None
        self.qk_members = [m for m in heads.members if m.role in ("q", "k")] if heads is not None else []
        channels = groups.get("channels")
        self.down_view = channels.members[-1].view if channels is not None else None
        self.head_gram: torch.Tensor | None = None
        self.channel_gram: torch.Tensor | None = None
        self._kept: list[torch.Tensor] = []
        self._cursor = 0

    def run(self, replay_dense: Callable[[], Any], replay: Callable[[], Any]) -> dict[str, "UnitQuadratic"]:
        handles = []
        try:
            if self.o_view is not None:
                handles.append(self.o_view.module.register_forward_pre_hook(lambda _m, args: self._keep(args[0])))
            if self.down_view is not None:
                handles.append(self.down_view.module.register_forward_pre_hook(lambda _m, args: self._add_channels(args[0])))
            replay_dense()
            for handle in handles:
                handle.remove()
            handles = []
            if self.o_view is not None:
                for module, rows in self._qk_rows().items():
                    handles.append(module.register_forward_hook(lambda _m, _a, out, rows=rows: _zero_rows(out, rows)))
                handles.append(self.o_view.module.register_forward_pre_hook(lambda _m, args: self._add_heads(args[0])))
                replay()
        finally:
            for handle in handles:
                handle.remove()
            self._kept = []
        return self.finish()

    def _qk_rows(self) -> dict[torch.nn.Module, torch.Tensor]:
        rows: dict[torch.nn.Module, list[torch.Tensor]] = {}
        for member in self.qk_members:
            rows.setdefault(member.view.module, []).append(member.index.reshape(-1))
        return {module: torch.cat(parts) for module, parts in rows.items()}

    def _keep(self, z: torch.Tensor) -> None:
        self._kept.append(z.detach().float().reshape(-1, z.shape[-1]))

    def _add_heads(self, u: torch.Tensor) -> None:
        z = self._kept[self._cursor]
        self._cursor += 1
        both = torch.cat([z, u.detach().float().reshape(-1, u.shape[-1])], dim=1)
        if self.head_gram is None:
            self.head_gram = torch.zeros(both.shape[1], both.shape[1], dtype=torch.float32, device=both.device)
        self.head_gram.addmm_(both.t(), both)

    def _add_channels(self, h: torch.Tensor) -> None:
        h = h.detach().float().reshape(-1, h.shape[-1])
        if self.channel_gram is None:
            self.channel_gram = torch.zeros(h.shape[1], h.shape[1], dtype=torch.float32, device=h.device)
        self.channel_gram.addmm_(h.t(), h)

    def finish(self) -> dict[str, UnitQuadratic]:
        """The quadratic model of each captured unit group."""
        out: dict[str, UnitQuadratic] = {}
        if self.head_gram is not None:
            group = self.groups["heads"]
            w = self.o_view.weight.detach().float()
            wtw = w.t() @ w
            d = wtw.shape[0]
            full = self.head_gram * wtw.repeat(2, 2)
            index = _member(group, "o").index
            both = torch.cat([index, index + d], dim=0)  # units 0..U-1 real part, U..2U-1 uniform part
            q = _block_sum(full, both)
            energy = float(full[:d, :d].sum())
            out["heads"] = UnitQuadratic("heads", group.units, q, max(energy, 1e-30))
        if self.channel_gram is not None:
            group = self.groups["channels"]
            w = self.down_view.weight.detach().float()
            full = self.channel_gram * (w.t() @ w)
            out["channels"] = UnitQuadratic("channels", group.units, _block_sum(full, group.members[-1].index),
                                            max(float(full.sum()), 1e-30))
        return out
