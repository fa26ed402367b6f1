"""The linearized Bregman iteration (DessiLBI form) that traces a solution path of unit masks.

Two coupled variables per unit: a dense mask ``m`` trained by (momentum) gradient descent on
``L(m) + ||m − Γ||² / (2ν)``, and a sparse companion ``Γ = κ · shrink(V, τ)`` whose auxiliary
``V`` integrates ``(m − Γ) / ν``. By the inverse-scale-space property, ``Γ`` starts empty and its
support grows: a unit whose mask the loss defends (its ``m`` stays near 1 while the coupling pulls
it toward 0) accumulates ``V`` fastest and *enters* first. The entry order is the path.

Per-unit thresholds ``τ`` (1 in the plain iteration) weight the sparsity penalty of each unit —
SPP passes RIA-derived weights here.

Time, not steps, is what makes entries comparable. The step ``α`` is bounded by the loss's
curvature, which differs by 40× between layers of one model (a layer whose output is carried by a
massive-activation channel has a large top eigenvalue), so a fixed number of steps would cover a
40× shorter stretch of the path in such a layer. Every run therefore covers the same *horizon*
``t_end`` (steps = ``t_end / α``), never with steps coarser than ``t_end / iterations``, and stops
early once every unit has entered. An entry time is interpolated inside its step (where ``|V|``
crossed ``τ``), so units entering in the same step are still ordered. Units that have not entered
by ``t_end`` get the time at which ``V`` would reach ``τ`` at its average rate so far
(``t_end · τ / |V|``), so every unit has one comparable entry time and the ranking is total.

The step cap (``max_steps_factor × iterations``) can end a very stiff layer's run before the
horizon; its result then says so (``stopped_short``) and the caller warns, because entry times
beyond the point reached are extrapolated and a global ranking across layers compares them.

κ enters only the sparse companion, ``Γ = κ · shrink(V, τ)``. DessiLBI also scales the mask's
step by κ (``m ← m − κα∇``); with the automatic α that step would have to shrink by κ again to
stay stable (α ≤ 1 / (κ(L + 1/ν))), so the only net effect would be to slow ``V``'s clock by κ.
We keep the mask's step at its stability bound and let κ act through Γ, which is what the README's
κ sweep varies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import NumericalError


@dataclass
class LBISettings:
    kappa: float = 1.0
    nu: float = 100.0
    alpha: float | None = None  # None: 1 / (Lipschitz bound of the loss gradient + 1/ν)
    momentum: float = 0.9
    iterations: int = 2000  # the fewest steps the horizon is divided into (the coarsest resolution)
    horizon: float | None = None  # time t_end = steps × α the path covers; None: 80 ν
    max_steps_factor: int = 50  # never more than this × iterations steps (a tiny α stops short of t_end)

    @property
    def time_horizon(self) -> float:
        return self.horizon if self.horizon is not None else 80.0 * self.nu


@dataclass
class PathResult:
    """Entry of every unit: ``entry_iteration`` (−1: not within the run), ``entry_time`` (the time
    ``|V|`` crossed ``τ``; extrapolated for units that did not enter), and the final state."""

    entry_iteration: torch.Tensor  # long
    entry_time: torch.Tensor  # float64
    v: torch.Tensor
    m: torch.Tensor
    alpha: float
    final_loss: float
    steps: int = 0
    end_time: float = 0.0
    horizon: float = 0.0

    @property
    def stopped_short(self) -> bool:
        """The step cap ended the run before the horizon with units still outside the support."""
        return self.end_time < self.horizon * (1 - 1e-9) and not bool(self.entered.all())

    @property
    def entered(self) -> torch.Tensor:
        return self.entry_iteration >= 0


def largest_eigenvalue(matrix: torch.Tensor, steps: int = 60, safety: float = 1.1) -> float:
    """An upper estimate of the largest |eigenvalue| of a symmetric matrix: power iteration from a
    fixed start, times ``safety`` (a full eigendecomposition would cost more than the whole path)."""
    x = torch.ones(matrix.shape[0], dtype=matrix.dtype, device=matrix.device)
    x[1::2] = -0.5  # not orthogonal to the top eigenvector of a positive Gram by accident
    value = 0.0
    for _ in range(steps):
        y = matrix @ x
        norm = float(y.norm())
        if norm == 0.0:
            return 0.0
        value = norm / float(x.norm())
        x = y / norm
    return value * safety


def shrink(v: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """Soft thresholding ``sign(v) · max(|v| − τ, 0)``."""
    return v.sign() * (v.abs() - tau).clamp_min(0)


def linearized_bregman(
    gradient: Callable[[torch.Tensor], torch.Tensor],
    m0: torch.Tensor,
    thresholds: torch.Tensor,
    settings: LBISettings,
    *,
    lipschitz: float,
    loss: Callable[[torch.Tensor], float] | None = None,
) -> PathResult:
    """Run the iteration from ``m = m0``, ``Γ = V = 0``; ``gradient(m)`` is ``∇L(m)``.

    ``lipschitz`` bounds the curvature of ``L``; the automatic step ``α = 1 / (lipschitz + 1/ν)``
    keeps the heavy-ball update stable for momentum < 1 (and is lowered to ``horizon / iterations``
    where it would resolve the path more coarsely).
    """
    nu, kappa = settings.nu, settings.kappa
    horizon = settings.time_horizon
    alpha = settings.alpha if settings.alpha is not None else min(1.0 / (lipschitz + 1.0 / nu), horizon / settings.iterations)
    max_steps = max(settings.iterations, min(math.ceil(horizon / alpha - 1e-9), settings.max_steps_factor * settings.iterations))
    m = m0.clone().double()
    tau = thresholds.double()
    v = torch.zeros_like(m)
    gamma = torch.zeros_like(m)
    velocity = torch.zeros_like(m)
    entry = torch.full(m.shape, -1, dtype=torch.long)
    times = torch.full(m.shape, math.inf, dtype=torch.float64)
    k = 0
    for k in range(1, max_steps + 1):
        coupling = (m - gamma) / nu
        velocity = settings.momentum * velocity + gradient(m) + coupling
        v_before = v
        v = v + alpha * coupling  # V ← V − α ∇_Γ loss, at the (m, Γ) of this step
        m = m - alpha * velocity
        gamma = kappa * shrink(v, tau)
        newly = (gamma != 0) & (entry < 0)
        if bool(newly.any()):
            entry[newly] = k
            before, after = v_before[newly].abs(), v[newly].abs()
            within = ((tau[newly] - before) / (after - before).clamp_min(1e-300)).clamp(0, 1)
            times[newly] = alpha * (k - 1 + within)
            if bool((entry >= 0).all()):
                break
        if k % 100 == 0 and not bool(torch.isfinite(m).all()):
            raise NumericalError(f"the Bregman iteration diverged at step {k} (α = {alpha:.3g}); use a smaller --lbi-alpha")
    if not bool(torch.isfinite(m).all()):
        raise NumericalError(f"the Bregman iteration diverged (α = {alpha:.3g}); use a smaller --lbi-alpha")
    t_end = k * alpha
    rate = v.abs().clamp_min(1e-300)
    times = torch.where(entry >= 0, times, torch.clamp(t_end * tau / rate, min=t_end))
    return PathResult(entry, times, v, m, alpha, loss(m) if loss is not None else float("nan"), k, t_end, horizon)
