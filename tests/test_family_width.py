"""Width pruning on families whose maps the structural probe finds and whose head layout a small
adapter states: Falcon's three fused q/k/v layouts, BLOOM (channels only: ALiBi), CodeGen's
model-parallel blocks. Cutting units out must compute what zeroing their share of the output map
does, and a pruned model must reload with plain transformers to identical logits."""

from __future__ import annotations

import pytest
import torch

IDS = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(5))
FAMILIES = [
    ("falcon", {"multi_query": True, "new_decoder_architecture": False}),  # Falcon-7B: one shared key/value head
    ("falcon", {"multi_query": False, "new_decoder_architecture": False}),  # per head [q, k, v]
    ("falcon", {"new_decoder_architecture": True, "num_kv_heads": 2}),  # Falcon-40B: per KV group [q.., k, v]
    ("bloom", {}),
    ("codegen", {"n_head": 8, "num_attention_heads": 8}),  # two heads in each of the four model-parallel blocks
    ("gemma4_text", {}),  # heads 256 wide in sliding layers, 512 in the full-attention one (per-layer head_dim)
]


def _pair(model_type, extra, tokenizer):
    from prunekit.zoo import tiny_loaded

    first = tiny_loaded(model_type, tokenizer, **extra)
    second = tiny_loaded(model_type, tokenizer, **extra)
    second.model.load_state_dict(first.model.state_dict())
    return first, second


def _logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids).logits


def zero_and_cut(zeroed, shrunk, removed: dict[str, list[int]], ids=IDS, layer: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """In ``layer``, zero the removed units' share of the map reading them (o / down) in ``zeroed`` and
    cut the units out of ``shrunk`` (the same weights); the logits of both, cut first."""
    from prunekit.surgery.shrink import remove_units

    with torch.no_grad():
        for kind, group in zeroed.adapter.unit_groups(layer).items():
            consumer = next(m for m in group.members if m.axis == 1)
            weight = consumer.view.weight.clone()
            weight[:, consumer.index[removed[kind]].reshape(-1)] = 0
            consumer.view.set_weight(weight)
    for kind, group in shrunk.adapter.unit_groups(layer).items():
        remove_units(shrunk.adapter, group, removed[kind])
    return _logits(shrunk.model, ids), _logits(zeroed.model, ids)


@pytest.mark.parametrize("model_type,extra", FAMILIES, ids=lambda v: v if isinstance(v, str) else "-".join(
    f"{k}={w}" for k, w in v.items()))
def test_cutting_units_equals_zeroing_them(model_type, extra, tokenizer):
    zeroed, shrunk = _pair(model_type, extra, tokenizer)
    groups = zeroed.adapter.unit_groups(0)
    assert ("heads" in groups) == (model_type != "bloom") and "channels" in groups
    removed = {"channels": [0, 5, 17]}
    if "heads" in groups:
        heads = groups["heads"]
        removed["heads"] = [b * heads.block for b in range(heads.partition)]  # the first unit of every block
    cut, reference = zero_and_cut(zeroed, shrunk, removed)
    torch.testing.assert_close(cut, reference, rtol=1e-5, atol=1e-5)
    before, after = zeroed.adapter.layer_shape(0), shrunk.adapter.layer_shape(0)
    assert after["channels"] == before["channels"] - 3
    if "heads" in removed:
        per_unit = before["heads"] // groups["heads"].units
        assert after["heads"] == before["heads"] - per_unit * len(removed["heads"])


@pytest.mark.parametrize("model_type,extra", FAMILIES, ids=lambda v: v if isinstance(v, str) else "-".join(
    f"{k}={w}" for k, w in v.items()))
def test_llm_pruner_output_reloads_with_identical_logits(model_type, extra, tokenizer, data_root, tmp_path):
    import prunekit
    from transformers import AutoModelForCausalLM

    from prunekit.recipe import CalibrationSettings

    lm, _ = _pair(model_type, extra, tokenizer)
    record = prunekit.prune(lm, "llm-pruner", ratio=0.5, layer_range="0:1.0", progress=False, data_root=data_root,
                            calibration=CalibrationSettings(corpus="c4", nsamples=2, seqlen=16))
    assert record["width"]["units"] == (["channels"] if model_type == "bloom" else ["heads", "channels"])
    assert record["width"]["params_after"] < record["width"]["params_before"]
    prunekit.save(lm, tmp_path / "out", record=prunekit.build_record(lm, [record]), report=False)
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "out", trust_remote_code=True).eval()
    assert torch.equal(_logits(again), _logits(lm.model))


def test_gemma4_full_attention_heads_are_their_own_width(tokenizer):
    """Gemma-4's full-attention layer has 512-wide heads where the sliding ones have 256: a head cut
    there takes that layer's own width, and equals zeroing the head's o_proj columns."""
    zeroed, shrunk = _pair("gemma4_text", {}, tokenizer)
    full = zeroed.model.config.layer_types.index("full_attention")
    assert zeroed.adapter.layer_head_dim(full) == 2 * zeroed.adapter.layer_head_dim(0)
    heads = zeroed.adapter.unit_groups(full)["heads"]
    assert heads.members[0].index.shape[1] % zeroed.adapter.layer_head_dim(full) == 0
    cut, reference = zero_and_cut(zeroed, shrunk, {"heads": [1], "channels": [3]}, layer=full)
    torch.testing.assert_close(cut, reference, rtol=1e-5, atol=1e-5)
