"""Wanda, SparseGPT and RIA: exact sparsity, valid N:M, the numerics, determinism (tiny models)."""

import pytest
import torch

import prunekit
from prunekit.errors import ArgumentError, NumericalError
from prunekit.methods.ria import ria_scores
from prunekit.methods.sparsegpt import inverse_hessian_factor, sparsegpt_prune
from prunekit.methods.wanda import cumulative_variant_mask, wanda_scores
from prunekit.recipe import CalibrationSettings
from prunekit.sparsity import check_nm, prune_count
from prunekit.surgery import reconstruction_error

FAST = CalibrationSettings(corpus="c4", nsamples=4, seqlen=32, seed=0, batch_size=2)


def _weights(lm):
    return {v.name: v.weight.clone() for i in range(lm.adapter.num_layers()) for v in lm.adapter.linears(i)}


@pytest.mark.parametrize("family", ["llama", "opt", "gpt2", "gpt_neox"])
@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "ria"])
def test_exact_sparsity_and_nm(tiny_model_dir, data_root, family, method):
    for target in ({"sparsity": 0.5}, {"pattern": "2:4"}):
        lm = prunekit.load(tiny_model_dir(family))
        record = prunekit.prune(lm, method, calibration=FAST, progress=False, report_error=True, **target)
        for name, weight in _weights(lm).items():
            zeros = int((weight == 0).sum())
            if "pattern" in target:
                assert check_nm(weight, 2, 4), name
            elif method == "wanda":  # per output row
                assert ((weight == 0).sum(1) >= prune_count(weight.shape[1], 0.5)).all(), name
                assert zeros == weight.shape[0] * prune_count(weight.shape[1], 0.5)
            else:  # per matrix (SparseGPT per layer, RIA per matrix)
                assert zeros == prune_count(weight.numel(), 0.5), name
        for report in record["layers"][0]["modules"].values():
            assert 0 <= report["recon_error"] < 1.5 and report["seconds"] >= 0
        assert record["calibration"]["nsamples"] == 4


def test_wanda_scores_and_rows():
    weight = torch.tensor([[1.0, -2.0, 3.0, -4.0], [4.0, 3.0, -2.0, 1.0]])
    sqnorm = torch.tensor([16.0, 1.0, 1.0, 0.25])  # norms 4, 1, 1, 0.5
    scores = wanda_scores(weight, sqnorm)
    assert torch.equal(scores, torch.tensor([[4.0, 2.0, 3.0, 2.0], [16.0, 3.0, 2.0, 0.5]]))
    variant = cumulative_variant_mask(torch.rand(64, 128, generator=torch.Generator().manual_seed(0)), 0.5)
    assert abs(float(variant.float().mean()) - 0.5) <= 1e-3


def test_ria_scores():
    weight = torch.tensor([[1.0, 3.0], [1.0, 1.0]])
    scores = ria_scores(weight, torch.tensor([4.0, 1.0]), power=0.5)
    # (1/4 + 1/2)·√2, (3/4 + 3/4)·1, (1/2 + 1/2)·√2, (1/2 + 1/4)·1
    expected = torch.tensor([[0.75 * 2**0.5, 1.5], [2**0.5, 0.75]])
    torch.testing.assert_close(scores, expected)


def test_sparsegpt_beats_magnitude_style_masking_on_reconstruction():
    """On correlated inputs the second-order update reconstructs far better than zeroing alone."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 512, generator=g)
    X = torch.randn(64, 64, generator=g) @ X  # correlated features
    W = torch.randn(32, 64, generator=g)
    gram = X @ X.t()
    new, mask, _ = sparsegpt_prune(W, gram, 512, fraction=0.5, n=None, m=None, blocksize=16, percdamp=0.01, where="t")
    assert int(mask.sum()) == W.numel() // 2 and bool((new[mask] == 0).all())
    masked_only = W.masked_fill(mask, 0)
    # the exact least-squares refit on the same support is the optimum SparseGPT approximates
    G = gram.double()
    refit = torch.zeros_like(W, dtype=torch.float64)
    for r in range(W.shape[0]):
        keep = ~mask[r]
        refit[r, keep] = torch.linalg.solve(G[keep][:, keep], G[keep] @ W[r].double())
    optimum = reconstruction_error(W, refit.float(), gram)
    ours = reconstruction_error(W, new, gram)
    assert optimum <= ours < 0.7 * reconstruction_error(W, masked_only, gram)
    new24, mask24, _ = sparsegpt_prune(W, gram, 512, fraction=None, n=2, m=4, blocksize=16, percdamp=0.01, where="t")
    assert check_nm(new24, 2, 4)


def test_reconstruction_error_formula():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(8, 100, generator=g)
    W = torch.randn(5, 8, generator=g)
    W2 = W.clone()
    W2[:, :3] = 0
    direct = float(((W @ X - W2 @ X) ** 2).sum() / ((W @ X) ** 2).sum())
    assert reconstruction_error(W, W2, X @ X.t()) == pytest.approx(direct, rel=1e-6)


def test_hessian_damping_retry_and_failure():
    singular = torch.zeros(4, 4, dtype=torch.float64)
    singular[0, 0] = 1.0
    upper, damp = inverse_hessian_factor(singular, 0.0, "layer 3 q_proj")
    assert damp > 0 and torch.isfinite(upper).all()
    bad = torch.eye(3)
    bad[1, 1] = float("nan")
    with pytest.raises(NumericalError, match="layer 3 q_proj.*NaN"):
        inverse_hessian_factor(bad, 0.01, "layer 3 q_proj")
    negative = -torch.eye(3, dtype=torch.float64)
    with pytest.raises(NumericalError, match="not positive definite"):
        inverse_hessian_factor(negative, 0.01, "layer 0 k_proj")


def test_same_seed_same_masks(tiny_model_dir, data_root):
    masks = []
    for _ in range(2):
        lm = prunekit.load(tiny_model_dir("qwen2"))
        prunekit.prune(lm, "sparsegpt", sparsity=0.5, calibration=FAST, progress=False)
        masks.append({k: v == 0 for k, v in _weights(lm).items()})
    assert all(torch.equal(masks[0][k], masks[1][k]) for k in masks[0])


def test_method_option_validation(tiny_model_dir):
    lm = prunekit.load(tiny_model_dir("llama"))
    with pytest.raises(ArgumentError, match="has no option blocksize"):
        prunekit.prune(lm, "wanda", sparsity=0.5, blocksize=64)
    with pytest.raises(ArgumentError, match="--precision must be one of"):
        prunekit.prune(lm, "sparsegpt", sparsity=0.5, precision="float16")
    with pytest.raises(ArgumentError, match="multiple of M"):
        prunekit.prune(lm, "sparsegpt", pattern="2:4", blocksize=6, calibration=FAST, progress=False)


def test_true_sequential_calibrates_on_pruned_predecessors(tiny_model_dir, data_root):
    """With --true-sequential, o_proj's statistics come from the layer whose q/k/v are already pruned."""
    from prunekit.capture import layerwise
    from prunekit.data import calibration_windows
    from prunekit.methods import get_method
    from prunekit.sparsity import SparsityTarget

    lm = prunekit.load(tiny_model_dir("llama"))
    ids = calibration_windows(lm.tokenizer, "c4", nsamples=4, seqlen=32, seed=0, data_root=data_root).ids
    method_cls = get_method("sparsegpt")
    pruner = method_cls(SparsityTarget(sparsity=0.5), method_cls.parse_options({"true_sequential": True}))
    seen = {}

    def spy(ctx):
        reports = pruner.prune_layer(ctx)
        seen[ctx.index] = {g: s.gram.clone() for g, s in ctx.stats.items()}
        return reports

    layerwise(lm, spy, calib_ids=ids, needs=pruner.needs, collect_upfront=False, layers=[0], progress=False)
    # recompute o_proj's input statistics from the final (pruned) layer 0: true-sequential saw exactly those
    dense = prunekit.load(tiny_model_dir("llama"))
    reference = {}

    def grab(ctx):
        reference.update({g: s.gram.clone() for g, s in ctx.stats.items()})

    pruned_q = {v.local_name: v.weight.clone() for v in lm.adapter.linears(0) if v.input_group == "attn_in"}
    for view in dense.adapter.linears(0):
        if view.local_name in pruned_q:
            view.set_weight(pruned_q[view.local_name])
    layerwise(dense, grab, calib_ids=ids, needs=frozenset({"gram"}), layers=[0], progress=False)
    torch.testing.assert_close(seen[0]["attn_out"], reference["attn_out"], rtol=1e-4, atol=1e-4)
    for view in lm.adapter.linears(0):
        assert int((view.weight == 0).sum()) == prune_count(view.weight.numel(), 0.5)


@pytest.mark.parametrize("family", ["opt", "gpt2", "gpt_neox"])
def test_ria_permutation_keeps_function_with_biases(tiny_model_dir, family):
    """Permuting fc1 rows + biases (Conv1D too) and fc2 columns leaves the logits unchanged."""
    from prunekit.surgery import permute_input_channels

    lm = prunekit.load(tiny_model_dir(family))
    ids = torch.randint(0, 1000, (1, 16), generator=torch.Generator().manual_seed(0))
    consumer = lm.adapter.linears(0)[-1]
    producers = lm.adapter.producers_of(0, consumer.input_group)
    with torch.no_grad():
        for producer in producers:
            if getattr(producer.module, "bias", None) is not None:
                producer.module.bias.normal_()
        before = lm.model(input_ids=ids).logits
        permute_input_channels(consumer, producers, torch.randperm(consumer.in_features))
        torch.testing.assert_close(lm.model(input_ids=ids).logits, before, rtol=1e-4, atol=1e-5)


def test_reallocation_order_is_a_permutation():
    from prunekit.methods.ria import kept_score, reallocation_order

    scores = torch.rand(16, 32, generator=torch.Generator().manual_seed(0)) ** 4
    order = reallocation_order(scores, 4)
    assert torch.equal(order.sort().values, torch.arange(32))
    assert kept_score(scores[:, order], 2, 4) >= 0.9 * kept_score(scores, 2, 4)


def test_dense_input_layers_run_in_parallel_with_identical_weights(tiny_model_dir):
    """Wanda on dense inputs: one worker and two spawned workers give the same weights; layer 1's
    masks differ from the sequential run (its inputs do); magnitude is data-free either way."""
    def weights(method, **options):
        lm = prunekit.load(tiny_model_dir("llama"))
        record = prunekit.prune(lm, method, sparsity=0.5, calibration=FAST, progress=False, **options)
        assert record["sparsity"]["overall"] == pytest.approx(0.5, abs=1e-3)
        return {v.name: v.weight.clone() for i in range(2) for v in lm.adapter.linears(i)}

    serial = weights("wanda", inputs="dense")
    parallel = weights("wanda", inputs="dense", workers=2)
    assert all(torch.equal(serial[name], parallel[name]) for name in serial)
    sequential = weights("wanda")
    assert all(torch.equal(serial[n], sequential[n]) for n in serial if ".layers.0." in n)
    assert any(not torch.equal(serial[n], sequential[n]) for n in serial if ".layers.1." in n)
    magnitude = weights("magnitude")
    assert all(torch.equal(magnitude[n], w) for n, w in weights("magnitude", inputs="dense", workers=2).items())
    with pytest.raises(ArgumentError, match="--inputs dense"):
        prunekit.prune(prunekit.load(tiny_model_dir("llama")), "wanda", sparsity=0.5, workers=2, progress=False)
