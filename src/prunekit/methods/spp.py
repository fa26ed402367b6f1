"""SPP — solution-path structured pruning (differential inclusion; ICLR 2025), zero-shot for LLMs.

One run traces, per decoder layer, the path on which attention heads and MLP channels *enter* a
sparse mask; cutting the path at any sparsity gives a physically smaller model, so every level
comes from one search (``path.json`` + ``prunekit materialize``).

What exactly runs (the paper leaves the LLM coupling open; these are our choices):

- **Masks, pair-wise shared.** Per head a QK mask (its query and key rows) and a VO mask (its
  value rows and output-projection columns); per MLP channel one mask (gate/up rows, down
  column). Units come from the adapter, as for LLM-Pruner (``--head-grouping kv``: a KV head with
  its query heads).
- **Loss.** Layer-wise reconstruction of each sub-block's output on the dense model's calibration
  activations, ``||Y_dense − Y(m)||² / ||Y_dense||²``, in closed form
  (:mod:`prunekit.capture.unit_quadratics`): the MLP loss is quadratic in the channel masks; a
  head's QK mask interpolates between its attention and uniform attention (exact at 0 and 1).
  Weights are never updated.
- **Iteration.** :func:`prunekit.methods.lbi.linearized_bregman` from ``m = 1``, ``Γ = V = 0`` with
  κ, ν, α (default min(1/(L + 1/ν), horizon/iterations)), heavy-ball momentum, over the same time
  horizon in every layer (default 80·ν; a layer with a large curvature runs more, smaller steps)
  and stopping once every unit has entered; entry times are interpolated within a step.
- **RIA coupling (an option, off by default).** A unit's sparsity penalty can be weighted by its
  normalised RIA group score ``ŝ = s / mean(s)`` (RIA summed over the unit's members, per layer
  and mask kind): the shrink threshold is ``τ = ŝ^(−ria_power)``, so units RIA rates high need
  less accumulated evidence to enter (an adaptive-lasso weighting). A head's two pairs both take
  the whole head's score (all q/k/v/o members, as RIA's group pruning ranks heads) with
  ``--head-score head``; ``pair`` scores each pair from its own members; ``--ria-units`` names the
  unit kinds the weighting applies to (the others keep τ = 1). The default is the plain
  iteration (``--ria-power 0``, every τ = 1), chosen on C4 validation windows on SmolLM2-135M: its
  30% cut scored perplexity 96.6 there against 153.6 with ``--ria-power 1`` and 148.3 for RIA group
  scoring alone; the weights moved few units (99% of the kept set is shared), but enough of the
  few heads to matter (``benchmarks/spp.py``, sensitivity part).
- **Reading the path.** A head's entry is its VO pair's entry — a head with zero VO contributes
  nothing and can be removed whole, while a head with only its QK pair at zero still contributes
  (uniform attention) and cannot; QK entries are recorded in ``path.json``. Units that have not
  entered by the last iteration rank after all that have, by ``|V| / τ``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

from ..capture.layerwise import layerwise
from ..capture.statistics import collect_statistics
from ..capture.unit_quadratics import UnitQuadratic, UnitQuadraticCapture
from ..errors import ArgumentError
from .lbi import LBISettings, PathResult, largest_eigenvalue, linearized_bregman
from ..models.adapters.units import UnitGroup
from .base import WidthMethod, register
from .llm_pruner import member_scores
from .unit_plan import parse_unit_kinds, validate_round_to, width_layers

log = logging.getLogger(__name__)

QK_ROLES = ("q", "k")
VO_ROLES = ("v", "o")


@dataclass
class SPPOptions:
    ratio: float | None = field(default=None, metadata={
        "help": "width: fraction of heads (KV groups) and MLP channels removed in each selected layer"})
    layer_range: str = field(default="0.125:0.9375", metadata={
        "help": "width: START:END layers to prune, as fractions of depth (with a '.') or indices, END exclusive"})
    global_ranking: bool = field(default=False, metadata={"help": "width: rank units of all selected layers together"})
    head_grouping: str = field(default="kv", metadata={"choices": ("kv", "query"), "help": "width: GQA head unit"})
    units: str = field(default="heads,channels", metadata={"help": "width: which units to prune: heads, channels or both"})
    round_to: int = field(default=1, metadata={
        "help": "width: keep each layer's MLP channels a multiple of N when the path is cut (a later N:M step "
                "needs M to divide them; recipes set it from such a step) (default 1)"})
    lbi_kappa: float = field(default=1.0, metadata={"help": "SPP: κ of Γ = κ·shrink(V, τ) (default 1)"})
    lbi_nu: float = field(default=100.0, metadata={"help": "SPP: ν, the coupling ||m − Γ||²/(2ν) (default 100)"})
    lbi_alpha: float | None = field(default=None, metadata={"help": "SPP: step size α (default 1/(L + 1/ν) per layer)"})
    lbi_momentum: float = field(default=0.9, metadata={"help": "SPP: heavy-ball momentum on the mask gradient (default 0.9)"})
    lbi_iterations: int = field(default=2000, metadata={
        "help": "SPP: the horizon is cut into at least this many Bregman steps (more where the layer's curvature "
                "needs a smaller α; a run stops early once every unit has entered) (default 2000)"})
    lbi_horizon: float | None = field(default=None, metadata={
        "help": "SPP: the path time t = steps × α every layer covers, so entries compare across layers (default 80·ν)"})
    ria_power: float = field(default=0.0, metadata={
        "help": "SPP: shrink threshold τ = (RIA group score / mean)^-power; 0 = plain iteration (default 0)"})
    ria_units: str = field(default="heads,channels", metadata={
        "help": "SPP: the unit kinds whose thresholds --ria-power weights: heads and/or channels (default both)"})
    head_score: str = field(default="head", metadata={"choices": ("head", "pair"), "help": (
        "SPP: the RIA score behind a head's thresholds: 'head' sums all its q/k/v/o members (RIA's group score) for "
        "both pairs, 'pair' scores the QK and VO pairs from their own members (default head)")})


def pair_scores(group: UnitGroup, sqnorms: dict[str, torch.Tensor], roles: tuple[str, ...] | None) -> torch.Tensor:
    """RIA group score per unit, summed over the members whose role is in ``roles`` (all if None)."""
    scores = member_scores(group, "ria", None, None, None, sqnorms)
    rows = [r for r, member in enumerate(group.members) if roles is None or member.role in roles]
    if not rows:  # e.g. query-head grouping has no k/v members: use every member
        rows = list(range(len(group.members)))
    return scores[rows].sum(0).double()


def thresholds(scores: torch.Tensor, power: float) -> torch.Tensor:
    normalised = scores / scores.mean().clamp_min(1e-30)
    return normalised.clamp_min(1e-12).pow(-power)


def channel_path(quad: UnitQuadratic, tau: torch.Tensor, settings: LBISettings) -> PathResult:
    q = quad.q.double() / quad.energy
    lipschitz = 2 * largest_eigenvalue(q)
    return linearized_bregman(lambda m: 2 * (q @ (m - 1)), torch.ones(quad.units, dtype=torch.float64), tau,
                              settings, lipschitz=lipschitz, loss=lambda m: float((m - 1) @ (q @ (m - 1))))


def head_path(quad: UnitQuadratic, tau_vo: torch.Tensor, tau_qk: torch.Tensor, settings: LBISettings) -> PathResult:
    """State ``[m_vo ; m_qk]``; coefficients ``c = [m_vo m_qk − 1 ; m_vo (1 − m_qk)]``."""
    units = quad.units
    q = quad.q.double() / quad.energy

    def coefficients(m: torch.Tensor) -> torch.Tensor:
        vo, qk = m[:units], m[units:]
        return torch.cat([vo * qk - 1, vo * (1 - qk)])

    def gradient(m: torch.Tensor) -> torch.Tensor:
        vo, qk = m[:units], m[units:]
        g = 2 * (q @ coefficients(m))
        ga, gb = g[:units], g[units:]
        return torch.cat([ga * qk + gb * (1 - qk), (ga - gb) * vo])

    # the Jacobian of c at m = 1 is [[I, I], [0, −I]] with spectral norm² (3 + √5)/2
    lipschitz = 2 * largest_eigenvalue(q) * 2.62
    return linearized_bregman(gradient, torch.ones(2 * units, dtype=torch.float64), torch.cat([tau_vo, tau_qk]),
                              settings, lipschitz=lipschitz,
                              loss=lambda m: float(coefficients(m) @ (q @ coefficients(m))))


def _entry_record(result: PathResult, group: UnitGroup, part: slice = slice(None)) -> dict:
    return {"units": group.units, "partition": group.partition,
            "entry_iteration": result.entry_iteration[part].tolist(),
            "entry_time": [round(float(t), 6) for t in result.entry_time[part]],
            "v_final": [round(float(v), 6) for v in result.v[part]],
            "alpha": result.alpha, "steps": result.steps, "end_time": round(result.end_time, 6),
            "reached_horizon": not result.stopped_short, "final_loss": result.final_loss}


def _warn_if_short(result: PathResult, index: int, kind: str) -> None:
    if result.stopped_short:
        log.warning("SPP layer %d %s: the step cap (%d steps) ended the path at t = %.4g, before the horizon %.4g; "
                    "later entry times are extrapolated, which --global-ranking compares across layers "
                    "(raise --lbi-iterations or lower --lbi-horizon)", index, kind, result.steps, result.end_time,
                    result.horizon)


@register
class SPP(WidthMethod):
    name = "spp"
    summary = "solution-path structured pruning: one Bregman run orders heads/channels for every sparsity (SPP)"
    needs = frozenset({"sqnorm"})
    default_calib = "c4"
    default_nsamples = 32
    default_calib_seqlen = 512
    Options = SPPOptions

    @classmethod
    def validate_options(cls, options):
        if options.ratio is None or not 0 <= options.ratio < 1:
            raise ArgumentError(f"--ratio must be given, in [0, 1) (got {options.ratio})")
        parse_unit_kinds(options.units, "--units")
        validate_round_to(options.round_to)
        if options.lbi_kappa <= 0 or options.lbi_nu <= 0:
            raise ArgumentError("--lbi-kappa and --lbi-nu must be > 0")
        if options.lbi_alpha is not None and options.lbi_alpha <= 0:
            raise ArgumentError(f"--lbi-alpha must be > 0 (got {options.lbi_alpha})")
        if not 0 <= options.lbi_momentum < 1:
            raise ArgumentError(f"--lbi-momentum must be in [0, 1) (got {options.lbi_momentum})")
        if options.lbi_iterations < 1:
            raise ArgumentError(f"--lbi-iterations must be >= 1 (got {options.lbi_iterations})")
        if options.lbi_horizon is not None and options.lbi_horizon <= 0:
            raise ArgumentError(f"--lbi-horizon must be > 0 (got {options.lbi_horizon})")
        if options.ria_power < 0:
            raise ArgumentError(f"--ria-power must be >= 0 (got {options.ria_power})")
        parse_unit_kinds(options.ria_units, "--ria-units")

    @property
    def kinds(self) -> list[str]:
        return parse_unit_kinds(self.options.units, "--units")

    def ria_power_for(self, kind: str) -> float:
        """The RIA weighting power of one unit kind's thresholds (0: the plain iteration for that kind)."""
        return self.options.ria_power if kind in parse_unit_kinds(self.options.ria_units, "--ria-units") else 0.0

    @property
    def settings(self) -> LBISettings:
        o = self.options
        return LBISettings(o.lbi_kappa, o.lbi_nu, o.lbi_alpha, o.lbi_momentum, o.lbi_iterations, o.lbi_horizon)

    def search(self, loaded, calib_ids, *, progress: bool) -> dict:
        """Trace the path of every selected layer on the dense model; the ``path.json`` content."""
        from .solution_path import FORMAT, fingerprint

        adapter = loaded.adapter
        opts = self.options
        layers = width_layers(self.explicit_layers, opts.layer_range, adapter.num_layers())
        lacking = {k: [i for i in layers if k not in adapter.unit_groups(i, opts.head_grouping)] for k in self.kinds}
        lacking = {k: v for k, v in lacking.items() if v}
        if lacking:  # one path for every layer and kind (a MoE layer of routed experts only has no channels)
            what = "; ".join(f"layers {v} have no {'dense MLP channels' if k == 'channels' else 'removable heads'}"
                             for k, v in lacking.items())
            raise ArgumentError(f"spp traces every --units kind in every selected layer: {what}; "
                                "pass --units with the kinds they have, or use llm-pruner")
        if opts.global_ranking and opts.head_grouping == "query" and "heads" in self.kinds and \
                any(adapter.unit_groups(i, "query")["heads"].partition > 1 for i in layers):
            raise ArgumentError("--global-ranking with --head-grouping query cannot keep KV groups equal; use --head-grouping kv")
        settings = self.settings
        stamp = fingerprint(loaded)

        def on_layer(ctx) -> dict:
            groups = {k: g for k, g in adapter.unit_groups(ctx.index, opts.head_grouping).items() if k in self.kinds}
            sqnorms: dict[str, torch.Tensor] = {}

            def replay_collecting_norms() -> None:
                with collect_statistics(ctx.views, frozenset({"sqnorm"})) as stats:
                    ctx.replay()
                sqnorms.update({g: s.sqnorm for g, s in stats.items()})

            quads = UnitQuadraticCapture(groups).run(replay_collecting_norms, ctx.replay)
            record: dict = {}
            if "heads" in groups:
                group = groups["heads"]
                power = self.ria_power_for("heads")
                if opts.head_score == "head":
                    tau_vo = tau_qk = thresholds(pair_scores(group, sqnorms, None), power)
                else:
                    tau_vo = thresholds(pair_scores(group, sqnorms, VO_ROLES), power)
                    tau_qk = thresholds(pair_scores(group, sqnorms, QK_ROLES), power)
                result = head_path(quads["heads"], tau_vo, tau_qk, settings)
                _warn_if_short(result, ctx.index, "heads")
                units = group.units
                entry = _entry_record(result, group, slice(0, units))
                entry["qk_entry_iteration"] = result.entry_iteration[units:].tolist()
                entry["qk_entry_time"] = [round(float(t), 6) for t in result.entry_time[units:]]
                record["heads"] = entry
            if "channels" in groups:
                group = groups["channels"]
                tau = thresholds(pair_scores(group, sqnorms, None), self.ria_power_for("channels"))
                result = channel_path(quads["channels"], tau, settings)
                _warn_if_short(result, ctx.index, "channels")
                record["channels"] = _entry_record(result, group)
            return record

        started = time.perf_counter()
        walk = layerwise(loaded, on_layer, calib_ids=calib_ids, collect_upfront=False,
                         layers=layers, progress=progress)
        return {"format": FORMAT, "model": {k: loaded.source.get(k) for k in ("model", "resolved", "gguf_file")},
                "fingerprint": stamp, "kinds": self.kinds, "head_grouping": opts.head_grouping,
                "global_ranking": opts.global_ranking, "settings": {**vars(settings), "horizon": settings.time_horizon},
                "ria_power": opts.ria_power, "ria_units": opts.ria_units, "head_score": opts.head_score,
                "coupling": (f"threshold tau = (RIA group score / layer mean)^-ria_power for {opts.ria_units}, 1 otherwise"
                             if opts.ria_power else "plain iteration: every threshold tau = 1") + "; head entry = VO-pair entry",
                "calibration_tokens": int(calib_ids.numel()), "search_seconds": round(time.perf_counter() - started, 3),
                "layers": {str(index): record for index, record, _ in walk}}

    def prune_width(self, loaded, calib_ids, *, progress: bool) -> dict:
        from .solution_path import PathArtifact, materialize

        path = self.search(loaded, calib_ids, progress=progress)
        started = time.perf_counter()
        report = materialize(loaded, path, self.options.ratio, round_to=self.options.round_to)
        loaded.artifacts["spp_path"] = PathArtifact(path)
        entered = {k: sum(e >= 0 for layer in path["layers"].values() for e in layer[k]["entry_iteration"])
                   / sum(layer[k]["units"] for layer in path["layers"].values()) for k in path["kinds"]}
        short = sorted(f"{index}:{kind}" for index, layer in path["layers"].items() for kind in path["kinds"]
                       if not layer[kind].get("reached_horizon", True))
        report.update(path_file="path.json", entered_fraction=entered, stopped_short_of_horizon=short,
                      seconds={"search": path["search_seconds"], "materialize": round(time.perf_counter() - started, 3)})
        return report
