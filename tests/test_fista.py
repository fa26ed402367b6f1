"""FISTAPruner: the solver's numerics, the λ search, exact targets, correction modes."""

import importlib.util
import logging

import pytest
import torch

import prunekit
from prunekit.capture.paired import PairedStatistics
from prunekit.errors import ArgumentError
from prunekit.methods.fista import FistaOptions, Problem, fista, refit, solve
from prunekit.recipe import CalibrationSettings
from prunekit.sparsity import SparsityTarget, check_nm

FAST = CalibrationSettings(corpus="c4", nsamples=4, seqlen=32, seed=0, batch_size=2)


def _random_problem(rows=12, cols=20, tokens=200, seed=0, correlated=True):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(tokens, cols, generator=g)
    if correlated:
        X = X @ torch.randn(cols, cols, generator=g) * torch.logspace(0, 1.5, cols)  # outlier-like features
    Xs = X + 0.1 * torch.randn(tokens, cols, generator=g)  # inputs after pruned predecessors
    W = torch.randn(rows, cols, generator=g)
    stats = PairedStatistics(X.t() @ X, Xs.t() @ Xs, X.t() @ Xs, tokens)
    return W, stats, X, Xs


def test_problem_matches_the_definition():
    W, stats, X, Xs = _random_problem()
    problem = Problem.from_statistics(W, stats)
    W_hat = W * (torch.rand(W.shape, generator=torch.Generator().manual_seed(1)) > 0.5)
    direct = ((X @ W.t() - Xs @ W_hat.t()) ** 2).sum() / stats.tokens
    assert problem.smooth(W_hat) == pytest.approx(float(direct), rel=1e-4)
    assert problem.relative_error(W_hat) == pytest.approx(float(direct / ((X @ W.t()) ** 2).sum() * stats.tokens), rel=1e-4)


def test_objective_is_non_increasing_and_converges():
    W, stats, _, _ = _random_problem()
    problem = Problem.from_statistics(W, stats)
    trace: list[float] = []
    lam = 0.05 * float(problem.C.abs().max())
    fista(problem, W, lam, 300, 1e-10, trace=trace)
    for before, after in zip(trace, trace[1:]):
        assert after <= before + 1e-4 * abs(before), (before, after)
    assert trace[-1] < problem.objective(W, lam)


def test_refit_is_least_squares_on_the_support():
    W, stats, _, _ = _random_problem(correlated=False)
    problem = Problem.from_statistics(W, stats)
    keep = torch.rand(W.shape, generator=torch.Generator().manual_seed(2)) > 0.4
    fitted, _ = refit(problem, W * keep, keep, 200, 1e-12)
    assert torch.equal(fitted == 0, ~keep | (fitted == 0))
    for row in range(W.shape[0]):
        s = keep[row]
        exact = torch.linalg.solve(problem.G[s][:, s].double(), problem.C[row, s].double())
        torch.testing.assert_close(fitted[row, s].double(), exact, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("target", [SparsityTarget(sparsity=0.5), SparsityTarget(n=2, m=4)])
def test_solve_hits_target_and_beats_its_warm_start(target):
    W, stats, _, _ = _random_problem(rows=16, cols=32)
    problem = Problem.from_statistics(W, stats)
    new, report = solve(W, stats, target, FistaOptions())
    assert abs(report["sparsity_before_projection"] - 0.5) <= 0.02
    if target.is_nm:
        assert check_nm(new, 2, 4)
    else:
        assert int((new == 0).sum()) == W.numel() // 2  # exact, compared across the matrix
    assert report["objective_final"] <= report["objective_warm_start"]
    assert problem.smooth(new) == pytest.approx(report["objective_final"], rel=1e-5)
    # warm start + every search step, the final solve and the ladder, less those sparser than the target
    assert 1 + FistaOptions().lambda_ladder <= report["candidates"] <= 1 + report["bisection_steps"] + 1 + FistaOptions().lambda_ladder


def test_paper_mode_is_the_published_algorithm():
    """--fista-mode paper: from the warm start, λ bisected to the target, the final solve hard-thresholded
    by magnitude in every row (no re-fit, no other candidate); prunekit's mode is never worse on the
    same problem."""
    from prunekit.methods import available_methods

    W, stats, _, _ = _random_problem(rows=16, cols=32, seed=3)
    target = SparsityTarget(sparsity=0.5)
    new, report = solve(W, stats, target, FistaOptions(fista_mode="paper"))
    assert report["selected"] == "final solve" and report["candidates"] == 1
    assert bool(((new == 0).sum(1) >= 16).all())  # half of every row (more where the L1 solution was sparser)
    _, default = solve(W, stats, target, FistaOptions())
    assert default["objective_final"] <= report["objective_final"] + 1e-9
    available_methods()["fista"].parse_options({"fista_mode": "paper", "warm_start": "sparsegpt"})  # the paper's OPT start
    with pytest.raises(ArgumentError, match="--lambda-ladder, --projection belong to prunekit's mode"):
        available_methods()["fista"].parse_options({"fista_mode": "paper", "projection": "row", "lambda_ladder": 1})


def test_row_projection_keeps_exactly_half_of_every_row():
    W, stats, _, _ = _random_problem(rows=16, cols=32)
    new, _ = solve(W, stats, SparsityTarget(sparsity=0.5), FistaOptions(projection="row"))
    assert bool(((new == 0).sum(1) == 16).all())


def test_selection_never_loses_to_the_warm_start_or_the_searched_lambda():
    """The returned weight is the lowest-error candidate: no worse than the re-fitted warm start
    (ladder and search off but the λ search itself) and no worse than the λ-at-target solution."""
    from prunekit.methods.fista import _candidate, warm_start

    W, stats, _, _ = _random_problem(rows=16, cols=32, seed=3)
    target = SparsityTarget(sparsity=0.5)
    problem = Problem.from_statistics(W, stats)
    options = FistaOptions()
    new, report = solve(W, stats, target, options)
    _, warm_f = _candidate(problem, warm_start("wanda", W, stats, target), target, options)
    at_target, _ = fista(problem, W, report["lambda"], 200, 1e-8)
    _, target_f = _candidate(problem, at_target, target, options)
    assert report["objective_final"] <= warm_f + 1e-9
    assert report["objective_final"] <= target_f * (1 + 1e-3)
    assert report["selected"] in {"warm start", "final solve"} | {f"search step {k}" for k in range(1, 21)} \
        | {f"ladder λ/{2**k}" for k in range(1, 4)}


def test_an_already_sparser_weight_still_keeps_its_warm_start():
    """A weight with more zeros than the target (a pruned model pruned again) has a warm start the
    skip rule for over-sparse candidates would drop; it must still be the baseline to beat."""
    from prunekit.methods.fista import _candidate, warm_start

    W, stats, _, _ = _random_problem(rows=16, cols=32)
    W = W * (W.abs() >= W.abs().flatten().kthvalue(int(0.6 * W.numel())).values)  # 60% zeros
    target = SparsityTarget(sparsity=0.5)
    options = FistaOptions()
    new, report = solve(W, stats, target, options)
    _, warm_f = _candidate(Problem.from_statistics(W, stats), warm_start("wanda", W, stats, target), target, options)
    assert int((new == 0).sum()) == W.numel() // 2
    assert report["objective_final"] <= warm_f + 1e-9


def test_unreached_target_warns_names_the_operator_and_still_projects(caplog):
    """A step budget too small for the tolerance: best λ kept, a warning naming the operator, exact result."""
    W, stats, _, _ = _random_problem(rows=16, cols=32)
    options = FistaOptions(bisection_steps=1, sparsity_tolerance=1e-6)
    with caplog.at_level(logging.WARNING, logger="prunekit.methods.fista"):
        new, report = solve(W, stats, SparsityTarget(sparsity=0.5), options, where="model.layers.7.mlp.up_proj")
    assert report["bisection_converged"] is False and report["bisection_steps"] == 1
    assert "model.layers.7.mlp.up_proj" in caplog.text and "λ search" in caplog.text
    assert int((new == 0).sum()) == W.numel() // 2
    caplog.clear()
    _, report = solve(W, stats, SparsityTarget(sparsity=0.5), FistaOptions())
    assert report["bisection_converged"] is True and not caplog.text


@pytest.mark.parametrize("correction", ["intra", "none", "intra+inter"])
def test_exact_targets_on_a_tiny_model(tiny_model_dir, correction):
    for target in ({"sparsity": 0.5}, {"pattern": "2:4"}):
        lm = prunekit.load(tiny_model_dir("llama"))
        record = prunekit.prune(lm, "fista", calibration=FAST, progress=False, correction=correction, **target)
        for index in range(lm.adapter.num_layers()):
            for view in lm.adapter.linears(index):
                if "pattern" in target:
                    assert check_nm(view.weight, 2, 4), view.name
                else:
                    assert int((view.weight == 0).sum()) >= view.weight.numel() // 2, view.name
        module = record["layers"][0]["modules"]["model.layers.0.self_attn.q_proj"]
        assert {"lambda", "bisection_steps", "fista_iterations", "objective_warm_start", "objective_final",
                "recon_error", "seconds", "selected", "selected_lambda", "candidates"} <= set(module)


def test_no_correction_sees_only_dense_inputs(tiny_model_dir):
    """With correction none, G = K = D; with intra the o-projection's inputs differ once q/k/v are pruned."""
    from prunekit.capture import paired

    seen = {}
    original = paired.paired_statistics

    def spy(dense_layer, layer, view, dense, star, batch_size):
        stats = original(dense_layer, layer, view, dense, star, batch_size)
        seen[(star is None, view.local_name)] = stats
        return stats

    paired.paired_statistics = spy
    try:
        for correction in ("none", "intra"):
            lm = prunekit.load(tiny_model_dir("llama"))
            prunekit.prune(lm, "fista", sparsity=0.5, layers="0", calibration=FAST, progress=False, correction=correction)
    finally:
        paired.paired_statistics = original
    none = seen[(True, "self_attn.o_proj")]
    assert none.gram is none.dense_gram and none.cross is none.dense_gram
    intra = seen[(False, "self_attn.o_proj")]
    assert not torch.allclose(intra.gram, intra.dense_gram)
    q = seen[(False, "self_attn.q_proj")]  # first operator: no pruned predecessor, X* = X
    torch.testing.assert_close(q.gram, q.dense_gram)


def test_bad_fista_options(tiny_model_dir):
    lm = prunekit.load(tiny_model_dir("llama"))
    with pytest.raises(ArgumentError, match="--fista-iterations"):
        prunekit.prune(lm, "fista", sparsity=0.5, fista_iterations=0, progress=False)
    with pytest.raises(ArgumentError, match="--correction"):
        prunekit.prune(lm, "fista", sparsity=0.5, correction="inter", progress=False)


def _real_up_projection(real_lm, data_root, nsamples: int, seqlen: int):
    """Weight, statistics (dense inputs) and view of the real model's layer-3 up-projection."""
    from prunekit.capture.layerwise import dense_layer_inputs
    from prunekit.capture.paired import paired_statistics
    from prunekit.data import calibration_windows

    windows = calibration_windows(real_lm.tokenizer, "c4", nsamples=nsamples, seqlen=seqlen, seed=0, data_root=data_root)
    inputs = dense_layer_inputs(real_lm, windows.ids, 3, 4)
    layer = real_lm.adapter.decoder_layers()[3]
    view = next(v for v in real_lm.adapter.linears(3) if v.roles == ("up",))
    stats = paired_statistics(layer, layer, view, inputs, inputs, 4)
    return view.weight.detach().float(), stats, view


@pytest.mark.real_model
def test_objective_non_increasing_on_a_real_layer(real_lm, data_root):
    """FISTA on the real model's layer-3 up-projection statistics: the objective never rises (tolerance 1e-4)."""
    weight, stats, _ = _real_up_projection(real_lm, data_root, 4, 128)
    problem = Problem.from_statistics(weight, stats)
    trace: list[float] = []
    fista(problem, weight, 0.002, 60, 1e-12, trace=trace)
    for before, after in zip(trace, trace[1:]):
        assert after <= before + 1e-4 * abs(before), (before, after)
    assert trace[-1] < trace[0]
    assert float((problem.from_scaled(problem.to_scaled(weight)) - weight).abs().max()) < 1e-5


def test_parallel_workers_give_identical_weights(tiny_model_dir):
    """Serial, two spawned processes, and two Ray tasks (a local Ray runtime) agree exactly."""
    weights = {}
    runs = [(1, "process"), (2, "process")]
    if importlib.util.find_spec("ray") is not None:
        runs.append((2, "ray"))
    for workers, executor in runs:
        lm = prunekit.load(tiny_model_dir("llama"))
        prunekit.prune(lm, "fista", sparsity=0.5, calibration=FAST, progress=False, workers=workers, executor=executor,
                       layers="1", fista_iterations=10, fista_final_iterations=20, bisection_steps=8, refit_iterations=20)
        weights[workers, executor] = {v.name: v.weight.clone() for v in lm.adapter.linears(1)}
    for run in runs[1:]:
        for name, weight in weights[1, "process"].items():
            assert torch.equal(weight, weights[run][name]), (run, name)
    with pytest.raises(ArgumentError, match="--workers"):
        prunekit.prune(lm, "fista", sparsity=0.5, workers=2, correction="intra+inter", progress=False)


@pytest.mark.real_model
@pytest.mark.parametrize("target", [SparsityTarget(sparsity=0.5), SparsityTarget(n=2, m=4)], ids=["50%", "2:4"])
def test_fista_reconstructs_a_real_layer_better_than_sparsegpt(real_lm, data_root, target):
    """The paper's ordering on one real operator (layer 3 up-projection, the same dense statistics for
    both): FISTA's layer-wise error below SparseGPT's, and below its own Wanda warm start re-fitted
    (so the FISTA iterates, not only the least-squares re-fit, earn the gain)."""
    from prunekit.methods.fista import _candidate, warm_start
    from prunekit.methods.sparsegpt import sparsegpt_prune

    weight, stats, view = _real_up_projection(real_lm, data_root, 8, 256)
    problem = Problem.from_statistics(weight, stats)
    sparsegpt, _, _ = sparsegpt_prune(weight, stats.gram, stats.tokens, fraction=None if target.is_nm else 0.5,
                                      n=target.n, m=target.m, blocksize=128, percdamp=0.01, where=view.name)
    new, report = solve(weight, stats, target, FistaOptions())
    _, wanda_refit = _candidate(problem, warm_start("wanda", weight, stats, target), target, FistaOptions())
    assert abs((new == 0).float().mean().item() - 0.5) < 1e-3
    assert report["recon_error"] < problem.relative_error(sparsegpt)
    assert report["objective_final"] < wanda_refit
