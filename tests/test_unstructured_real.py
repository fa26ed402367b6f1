"""Wanda / SparseGPT / RIA on the real shared model (fast settings): quality orders as the literature says."""

import pytest
import torch

import prunekit
from prunekit.data import evaluation_windows
from prunekit.eval.perplexity import perplexity
from prunekit.recipe import CalibrationSettings

pytestmark = pytest.mark.real_model

CALIB = CalibrationSettings(corpus="c4", nsamples=8, seqlen=256, seed=0, batch_size=8)


@pytest.fixture(scope="module")
def eval_windows(real_lm, data_root):
    return evaluation_windows(real_lm.tokenizer, "wikitext2", seqlen=512, data_root=data_root, max_windows=2)


@pytest.fixture(scope="module")
def pruned_ppl(real_lm, eval_windows):
    """Perplexity at 50% unstructured of each method, and their per-module reports (pruned once)."""
    from conftest import fresh_copy

    results = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        lm = fresh_copy(real_lm)
        options = {"report_error": True} if method != "magnitude" else {}
        record = prunekit.prune(lm, method, sparsity=0.5, calibration=CALIB, progress=False, **options)
        results[method] = (perplexity(lm.model, eval_windows, progress=False)["ppl"], record)
        del lm
    return results


def test_calibrated_methods_beat_magnitude_at_50(pruned_ppl):
    magnitude = pruned_ppl["magnitude"][0]
    assert pruned_ppl["wanda"][0] < 0.5 * magnitude
    assert pruned_ppl["sparsegpt"][0] < 0.5 * magnitude


def test_sparsegpt_reconstructs_a_layer_better_than_wanda(pruned_ppl):
    """Layer 0 sees identical (dense-model) inputs under both methods, so its errors compare directly."""
    wanda = pruned_ppl["wanda"][1]["layers"][0]["modules"]
    sparsegpt = pruned_ppl["sparsegpt"][1]["layers"][0]["modules"]
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.0.mlp.up_proj"):
        assert sparsegpt[name]["recon_error"] < wanda[name]["recon_error"], name


def test_ria_two_four_with_channel_permutation(real_lm):
    """RIA 2:4 with reallocation keeps more score on down_proj and stays a valid 2:4 in stored order."""
    from conftest import fresh_copy
    from prunekit.sparsity import check_nm

    lm = fresh_copy(real_lm)
    record = prunekit.prune(lm, "ria", pattern="2:4", roles="down", layers="0,15", calibration=CALIB,
                            progress=False, permute=True)
    for index in (0, 15):
        report = record["layers"][[0, 15].index(index)]["modules"][f"model.layers.{index}.mlp.down_proj"]
        assert report["permuted"] and report["kept_score_gain"] > 0
        assert check_nm(lm.adapter.linears(index)[-1].weight, 2, 4)


def test_channel_permutation_preserves_the_function(real_lm, eval_windows):
    from conftest import fresh_copy
    from prunekit.surgery import permute_input_channels

    lm = fresh_copy(real_lm)
    ids = eval_windows.ids[:1, :64]
    views = {v.roles[0]: v for v in lm.adapter.linears(3)}
    perm = torch.randperm(views["down"].in_features, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = lm.model(input_ids=ids).logits
        permute_input_channels(views["down"], [views["gate"], views["up"]], perm)
        after = lm.model(input_ids=ids).logits
    assert not torch.equal(views["down"].weight, real_lm.adapter.linears(3)[-1].weight)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
