"""Every structured (width) method's output reloads with plain ``transformers`` to identical logits,
for every family prunekit prunes and for the GQA layouts that stress head removal: multi-query
attention (one KV head), one query head per KV group, a second width step ranking globally over
layers an earlier step already thinned, and query-head grouping."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

import prunekit
from prunekit.errors import ArgumentError
from prunekit.io.shapes import REMOTE_FILE
from prunekit.recipe import CalibrationSettings

from conftest import TINY_FAMILIES, tiny_config

FAST = CalibrationSettings(nsamples=2, seqlen=16)
IDS = torch.tensor([[1, 5, 9, 200, 3000, 7, 42, 11]])
METHOD_OPTIONS = {"llm-pruner": {"importance": "element1"}, "spp": {"lbi_iterations": 20, "lbi_horizon": 200.0}}


# families whose head removal also slices a per-head tensor beside the maps, or whose MLP has one producer
COMPANION_FAMILIES = ("olmo2", "granite_swa", "arcee")


def _config(name: str):
    """A tiny config by name: a family of conftest, ``qwen3`` (per-head q/k norms), ``llama-mqa``
    (one KV head), ``llama-mha`` (one query head per KV group), or one of :data:`COMPANION_FAMILIES`
    (full-width q/k norms, attention sinks, an ungated MLP) as the architecture zoo builds it."""
    import transformers as tf

    if name in COMPANION_FAMILIES:
        from prunekit.models.tiny import tiny_config as zoo_config

        return zoo_config(name)

    if name == "qwen3":
        return tf.Qwen3Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, head_dim=16, max_position_embeddings=256, vocab_size=49152,
                              tie_word_embeddings=False)
    if name.startswith("llama-"):
        config = tiny_config("llama")
        config.num_key_value_heads = {"llama-mqa": 1, "llama-mha": 4}[name]
        return config
    return tiny_config(name)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, tokenizer):
    made = {}

    def make(name: str):
        if name not in made:
            torch.manual_seed(0)
            path = tmp_path_factory.mktemp(name)
            AutoModelForCausalLM.from_config(_config(name)).save_pretrained(path)
            tokenizer.save_pretrained(path)
            made[name] = path
        return made[name]

    return make


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def _save_and_reload(lm, steps, out) -> None:
    expected = _logits(lm.model)
    prunekit.save(lm, out, record=prunekit.build_record(lm, steps), report=False)
    plain = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=(out / REMOTE_FILE).exists())
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in lm.model.parameters())
    torch.testing.assert_close(_logits(plain), expected, rtol=0, atol=0)


@pytest.mark.parametrize("method", list(METHOD_OPTIONS))
@pytest.mark.parametrize("family", [*TINY_FAMILIES, "qwen3", *COMPANION_FAMILIES])
def test_width_output_reloads_in_every_family(model_dirs, tmp_path, family, method):
    lm = prunekit.load(model_dirs(family))
    before = sum(p.numel() for p in lm.model.parameters())
    step = prunekit.prune(lm, method, ratio=0.5, layer_range="0:2", calibration=FAST, progress=False,
                          **METHOD_OPTIONS[method])
    assert sum(p.numel() for p in lm.model.parameters()) < before
    _save_and_reload(lm, [step], tmp_path / "out")


@pytest.mark.parametrize("layout,grouping", [("llama-mqa", "kv"), ("llama-mqa", "query"), ("llama-mha", "kv"),
                                             ("llama", "query"), ("olmo2", "query"), ("granite_swa", "query")])
@pytest.mark.parametrize("method", list(METHOD_OPTIONS))
def test_gqa_layouts_shrink_and_reload(model_dirs, tmp_path, layout, grouping, method):
    lm = prunekit.load(model_dirs(layout))
    shape = lm.adapter.layer_shape(0)
    if layout == "llama-mqa" and grouping == "kv":  # the one KV group cannot go: a clear error, or channels only
        with pytest.raises(ArgumentError, match="every one of the 1 heads|would lose every unit"):
            prunekit.prune(lm, method, ratio=0.5, layer_range="0:2", calibration=FAST, progress=False,
                           **METHOD_OPTIONS[method])
        step = prunekit.prune(lm, method, ratio=0.5, layer_range="0:2", units="channels", calibration=FAST,
                              progress=False, **METHOD_OPTIONS[method])
        assert lm.adapter.layer_shape(0) == {**shape, "channels": shape["channels"] // 2}
        _save_and_reload(lm, [step], tmp_path / "out")
        return
    step = prunekit.prune(lm, method, ratio=0.5, layer_range="0:2", head_grouping=grouping, calibration=FAST,
                          progress=False, **METHOD_OPTIONS[method])
    after = lm.adapter.layer_shape(0)
    per_group = shape["heads"] // shape["kv_heads"]
    if grouping == "kv" or per_group == 1:  # whole KV groups go
        assert after["heads"] // after["kv_heads"] == per_group and after["kv_heads"] == shape["kv_heads"] // 2
    else:  # query heads go equally from every KV group, which all stay
        assert after["kv_heads"] == shape["kv_heads"] and after["heads"] == shape["heads"] // 2
    _save_and_reload(lm, [step], tmp_path / "out")


def test_global_ranking_after_an_earlier_width_step(model_dirs, tmp_path):
    lm = prunekit.load(model_dirs("llama"))
    first = prunekit.prune(lm, "llm-pruner", ratio=0.25, layers="1", importance="l1", progress=False)
    assert lm.adapter.layer_shape(0)["channels"] == 128 and lm.adapter.layer_shape(1)["channels"] == 96
    second = prunekit.prune(lm, "llm-pruner", ratio=0.25, layer_range="0:2", global_ranking=True,
                            importance="element1", calibration=FAST, progress=False)
    channels = [lm.adapter.layer_shape(i)["channels"] for i in range(2)]
    kv_heads = [lm.adapter.layer_shape(i)["kv_heads"] for i in range(2)]
    assert sum(channels) == 128 + 96 - round(0.25 * (128 + 96))  # one ranking over both layers' 224 channels
    assert sum(kv_heads) == 3 - 1 and min(kv_heads) == 1  # ... and their 3 KV groups; no layer emptied
    _save_and_reload(lm, [first, second], tmp_path / "out")
