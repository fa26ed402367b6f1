"""--round-to: width steps leave MLP widths a later N:M step can use; recipes set it themselves."""

import pytest
import torch
from transformers import AutoModelForCausalLM

import prunekit
from prunekit.errors import ArgumentError
from prunekit.recipe import CalibrationSettings, parse_recipe
from prunekit.runner import run_recipe
from prunekit.sparsity import check_nm

FAST = CalibrationSettings(corpus="c4", nsamples=2, seqlen=16)


def _channels(lm):
    return [lm.adapter.layer_shape(i)["channels"] for i in range(lm.adapter.num_layers())]


@pytest.mark.parametrize("global_ranking", [False, True])
def test_llm_pruner_keeps_channels_a_multiple_of_n(tiny_model_dir, tmp_path, data_root, global_ranking):
    plain = prunekit.load(tiny_model_dir("llama"))
    prunekit.prune(plain, "llm-pruner", ratio=0.3, layer_range="0:2", importance="l2", global_ranking=global_ranking,
                   progress=False)
    rounded = prunekit.load(tiny_model_dir("llama"))
    step = prunekit.prune(rounded, "llm-pruner", ratio=0.3, layer_range="0:2", importance="l2", round_to=8,
                          global_ranking=global_ranking, progress=False)
    assert any(c % 8 for c in _channels(plain))  # 128 * 0.7 = 89.6: not a multiple of 8 unrounded
    assert all(c % 8 == 0 for c in _channels(rounded))
    assert all(abs(a - b) <= 4 for a, b in zip(_channels(plain), _channels(rounded)))  # the nearest multiple
    out = prunekit.save(rounded, tmp_path / "out", record=prunekit.build_record(rounded, [step]))
    ids = torch.randint(0, 1000, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reloaded = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
        assert torch.allclose(reloaded(input_ids=ids).logits, rounded.model(input_ids=ids).logits, atol=1e-5)


def test_round_to_is_validated(tiny_model_dir):
    lm = prunekit.load(tiny_model_dir("llama"))
    with pytest.raises(ArgumentError, match="--round-to must be at least 1"):
        prunekit.prune(lm, "llm-pruner", ratio=0.3, round_to=0, progress=False)


def test_a_recipe_rounds_a_width_step_for_a_later_pattern(tiny_model_dir, data_root, tmp_path):
    """LLM-Pruner at 0.3 then 2:4 used to fail on a width 4 does not divide; the recipe sets round_to 4."""
    text = ("calibration: {nsamples: 2, seqlen: 16}\nsteps:\n  - method: llm-pruner\n    ratio: 0.3\n"
            "    layer_range: '0:2'\n    importance: l2\n  - method: wanda\n    pattern: '2:4'\n")
    recipe = parse_recipe(text, "r.yaml")
    assert recipe.steps[0].step.options["round_to"] == 4
    explicit = parse_recipe(text.replace("importance: l2\n", "importance: l2\n    round_to: 8\n"), "r.yaml")
    assert explicit.steps[0].step.options["round_to"] == 8  # the recipe's own value stands
    out, record = run_recipe(recipe, str(tiny_model_dir("llama")), tmp_path / "out", data_root=data_root, progress=False)
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    for layer in model.model.layers:
        assert layer.mlp.down_proj.in_features % 4 == 0 and check_nm(layer.mlp.down_proj.weight, 2, 4)


def test_spp_cut_keeps_channels_a_multiple_of_n(tiny_model_dir, data_root):
    lm = prunekit.load(tiny_model_dir("llama"))
    prunekit.prune(lm, "spp", ratio=0.3, layer_range="0:2", lbi_iterations=50, round_to=8, calibration=FAST,
                   progress=False)
    assert all(c % 8 == 0 for c in _channels(lm))
