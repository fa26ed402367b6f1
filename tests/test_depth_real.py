"""ShortGPT on the real shared model (fast settings): the BI profile and BI removal vs baselines."""

import pytest

import prunekit
from prunekit.api import block_influence
from prunekit.data import evaluation_windows
from prunekit.eval.perplexity import perplexity
from prunekit.recipe import CalibrationSettings

from conftest import fresh_copy

pytestmark = pytest.mark.real_model

CALIB = CalibrationSettings(corpus="pg19", nsamples=8, seqlen=256)


def test_bi_profile_high_at_the_ends(real_lm):
    bi = block_influence(real_lm, CALIB, progress=False)
    order = bi["order"]  # ascending BI
    assert {0, 29} <= set(order[-3:])  # first and last layers are among the most influential
    assert all(2 <= i <= 28 for i in order[:6])  # the least influential are in the middle/deep part


def test_bi_removal_beats_reverse_and_random(real_lm, data_root):
    windows = evaluation_windows(real_lm.tokenizer, "wikitext2", seqlen=512, data_root=data_root, max_windows=2)
    ppl = {}
    for metric in ("bi", "reverse", "random"):
        lm = fresh_copy(real_lm)
        prunekit.prune(lm, "shortgpt", remove_layers=4, metric=metric, calibration=CALIB, progress=False)
        ppl[metric] = perplexity(lm.model, windows, progress=False)["ppl"]
    assert ppl["bi"] < ppl["reverse"] and ppl["bi"] < ppl["random"], ppl
