"""Mixture-of-experts: fused expert parameters pruned expert by expert, and expert pruning.

Tiny random MoE models (4 experts, top-2) from transformers' own config classes; the structural
adapter finds their experts from one probe forward.
"""

from __future__ import annotations

import json

import pytest
import torch

from test_cli import only_error_line, run_cli

TOKENIZER_FREE_IDS = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(3))


def _loaded(model_type: str, tokenizer, **extra):
    from prunekit.zoo import tiny_loaded

    return tiny_loaded(model_type, tokenizer, **extra)


def _calibration():
    from prunekit.recipe import CalibrationSettings

    return CalibrationSettings(corpus="c4", nsamples=4, seqlen=32)


def _reloaded_logits_match(lm, tmp_path):
    import prunekit
    from transformers import AutoModelForCausalLM

    prunekit.save(lm, tmp_path / "out", record={"steps": []}, overwrite=True, report=False)
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        return torch.equal(again(TOKENIZER_FREE_IDS).logits, lm.model(TOKENIZER_FREE_IDS).logits)


@pytest.mark.parametrize("model_type", ["mixtral", "gpt_oss", "qwen2_moe"])
def test_every_experts_matrix_is_pruned_from_its_own_tokens_and_reloads(model_type, tokenizer, data_root, tmp_path):
    import prunekit

    lm = _loaded(model_type, tokenizer)
    experts_module = next(m for n, m in lm.model.named_modules() if n.endswith("layers.0.mlp.experts"))
    record = prunekit.prune(lm, "wanda", sparsity=0.5, calibration=_calibration(), data_root=data_root, progress=False)
    pruned = record["sparsity"]["layers"]
    expert_maps = [name for name in pruned if ".experts." in name]
    assert len(expert_maps) == 3 * 4 * 2  # layers x experts x (gate_up, down)
    assert all(abs(pruned[name] - 0.5) < 1e-9 for name in expert_maps)
    for name, parameter in experts_module.named_parameters(recurse=False):
        if parameter.dim() == 3:  # every expert's own slice holds exactly half zeros
            zeros = (parameter == 0).flatten(1).float().mean(1)
            assert torch.allclose(zeros, torch.full_like(zeros, 0.5)), name
    assert not any("router" in name or name.endswith(".gate") for name in pruned)  # routers are never pruned
    assert _reloaded_logits_match(lm, tmp_path)


def test_expert_statistics_are_the_routed_tokens_scaled_by_router_weight(tokenizer):
    """The rows expert e's gate_up reads are exactly the tokens routed to it, times their router weight."""
    from prunekit.capture.statistics import collect_statistics

    lm = _loaded("mixtral", tokenizer)
    layer = lm.adapter.decoder_layers()[0]
    views = [v for v in lm.adapter.linears(0) if v.expert is not None and "gate_up" in v.local_name]
    block = layer.mlp
    caught = {}
    handle = block.register_forward_pre_hook(lambda _m, args: caught.setdefault("x", args[0].detach().clone()))
    hidden = torch.randn(1, 10, 64, generator=torch.Generator().manual_seed(0))
    with collect_statistics(views, frozenset({"sqnorm", "gram"})) as stats, torch.no_grad():
        block(hidden)
    handle.remove()
    x = caught["x"].reshape(-1, 64)
    with torch.no_grad():
        router_logits = torch.nn.functional.linear(x, block.gate.weight)
        top_w, top_i = torch.topk(torch.softmax(router_logits.float(), -1), 2, dim=-1)
        top_w = top_w / top_w.sum(-1, keepdim=True)  # Mixtral renormalises the top-k weights
    routed_total = 0
    for view in views:
        chosen = (top_i == view.expert)
        weight = (top_w * chosen).sum(-1)
        rows = x[chosen.any(-1)] * weight[chosen.any(-1), None]
        entry = stats[view.input_group]
        assert entry.tokens == rows.shape[0]
        torch.testing.assert_close(entry.gram, rows.t() @ rows, rtol=1e-4, atol=1e-5)
        routed_total += entry.tokens
    assert routed_total == x.shape[0] * 2  # each token goes to its top-2 experts


def test_an_expert_no_token_reaches_is_pruned_by_magnitude_and_reported(tokenizer, data_root):
    import prunekit

    lm = _loaded("gpt_oss", tokenizer)
    for layer in lm.adapter.decoder_layers():
        with torch.no_grad():
            layer.mlp.router.bias[3] = -1e4  # expert 3 never makes anyone's top-2
    record = prunekit.prune(lm, "sparsegpt", sparsity=0.5, calibration=_calibration(), data_root=data_root,
                            progress=False)
    reports = {name: report for layer in record["layers"] for name, report in layer["modules"].items()}
    assert all(report["sparsity"] == 0.5 for report in reports.values())
    fallbacks = sorted(name for name, report in reports.items() if "fallback" in report)
    assert fallbacks == sorted(f"model.layers.{i}.mlp.experts.{p}.3" for i in range(3) for p in ("gate_up_proj", "down_proj"))


@pytest.mark.parametrize("criterion", ["reap", "frequency", "weight"])
def test_expert_pruning_halves_the_experts_and_reloads_identically(criterion, tokenizer, data_root, tmp_path):
    import prunekit

    lm = _loaded("qwen3_moe", tokenizer)
    record = prunekit.prune(lm, "expert-prune", remove_fraction=0.5, criterion=criterion, calibration=_calibration(),
                            data_root=data_root, progress=False)
    experts = record["experts"]
    assert (experts["experts_before"], experts["experts_after"]) == (4, 2)
    assert lm.model.config.num_experts == 2 and experts["params_after"] < experts["params_before"]
    for layer in experts["layers"]:
        assert len(layer["removed"]) == 2 and len(layer["scores"]) == 4
        if criterion == "reap":  # the removed experts are the two lowest-saliency ones
            kept = [s for e, s in enumerate(layer["scores"]) if e not in layer["removed"]]
            assert max(layer["scores"][e] for e in layer["removed"]) <= min(kept)
    assert _reloaded_logits_match(lm, tmp_path)


def test_expert_pruning_bad_inputs_are_one_line_before_loading(tiny_model_dir, tmp_path, capsys):
    from prunekit.models.tiny import tiny_model

    moe = tmp_path / "moe"
    tiny_model("qwen3_moe").save_pretrained(moe)
    cases = [(moe, ["--remove-fraction", "0.75"], "leaves 1 of 4 experts per layer, fewer than the 2"),
             (tiny_model_dir("llama"), ["--remove-fraction", "0.5"], "needs a mixture-of-experts model"),
             (moe, ["--remove-fraction", "0.5", "--sparsity", "0.5"], "--sparsity does not apply")]
    capsys.readouterr()  # the shard-writing bar of the save above
    for model, extra, message in cases:
        out = tmp_path / "never"
        assert run_cli("prune", "--model", model, "--method", "expert-prune", *extra, "--out", out, "--no-progress") != 0
        assert message in only_error_line(capsys)
        assert not out.exists()


def test_expert_pruning_through_the_cli_writes_a_loadable_model(tokenizer, data_root, tmp_path, capsys):
    from prunekit.models.tiny import tiny_model

    moe = tmp_path / "moe"
    tiny_model("olmoe").save_pretrained(moe)
    tokenizer.save_pretrained(moe)
    out = tmp_path / "pruned"
    assert run_cli("prune", "--model", moe, "--method", "expert-prune", "--remove-fraction", "0.25", "--nsamples", "4",
                   "--seqlen", "32", "--data-root", data_root, "--out", out, "--no-progress") == 0
    assert "experts per MoE layer 4 -> 3" in capsys.readouterr().out
    record = json.loads((out / "prunekit.json").read_text())
    assert record["steps"][0]["experts"]["criterion"] == "reap"
    assert json.loads((out / "config.json").read_text())["num_experts"] == 3


def _doge_routing(block, hidden):
    """Doge's CDMoE routing written out from its paper's definition, as the test's independent check:
    per token the top-k of s_x[i] + s_y[j] over the key grid, softmax weights, and each chosen
    expert's contribution |act(down_e . h) * w| * |up_e|."""
    n = hidden.shape[0]
    logits = block.router_gate(hidden).view(2, n, -1)  # the model's own reshape of its 2K outputs
    keys = logits.shape[-1]
    scores = (logits[0][:, :, None] + logits[1][:, None, :]).reshape(n, keys * keys)
    top, experts = scores.topk(block.top_k, dim=-1)
    weights = torch.softmax(top, dim=-1)
    activation = block.act_fn((block.down_embed.weight[experts] @ hidden[:, :, None]).squeeze(-1))
    return experts, (activation * weights).abs() * block.up_embed.weight[experts].norm(dim=-1)


def test_product_key_saliency_is_each_experts_own_contribution(tokenizer):
    from prunekit.models.adapters.product_keys import capture_contributions, product_key_blocks

    lm = _loaded("doge", tokenizer)
    layer = lm.adapter.decoder_layers()[0]
    (path, block), = product_key_blocks(layer, 16).items()
    hidden = torch.randn(1, 10, 64, generator=torch.Generator().manual_seed(0))
    sums = torch.zeros(16, 2, dtype=torch.float64)
    restore = capture_contributions(block, sums)
    with torch.no_grad():
        block.module(hidden)
    restore()
    assert "forward" not in vars(block.module)  # the wrap is gone
    with torch.no_grad():
        experts, contributions = _doge_routing(block.module, hidden.reshape(10, 64))
    expected = torch.zeros(16, 2, dtype=torch.float64)
    expected[:, 0].index_add_(0, experts.reshape(-1), contributions.reshape(-1).double())
    expected[:, 1].index_add_(0, experts.reshape(-1), torch.ones(experts.numel(), dtype=torch.float64))
    assert sums[:, 1].sum() == 10 * block.module.top_k
    torch.testing.assert_close(sums, expected, rtol=1e-5, atol=1e-7)


def test_product_key_pruning_is_the_dense_model_with_those_keys_masked(tokenizer, data_root, tmp_path):
    """Removing sub-keys keeps a square grid, and the pruned model computes what the dense model
    computes when the removed keys can never be chosen (their router scores at -inf)."""
    import copy

    import prunekit

    lm = _loaded("doge", tokenizer)
    dense = copy.deepcopy(lm.model)
    record = prunekit.prune(lm, "expert-prune", remove_fraction=0.5, calibration=_calibration(), data_root=data_root,
                            progress=False)
    experts = record["experts"]
    assert (experts["experts_before"], experts["experts_after"]) == (16, 9)  # a 4x4 grid loses one key: 3x3
    assert lm.model.config.num_experts == 9
    for layer, dense_layer in zip(experts["layers"], dense.model.layers):
        (removed_key,) = layer["removed_keys"]
        assert layer["removed"] == sorted({removed_key * 4 + j for j in range(4)} | {i * 4 + removed_key for i in range(4)})
        gone = torch.tensor([removed_key, 4 + removed_key])
        dense_layer.mlp.router_gate.register_forward_hook(lambda _m, _a, out, gone=gone: out.index_fill(-1, gone,
                                                                                                          float("-inf")))
    with torch.no_grad():
        torch.testing.assert_close(lm.model(TOKENIZER_FREE_IDS).logits, dense(TOKENIZER_FREE_IDS).logits,
                                   rtol=1e-5, atol=1e-5)
    assert _reloaded_logits_match(lm, tmp_path)


def test_product_key_fractions_that_remove_no_key_or_too_many_are_refused():
    from prunekit.errors import ArgumentError
    from prunekit.methods.expert_prune import check_expert_pruning
    from prunekit.models.tiny import tiny_config

    config = tiny_config("doge")  # 16 experts, a 4x4 grid, top-2
    with pytest.raises(ArgumentError, match="removes no sub-key of the 4x4 product-key grid"):
        check_expert_pruning(config, 0.1)
    with pytest.raises(ArgumentError, match="leaves 1 of 16 experts per layer, fewer than the 2"):
        check_expert_pruning(config, 0.9)


# the first layer's dense MLP, where it has one: Qwen2-MoE's shared expert, DeepSeek's leading dense layer
FIRST_LAYER_CHANNELS = {"qwen2_moe": True, "mixtral": False, "olmoe": False, "gpt_oss": False, "deepseek_v3": True}


@pytest.mark.parametrize("model_type", sorted(FIRST_LAYER_CHANNELS))
def test_moe_head_and_shared_expert_cuts_equal_zeroing_them(model_type, tokenizer):
    """Width units of a MoE model's layer — KV groups (with OLMoE's full-width q/k norm entries and
    GPT-OSS's sinks; DeepSeek's latent-attention heads: q_b and kv_b rows, o columns) and, where the
    layer has one, its dense or shared-expert MLP channels — cut out compute what zeroing their share
    of o / down computes; routed experts keep their width."""
    from test_family_width import zero_and_cut

    zeroed, shrunk = _loaded(model_type, tokenizer), _loaded(model_type, tokenizer)
    shrunk.model.load_state_dict(zeroed.model.state_dict())
    groups = zeroed.adapter.unit_groups(0)
    assert ("channels" in groups) == FIRST_LAYER_CHANNELS[model_type]
    cut, reference = zero_and_cut(zeroed, shrunk, {"heads": [1], "channels": [0, 5, 17]}, TOKENIZER_FREE_IDS)
    if model_type == "olmoe":  # its q/k RMSNorms span all heads: fewer heads change the norm's statistic
        assert cut.shape == reference.shape and not torch.equal(cut, reference)
    else:
        torch.testing.assert_close(cut, reference, rtol=1e-5, atol=1e-5)
    shape, before = shrunk.adapter.layer_shape(0), zeroed.adapter.layer_shape(0)
    assert shape["kv_heads"] == before["kv_heads"] - 1
    assert shape["channels"] == before["channels"] - (3 if "channels" in groups else 0)


@pytest.mark.parametrize("model_type,mode", [("mixtral", "stock"), ("qwen2_moe", "per-layer"), ("olmoe", "per-layer"),
                                             ("deepseek_v3", "per-layer")])
def test_llm_pruner_on_moe_reloads_with_identical_logits(model_type, mode, tokenizer, data_root, tmp_path):
    import prunekit
    from transformers import AutoModelForCausalLM

    lm = _loaded(model_type, tokenizer)
    experts_before = {n: tuple(p.shape) for n, p in lm.model.named_parameters() if ".experts." in n}
    record = prunekit.prune(lm, "llm-pruner", ratio=0.5, layer_range="0:1.0", calibration=_calibration(),
                            data_root=data_root, progress=False)
    width = record["width"]
    assert width["config"] == mode
    assert width["units"] == (["heads", "channels"] if model_type in ("qwen2_moe", "deepseek_v3") else ["heads"])
    assert {n: tuple(p.shape) for n, p in lm.model.named_parameters() if ".experts." in n} == experts_before
    prunekit.save(lm, tmp_path / "out", record=prunekit.build_record(lm, [record]), report=False)
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "out", trust_remote_code=mode == "per-layer").eval()
    with torch.no_grad():
        assert torch.equal(again(TOKENIZER_FREE_IDS).logits, lm.model(TOKENIZER_FREE_IDS).logits)


def test_param_ratio_a_moe_cannot_reach_is_one_clear_error(tokenizer, data_root):
    import prunekit
    from prunekit.errors import ArgumentError

    lm = _loaded("mixtral", tokenizer)
    with pytest.raises(ArgumentError, match=r"cannot be reached.*routed experts, whose count expert-prune reduces"):
        prunekit.prune(lm, "llm-pruner", param_ratio=0.25, calibration=_calibration(), data_root=data_root, progress=False)
