"""FISTAPruner (Zhao et al., 2024): convex layer-wise pruning with intra-layer error correction.

For each operator, with ``W`` dense, ``X`` its dense input and ``X*`` its input after the pruned
operators before it in the same decoder layer (see :mod:`prunekit.capture.paired`):

    minimise  f(Ŵ) + λ||Ŵ||₁,   f(Ŵ) = ||W X − Ŵ X*||² = tr(Ŵ G Ŵᵀ) − 2 tr(Ŵ Cᵀ) + tr(W D Wᵀ)

with ``G = X* X*ᵀ``, ``C = W X X*ᵀ``, ``D = X Xᵀ`` (divided by the token count so λ has a stable
scale). FISTA with step ``1/L``, ``L = 2 λ_max(G)``, runs all rows as one matrix iteration, with
O'Donoghue–Candès adaptive restart (momentum is reset when it points uphill), which keeps the
objective practically monotone. log λ is searched by safeguarded regula falsi (bisection placed by
the measured zero fractions), every FISTA solve warm-started from the previous one, until the
solution's zero fraction is within ``sparsity_tolerance`` of the target. Each solution on the way
(and the warm start) is projected to the exact target — by ``|Ŵ_ij|·||X*_j||``, across the matrix
for unstructured targets, N:M groups otherwise — re-fitted on its support by least squares
(row-batched conjugate gradients), and the candidate with the lowest layer-wise error is kept.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import torch

from ..capture.paired import CORRECTIONS, PairedStatistics
from ..errors import ArgumentError
from ..sparsity import SparsityTarget, select_mask, zero_fraction
from .allocation import AllocationOptions
from .base import Execution, Method, WorkerOptions, register
from .sparsegpt import sparsegpt_prune
from .wanda import wanda_scores
from ..parallel import check_workers

WARM_STARTS = ("wanda", "magnitude", "sparsegpt", "dense")
PROJECTIONS = ("matrix", "row")
FISTA_MODES = ("prunekit", "paper")

log = logging.getLogger(__name__)


@dataclass
class FistaOptions(AllocationOptions, WorkerOptions):
    fista_mode: str = field(default="prunekit", metadata={"choices": FISTA_MODES, "help": (
        "fista: prunekit (warm start, λ ladder, re-fit, the lowest-error candidate) or paper (FISTAPruner as "
        "published: from the warm start, λ bisected to the target, the final solution hard-thresholded by magnitude "
        "per row)")})
    correction: str = field(default="intra", metadata={
        "choices": CORRECTIONS, "help": "fista: intra (dense layer inputs, pruned predecessors), none, or intra+inter"})
    warm_start: str = field(default="wanda", metadata={"choices": WARM_STARTS, "help": "fista: starting point"})
    fista_iterations: int = field(default=30, metadata={
        "was": "iterations", "help": "fista: FISTA iterations per λ-search step (warm-started)"})
    fista_final_iterations: int = field(default=30, metadata={
        "was": "final_iterations", "help": "fista: FISTA iterations at the chosen λ"})
    tol: float = field(default=1e-4, metadata={"help": "fista: stop when ||W_k − W_k−1|| / ||W_k−1|| is below this"})
    bisection_steps: int = field(default=20, metadata={"help": "fista: at most this many λ search steps"})
    sparsity_tolerance: float = field(default=0.005, metadata={
        "help": "fista: bisection stops when the zero fraction is this close to the target"})
    refit_iterations: int = field(default=50, metadata={
        "help": "fista: conjugate-gradient steps of the least-squares re-fit on the kept support (0: no re-fit)"})
    ranking_refit_iterations: int = field(default=10, metadata={
        "help": "fista: re-fit steps used to rank candidates (the chosen one gets --refit-iterations)"})
    lambda_ladder: int = field(default=3, metadata={
        "help": "fista: also try λ/2 … λ/2^N (λ: the search's, solved from the warm start) and keep the lowest error"})
    projection: str = field(default="matrix", metadata={
        "choices": PROJECTIONS, "help": "fista: unstructured projection compares weights across the matrix or per row"})


@dataclass
class Problem:
    """One operator's quadratic: ``f(W) = tr(W G Wᵀ) − 2 tr(W Cᵀ) + const`` (per-token scale)."""

    G: torch.Tensor
    C: torch.Tensor
    const: float
    scale: torch.Tensor  # s_j = sqrt(G_jj): the solver works on V = W·diag(s), whose Gram has unit diagonal
    Gs: torch.Tensor  # diag(s)⁻¹ G diag(s)⁻¹
    Cs: torch.Tensor  # C diag(s)⁻¹
    L: float  # Lipschitz constant of the gradient in the scaled variables, 2 λ_max(Gs)

    @classmethod
    def from_statistics(cls, weight: torch.Tensor, stats: PairedStatistics) -> "Problem":
        n = max(stats.tokens, 1)
        G = stats.gram.to(weight.device) / n
        C = weight @ (stats.cross.to(weight.device) / n)
        D = stats.dense_gram.to(weight.device) / n
        const = float(((weight.double() @ D.double()) * weight.double()).sum())
        diag = torch.diag(G)
        scale = torch.where(diag > 0, diag.clamp(min=0).sqrt(), torch.ones_like(diag))
        Gs = G / scale.unsqueeze(0) / scale.unsqueeze(1)
        Cs = C / scale.unsqueeze(0)
        top = float(torch.linalg.eigvalsh(Gs.double())[-1])
        return cls(G, C, const, scale, Gs, Cs, 2 * max(top, 1e-12))

    def to_scaled(self, W: torch.Tensor) -> torch.Tensor:
        return W * self.scale.unsqueeze(0)

    def from_scaled(self, V: torch.Tensor) -> torch.Tensor:
        return V / self.scale.unsqueeze(0)

    def smooth(self, W: torch.Tensor) -> float:
        WG = W.double() @ self.G.double()
        return float((WG * W.double()).sum() - 2 * (W.double() * self.C.double()).sum()) + self.const

    def objective(self, W: torch.Tensor, lam: float) -> float:
        return self.smooth(W) + lam * float(W.abs().sum())

    def relative_error(self, W: torch.Tensor) -> float:
        """``||W X − Ŵ X*||² / ||W X||²``."""
        return max(self.smooth(W), 0.0) / self.const if self.const > 0 else 0.0


def fista(problem: Problem, start: torch.Tensor, lam: float, iterations: int, tol: float,
          trace: list[float] | None = None) -> tuple[torch.Tensor, int]:
    """FISTA on ``f(W) + λ||W||₁`` from ``start``, in the diagonally scaled variables ``V = W·diag(s)``.

    The scaling is an exact change of variables (the L1 weight of ``V_ij`` becomes ``λ / s_j``), and
    it makes FISTA's step fit every input feature instead of only the largest-activation outliers.
    """
    step = 1.0 / problem.L
    tau = (lam * step) / problem.scale.unsqueeze(0)
    previous = problem.to_scaled(start)
    z = previous.clone()
    t = 1.0
    done = 0
    for k in range(iterations):
        gradient = 2 * (z @ problem.Gs - problem.Cs)
        moved = z - step * gradient
        current = torch.sign(moved) * torch.clamp(moved.abs() - tau, min=0) if lam > 0 else moved
        done = k + 1
        if trace is not None:
            trace.append(problem.objective(problem.from_scaled(current), lam))
        change = torch.linalg.vector_norm(current - previous)
        size = torch.linalg.vector_norm(previous)
        if float(((z - current) * (current - previous)).sum()) > 0:  # momentum points uphill: restart
            t = 1.0
        t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
        z = current + ((t - 1) / t_next) * (current - previous)
        previous, t = current, t_next
        if float(change) <= tol * max(float(size), 1e-12):
            break
    return problem.from_scaled(previous), done


def refit(problem: Problem, W: torch.Tensor, keep: torch.Tensor, iterations: int, tol: float) -> tuple[torch.Tensor, int]:
    """Least squares on the kept support: ``min f(Ŵ)`` with ``Ŵ = 0`` off ``keep``, every row at once.

    Conjugate gradients per row (rows are independent given ``G``) in the scaled variables, i.e.
    Jacobi-preconditioned CG, vectorised over rows; zeros stay zeros.
    """
    mask = keep.to(W.dtype)
    V = problem.to_scaled(W) * mask
    r = (problem.Cs - V @ problem.Gs) * mask
    p = r.clone()
    rs = (r * r).sum(1, keepdim=True)
    start = rs.sum().sqrt()
    done = 0
    for k in range(iterations):
        Ap = (p @ problem.Gs) * mask
        curvature = (p * Ap).sum(1, keepdim=True)
        # a direction with (numerically) no curvature lies in G's null space (fewer tokens than
        # inputs): stepping along it cannot lower f and would blow up, so that row stops moving
        alpha = torch.where(curvature > 1e-10 * (p * p).sum(1, keepdim=True), rs / curvature.clamp(min=1e-30),
                            torch.zeros_like(rs))
        V = V + alpha * p
        r = r - alpha * Ap
        rs_new = (r * r).sum(1, keepdim=True)
        done = k + 1
        if float(rs_new.sum().sqrt()) <= tol * max(float(start), 1e-30):
            break
        p = r + (rs_new / rs.clamp(min=1e-30)) * p
        rs = rs_new
    return problem.from_scaled(V) * mask, done


def project(problem: Problem, W: torch.Tensor, target: SparsityTarget, group: str = "matrix") -> torch.Tensor:
    """Boolean *keep* mask at exactly the target: the largest ``|Ŵ_ij|·||X*_j||`` are kept.

    The score is the magnitude in the solver's scaled variables (what a weight contributes to the
    output, the Wanda measure), compared across the whole matrix (``group="matrix"``) or within
    each row (``"row"``); N:M keeps the N largest of every M. Why matrix by default: the layer-wise
    error is one sum over rows, and on real statistics letting rows keep different counts gives a
    lower error than forcing each row to exactly ``p`` (SparseGPT's own masks are not uniform per
    row either) — see ``benchmarks/fista_layer.py``.
    """
    return ~select_mask(W.abs() * problem.scale.unsqueeze(0), target, per_row=group == "row")


def warm_start(kind: str, weight: torch.Tensor, stats: PairedStatistics, target: SparsityTarget) -> torch.Tensor:
    if kind == "dense":
        return weight.clone()
    if kind == "sparsegpt":
        pruned, _, _ = sparsegpt_prune(weight, stats.gram, stats.tokens, fraction=None if target.is_nm else target.fraction,
                                       n=target.n, m=target.m, blocksize=128, percdamp=0.01, where="fista warm start")
        return pruned
    scores = weight.abs() if kind == "magnitude" else wanda_scores(weight, torch.diag(stats.gram))
    return weight.masked_fill(select_mask(scores, target, per_row=True), 0)


def _candidate(problem: Problem, W: torch.Tensor, target: SparsityTarget, options: "FistaOptions",
               iterations: int | None = None) -> tuple[torch.Tensor, float]:
    """``W`` projected to the exact target and, when enabled, re-fitted on its support; and its ``f``.

    ``iterations`` caps the re-fit (candidates are ranked on a short one; the winner's is finished).
    """
    if options.fista_mode == "paper":  # the paper's rounding: the largest magnitudes of each row
        keep = ~select_mask(W.abs(), target, per_row=True)
    else:
        keep = project(problem, W, target, options.projection)
    W = W * keep
    steps = options.refit_iterations if iterations is None else min(iterations, options.refit_iterations)
    if steps:
        W, _ = refit(problem, W, keep, steps, options.tol)
    return W, problem.smooth(W)


def solve(weight: torch.Tensor, stats: PairedStatistics, target: SparsityTarget, options: FistaOptions,
          where: str = "fista") -> tuple[torch.Tensor, dict]:
    """λ search, projection, optional re-fit, selection; returns ``(new weight, report)``.

    Every FISTA solution the λ search visits, the warm start (the λ → 0 end of the path) and a
    ladder of smaller penalties ``λ/2 … λ/2^lambda_ladder`` solved from the warm start are
    candidates: projected to the exact target and re-fitted on its support, it is scored by the
    layer-wise error ``f`` it was solved for, and the lowest-error candidate is returned. Why: the
    fraction of zeros only steers the search; what the layer is judged by is the error *after*
    projection, and on real LLM statistics the converged L1 solution at exactly the target
    sparsity is a worse support than the solution at a few times smaller λ, projected (the L1
    shrinkage bias; the error after projection is lowest near λ/4 on the shared model's layers —
    measured in ``benchmarks/fista_layer.py``). Selecting by ``f`` never does worse than the
    warm start. The report says which candidate won (``selected``) and its λ and zero fraction.

    A λ search that ends outside ``sparsity_tolerance`` is not an error: the projection still
    makes the target exact, so the best λ found is used, the report says ``bisection_converged:
    false`` and a warning names the operator (``where``) so a user can raise the step budget.
    """
    problem = Problem.from_statistics(weight, stats)
    paper = options.fista_mode == "paper"  # the published algorithm: one path, its end projected, no extras
    W = start = warm_start(options.warm_start, weight, stats, target)
    goal = target.fraction
    report = {"objective_warm_start": problem.smooth(W), "L": problem.L}
    chosen, chosen_f, source, selected, candidates = W, math.inf, W, {}, 0

    def consider(solution: torch.Tensor, lam: float, label: str, baseline: bool = False) -> None:
        """Rank ``solution`` after projection and a short re-fit. Solutions with more zeros than the
        target are skipped: projecting them would have to re-grow weights chosen among exact zeros.
        The ``baseline`` (the warm start) is always taken, so the result is never worse than it —
        even when the weight already has more zeros than the target (a pruned model pruned again)."""
        nonlocal chosen, chosen_f, source, selected, candidates
        if paper and label != "final solve":
            return
        zeros = zero_fraction(solution)
        if zeros > goal + options.sparsity_tolerance and not baseline:
            return
        candidate, value = _candidate(problem, solution, target, options, 0 if paper else options.ranking_refit_iterations)
        candidates += 1
        if baseline or value < chosen_f:
            chosen, chosen_f, source = candidate, value, solution
            selected = {"selected": label, "selected_lambda": lam, "selected_sparsity_before_projection": zeros}

    consider(start, 0.0, "warm start", baseline=True)  # the λ → 0 end of the path
    # λ ≥ max|2C| zeroes everything (W = 0 is then optimal). Search log λ by safeguarded regula
    # falsi on the zero fraction (monotone in λ in practice): a bisection that uses the measured
    # fractions to place the next λ, so it needs a handful of warm-started solves, not twenty.
    hi = math.log(2 * float(problem.C.abs().max()) + 1e-30)
    lo, s_lo, s_hi = hi - math.log(1e7), 0.0, 1.0
    total_iterations = steps = 0
    best = (math.inf, W, math.exp(hi))
    for steps in range(1, options.bisection_steps + 1):
        x = lo + (goal - s_lo) * (hi - lo) / max(s_hi - s_lo, 1e-12)
        x = min(max(x, lo + 0.05 * (hi - lo)), hi - 0.05 * (hi - lo))
        lam = math.exp(x)
        W, used = fista(problem, W, lam, options.fista_iterations, options.tol)
        total_iterations += used
        consider(W, lam, f"search step {steps}")
        achieved = zero_fraction(W)
        if abs(achieved - goal) < best[0]:
            best = (abs(achieved - goal), W, lam)
        if abs(achieved - goal) <= options.sparsity_tolerance:
            break
        if achieved < goal:
            lo, s_lo = x, achieved
        else:
            hi, s_hi = x, achieved
    gap, W, lam = best
    converged = gap <= options.sparsity_tolerance
    if not converged:
        log.warning("%s: the λ search ended %.2f points from the target %.2f%% zeros after %d steps; continuing "
                    "with the best λ %.3g and the exact projection (raise --bisection-steps or --sparsity-tolerance)",
                    where, 100 * gap, 100 * goal, steps, lam)
    W, used = fista(problem, W, lam, options.fista_final_iterations, options.tol)
    total_iterations += used
    consider(W, lam, "final solve", baseline=paper)
    for k in range(1, 0 if paper else options.lambda_ladder + 1):
        rung, used = fista(problem, start, lam / 2**k, options.fista_iterations, options.tol)
        total_iterations += used
        consider(rung, lam / 2**k, f"ladder λ/{2**k}")
    if not paper and options.ranking_refit_iterations < options.refit_iterations:  # finish the winner's re-fit
        finished, finished_f = _candidate(problem, source, target, options)
        if math.isfinite(finished_f) and finished_f <= chosen_f and bool(torch.isfinite(finished).all()):
            chosen, chosen_f = finished, finished_f
    report.update({"lambda": lam, "bisection_steps": steps, "bisection_converged": converged,
                   "sparsity_before_projection": zero_fraction(W), "objective_l1_solution": problem.smooth(W),
                   "candidates": candidates, **selected})
    report.update({"fista_iterations": total_iterations, "objective_final": chosen_f,
                   "recon_error": problem.relative_error(chosen), "refit": bool(options.refit_iterations)})
    return chosen, report


@register
class FISTAPruner(Method):
    name = "fista"
    summary = ("FISTAPruner's L1 layer-wise model (FISTA, intra-layer error correction, λ bisection) plus prunekit's "
               "additions: a Wanda warm start, a λ ladder, a least-squares re-fit on the support, and the "
               "candidate with the lowest layer-wise error (--fista-mode paper: the published algorithm alone)")
    needs = frozenset({"paired"})
    Options = FistaOptions

    @property
    def execution(self) -> Execution:
        return Execution.PAIRED

    @classmethod
    def validate_options(cls, options):
        for name in ("fista_iterations", "fista_final_iterations", "bisection_steps"):
            if getattr(options, name) < 1:
                raise ArgumentError(f"--{name.replace('_', '-')} must be at least 1")
        check_workers(options.workers)
        if options.workers > 1 and options.correction == "intra+inter":
            raise ArgumentError("--workers > 1 needs --correction intra or none (intra+inter chains the layers)")
        if min(options.refit_iterations, options.ranking_refit_iterations, options.lambda_ladder) < 0:
            raise ArgumentError("--refit-iterations, --ranking-refit-iterations and --lambda-ladder must be at least 0")
        defaults = FistaOptions()
        extras = [f"--{name.replace('_', '-')}" for name in ("lambda_ladder", "refit_iterations",
                                                             "ranking_refit_iterations", "projection")
                  if getattr(options, name) != getattr(defaults, name)]
        if options.fista_mode == "paper" and extras:
            raise ArgumentError(f"--fista-mode paper runs the published algorithm: {', '.join(extras)} "
                                "belong to prunekit's mode")
        if not 0 < options.tol < 1 or not 0 < options.sparsity_tolerance < 0.5:
            raise ArgumentError("--tol must be in (0, 1) and --sparsity-tolerance in (0, 0.5)")

    def prune_paired(self, view, dense_weight: torch.Tensor, stats: PairedStatistics) -> dict:
        if view.expert is not None and stats.tokens == 0:  # an expert no calibration token reaches
            return self.prune_unrouted(None, [view])[view.name]
        started = time.perf_counter()
        new, report = solve(dense_weight, stats, self.target_for(view), self.options, where=view.name)
        view.set_weight(new)
        report["sparsity"] = zero_fraction(view.weight)
        report["shape"] = list(view.weight.shape)
        report["seconds"] = round(time.perf_counter() - started, 4)
        return report
