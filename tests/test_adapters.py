"""Every adapter on a tiny random model of its family: roles, views, the layer-wise pass, save/reload."""

import pytest
import torch
from transformers import AutoModelForCausalLM

import prunekit
from prunekit.capture import layerwise
from prunekit.sparsity import check_nm, prune_count

from conftest import TINY_FAMILIES

FAMILY_OF = {"llama": "llama", "mistral": "llama", "qwen2": "llama", "opt": "opt", "gpt_neox": "gpt_neox",
             "gpt2": "gpt2", "gpt_neo": "gpt_neo"}


@pytest.fixture(params=TINY_FAMILIES)
def tiny(request, tiny_model_dir):
    return prunekit.load(tiny_model_dir(request.param)), request.param


def test_views_match_modules(tiny):
    lm, family = tiny
    adapter = lm.adapter
    assert adapter.family == FAMILY_OF[family]
    assert adapter.num_layers() == 2
    seen_roles = set()
    for view in adapter.linears(0):
        assert view.name.startswith(adapter.layer_prefix(0))
        assert view.weight.shape == (view.out_features, view.in_features)
        module_weight = view.module.weight
        assert module_weight.numel() == view.out_features * view.in_features
        assert view.weight.data_ptr() == module_weight.data_ptr()  # a view, not a copy
        if len(view.roles) > 1:  # fused: role rows partition the output rows
            rows = torch.cat([view.role_rows[r] for r in view.roles])
            assert torch.equal(rows.sort().values, torch.arange(view.out_features))
        seen_roles.update(view.roles)
    assert {"q", "k", "v", "o"} <= seen_roles
    assert {"gate", "up", "down"} <= seen_roles or {"fc1", "fc2"} <= seen_roles
    assert set(adapter.norms(0)) == set(adapter.norm_names())


def test_layerwise_statistics_equal_a_full_forward(tiny):
    """The engine's layer inputs (caught kwargs, propagated outputs) equal the real model's."""
    lm, _ = tiny
    ids = torch.randint(0, 1000, (3, 24), generator=torch.Generator().manual_seed(0))
    reference: dict[str, torch.Tensor] = {}
    handles = []
    for index in range(lm.adapter.num_layers()):
        for view in lm.adapter.linears(index):
            def hook(_m, args, _o, name=view.name):
                x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
                reference[name] = reference.get(name, 0) + x.t() @ x
            handles.append(view.module.register_forward_hook(hook))
    with torch.no_grad():
        lm.model(input_ids=ids)
    for handle in handles:
        handle.remove()

    def check(ctx):
        for view in ctx.views:
            gram = ctx.stats_for(view).gram.double()
            assert ctx.stats_for(view).tokens == ids.numel()
            torch.testing.assert_close(gram, reference[view.name], rtol=1e-4, atol=1e-3)
        return None

    layerwise(lm, check, calib_ids=ids, needs=frozenset({"gram", "sqnorm"}), batch_size=2, progress=False)


@pytest.mark.parametrize("target", [{"sparsity": 0.5}, {"pattern": "2:4"}, {"sparsity": 0.3, "group": "row"}])
def test_magnitude_exact_and_reload_identical(tiny, target, tmp_path):
    lm, _ = tiny
    result = prunekit.prune(lm, "magnitude", progress=False, **target)
    zeros = total = 0
    for index in range(lm.adapter.num_layers()):
        for view in lm.adapter.linears(index):
            weight = view.weight
            if "pattern" in target:
                assert check_nm(weight, 2, 4)
                assert int((weight == 0).sum()) == weight.numel() // 2
            elif target.get("group") == "row":
                assert ((weight == 0).sum(1) == prune_count(weight.shape[1], 0.3)).all()
            else:
                assert int((weight == 0).sum()) == prune_count(weight.numel(), 0.5)
            zeros += int((weight == 0).sum())
            total += weight.numel()
    assert result["sparsity"]["overall"] == pytest.approx(zeros / total)
    out = prunekit.save(lm, tmp_path / "out", record=prunekit.build_record(lm, [result]))
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, lm.model(input_ids=ids).logits)
