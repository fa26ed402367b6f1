"""LLM-Pruner and LoRA recovery on the real shared model (fast settings)."""

import pytest

import prunekit
from prunekit.data import evaluation_windows
from prunekit.eval.perplexity import perplexity
from prunekit.recipe import CalibrationSettings
from prunekit.recovery import LoraSettings
from prunekit.sparsity import prune_count

from conftest import fresh_copy

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def eval_windows(real_lm, data_root):
    return evaluation_windows(real_lm.tokenizer, "wikitext2", seqlen=512, data_root=data_root, max_windows=2)


def test_taylor_importance_beats_random_at_20_percent(real_lm, eval_windows):
    ppl = {}
    for importance in ("element1", "random"):
        lm = fresh_copy(real_lm)
        step = prunekit.prune(lm, "llm-pruner", param_ratio=0.2, importance=importance, progress=False)
        assert abs(step["width"]["params_removed_fraction"] - 0.2) < 0.01
        ppl[importance] = perplexity(lm.model, eval_windows, progress=False)["ppl"]
    assert ppl["element1"] < 0.75 * ppl["random"], ppl


def test_wanda_sparsity_survives_lora_merge(real_lm):
    lm = fresh_copy(real_lm)
    prunekit.prune(lm, "wanda", sparsity=0.5, calibration=CalibrationSettings(nsamples=4, seqlen=128), progress=False)
    step = prunekit.recover(lm, LoraSettings(steps=2, batch_size=1, seqlen=64, lr=1e-3), progress=False)
    assert step["recovery"]["masked_modules"] == 30 * 7
    for index in (0, 29):
        for view in lm.adapter.linears(index):
            per_row = (view.weight == 0).sum(dim=1)
            assert bool((per_row >= prune_count(view.in_features, 0.5)).all()), view.name
    assert prunekit.check_sparsity(lm, ())["sparsity"]["overall"] == pytest.approx(step["recovery"]["sparsity_before"])
