"""ShortGPT and depth pruning: Block Influence by hooks, removal, config rewrite, reload, bad input."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import prunekit
from prunekit.capture import angular_distances, layer_io_statistics
from prunekit.cli import main
from prunekit.errors import ArgumentError
from prunekit.recipe import CalibrationSettings

from conftest import tiny_config

FAST = CalibrationSettings(nsamples=4, seqlen=32, batch_size=2)


@pytest.fixture(scope="session")
def deep_model_dir(tmp_path_factory, tokenizer):
    """Tiny random models with 6 layers (depth pruning needs something to remove)."""
    made = {}

    def make(family):
        if family not in made:
            config = tiny_config(family)
            key = {"gpt2": "n_layer", "gpt_neo": "num_layers"}.get(family, "num_hidden_layers")
            setattr(config, key, 6)
            if family == "gpt_neo":
                config.attention_types = [[["global", "local"], 3]]
                config.attention_layers = config.expand_attention_types_params(config.attention_types)
            if family == "qwen2":
                config.layer_types = ["full_attention"] * 6
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(config)
            path = tmp_path_factory.mktemp(f"deep-{family}")
            model.save_pretrained(path)
            tokenizer.save_pretrained(path)
            made[family] = path
        return made[family]

    return make


def test_bi_by_hooks_equals_hidden_states(deep_model_dir):
    lm = prunekit.load(deep_model_dir("llama"))
    ids = torch.randint(0, 1000, (3, 20), generator=torch.Generator().manual_seed(0))
    stats = layer_io_statistics(lm, ids, batch_size=2, progress=False)
    with torch.no_grad():
        hidden = lm.model(input_ids=ids, output_hidden_states=True).hidden_states
    # hidden_states[-1] has the final norm applied; BI uses the raw output, so compare layers 0..L-2
    for i in range(5):
        cos = torch.nn.functional.cosine_similarity(hidden[i].double(), hidden[i + 1].double(), dim=-1)
        assert float(stats["bi"][i]) == pytest.approx(1 - float(cos.mean()), abs=1e-5)
        torch.testing.assert_close(stats["last_token"][:, i], hidden[i][:, -1].float())


def test_bi_split_over_workers_equals_one_process(deep_model_dir):
    """Data-parallel BI: windows split over two spawned workers give the serial numbers exactly."""
    lm = prunekit.load(deep_model_dir("llama"))
    ids = torch.randint(0, 1000, (5, 16), generator=torch.Generator().manual_seed(1))
    serial = layer_io_statistics(lm, ids, batch_size=2, progress=False)
    split = layer_io_statistics(lm, ids, batch_size=2, progress=False, workers=2)
    assert torch.equal(serial["bi"], split["bi"])
    assert torch.equal(serial["last_token"], split["last_token"])


def test_angular_distance_picks_identity_block():
    last = torch.randn(4, 7, 8, generator=torch.Generator().manual_seed(0))
    last[:, 3] = last[:, 1]  # layers 1 and 2 together change nothing
    distances = angular_distances(last, 2)
    assert int(torch.argmin(distances)) == 1 and float(distances[1]) == pytest.approx(0, abs=1e-6)


@pytest.mark.parametrize("family", ["llama", "qwen2", "opt", "gpt_neox", "gpt2", "gpt_neo"])
def test_removal_reloads_with_identical_logits(deep_model_dir, tmp_path, family):
    lm = prunekit.load(deep_model_dir(family))
    record = prunekit.prune(lm, "shortgpt", remove_layers=2, calibration=FAST, progress=False)
    depth = record["depth"]
    assert depth["layers_before"] == 6 and depth["layers_after"] == 4 and len(depth["remove"]) == 2
    assert depth["params_after"] < depth["params_before"] and len(depth["bi"]) == 6
    assert lm.adapter.num_layers() == 4 and getattr(lm.model.config, lm.adapter.depth_key) == 4
    out = prunekit.save(lm, tmp_path / "short", record=prunekit.build_record(lm, [record]))
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.randint(0, 1000, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, lm.model(input_ids=ids).logits)
    for new_index, layer in enumerate(lm.adapter.decoder_layers()):
        indices = {getattr(m, n) for m in layer.modules() for n in ("layer_idx", "layer_id") if isinstance(getattr(m, n, None), int)}
        assert indices <= {new_index}


def test_removed_model_equals_skipping_those_layers(deep_model_dir):
    """The pruned model computes exactly what the dense one does with those layers as identity."""
    dense = prunekit.load(deep_model_dir("llama"))
    pruned = prunekit.load(deep_model_dir("llama"))
    prunekit.prune(pruned, "shortgpt", layers="1,4", progress=False)
    layers = dense.adapter.decoder_layers()
    handles = [layers[i].register_forward_hook(lambda _m, args, out: (args[0],) if isinstance(out, tuple) else args[0])
               for i in (1, 4)]
    ids = torch.randint(0, 1000, (1, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(pruned.model(input_ids=ids).logits, dense.model(input_ids=ids).logits)
    for handle in handles:
        handle.remove()


@pytest.mark.parametrize("metric", ["reverse", "random", "angular", "ppl"])
def test_metrics_remove_the_requested_count(deep_model_dir, metric):
    lm = prunekit.load(deep_model_dir("llama"))
    record = prunekit.prune(lm, "shortgpt", remove_layers=2, metric=metric, calibration=FAST, progress=False)
    remove = record["depth"]["remove"]
    assert len(set(remove)) == 2 and lm.adapter.num_layers() == 4
    if metric == "reverse":
        assert remove == [3, 4]
    if metric == "angular":
        assert remove[1] == remove[0] + 1
    if metric == "ppl":
        assert len(record["depth"]["greedy_ppl"]) == 2


def test_greedy_ppl_restores_the_model_between_trials(deep_model_dir):
    from prunekit.surgery import layers_removed

    lm = prunekit.load(deep_model_dir("qwen2"))
    ids = torch.randint(0, 1000, (1, 16))
    with torch.no_grad():
        before = lm.model(input_ids=ids).logits
        with layers_removed(lm.adapter, [2]):
            assert lm.adapter.num_layers() == 5 and lm.model.config.num_hidden_layers == 5
        assert torch.equal(lm.model(input_ids=ids).logits, before)
    assert lm.model.config.num_hidden_layers == 6 and len(lm.model.config.layer_types) == 6


@pytest.mark.parametrize("kwargs,message", [
    ({"remove_layers": 6}, "at least one must remain"),
    ({"remove_layers": 9}, "at least one must remain"),
    ({"remove_layers": -1}, "at least 1"),
    ({"remove_fraction": 1.0}, "(0, 1)"),
    ({"remove_layers": 1, "remove_fraction": 0.5}, "not both"),
    ({"layers": "0-5"}, "at least one must remain"),
    ({"layers": "2,7"}, "out of range"),
    ({}, "say how many"),
    ({"remove_layers": 1, "sparsity": 0.5}, "removes whole layers"),
])
def test_bad_depth_requests(deep_model_dir, kwargs, message):
    lm = prunekit.load(deep_model_dir("llama"))
    with pytest.raises(ArgumentError, match=message.replace("(", r"\(").replace(")", r"\)")):
        prunekit.prune(lm, "shortgpt", calibration=FAST, progress=False, **kwargs)
    assert lm.adapter.num_layers() == 6


def test_cli_shortgpt_and_analyze(deep_model_dir, tmp_path, capsys):
    model = deep_model_dir("gpt2")
    out = tmp_path / "short"
    assert main(["prune", "--model", str(model), "--method", "shortgpt", "--remove-fraction", "0.34", "--out", str(out),
                 "--nsamples", "2", "--seqlen", "32", "--no-progress"]) == 0
    record = json.loads((out / "prunekit.json").read_text())
    assert record["steps"][0]["depth"]["count"] == 2 and record["calibration"][0]["corpus"] == "pg19"
    assert json.loads((out / "config.json").read_text())["n_layer"] == 4
    analysis = tmp_path / "bi"
    assert main(["analyze", "--model", str(model), "--what", "bi", "--nsamples", "2", "--seqlen", "32",
                 "--out", str(analysis), "--no-progress"]) == 0
    bi = json.loads((analysis / "bi.json").read_text())
    assert len(bi["bi"]) == 6 and sorted(bi["order"]) == list(range(6))
    assert (analysis / "bi.png").stat().st_size > 1000
    assert main(["prune", "--model", str(model), "--method", "shortgpt", "--remove-layers", "-2", "--out",
                 str(tmp_path / "x"), "--no-progress"]) != 0
    assert "at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
def test_sublayer_skip_is_identity_and_reloads(deep_model_dir, tmp_path, family):
    """A removed attention/MLP block adds nothing: the layer equals running without that block."""
    lm = prunekit.load(deep_model_dir(family))
    record = prunekit.prune(lm, "shortgpt", remove_layers=3, granularity="sublayer", calibration=FAST, progress=False)
    depth = record["depth"]
    assert len(depth["skip_sublayers"]) == 3 and len(depth["bi_attn"]) == 6 and lm.adapter.num_layers() == 6
    ids = torch.randint(0, 1000, (1, 12), generator=torch.Generator().manual_seed(4))
    index, kind = depth["skip_sublayers"][0]
    view = next(v for v in lm.adapter.linears(index) if v.roles[0] in ({"o"} if kind == "attn" else {"down", "fc2"}))
    outputs = []
    handle = view.module.register_forward_hook(lambda _m, _a, out: outputs.append(out))
    with torch.no_grad():
        lm.model(input_ids=ids)
    handle.remove()
    assert torch.count_nonzero(outputs[0]) == 0  # the block's contribution to the residual stream is zero
    out = prunekit.save(lm, tmp_path / "sub", record=prunekit.build_record(lm, [record]))
    with torch.no_grad():
        assert torch.equal(AutoModelForCausalLM.from_pretrained(out)(input_ids=ids).logits, lm.model(input_ids=ids).logits)


def test_sublayer_bi_matches_manual_computation(deep_model_dir):
    from torch.nn.functional import cosine_similarity

    from prunekit.capture import sublayer_influence

    lm = prunekit.load(deep_model_dir("llama"))
    ids = torch.randint(0, 1000, (2, 10), generator=torch.Generator().manual_seed(5))
    bi = sublayer_influence(lm, ids, batch_size=2, progress=False)
    contributions = {}
    handles = [next(v for v in lm.adapter.linears(i) if v.roles == ("o",)).module.register_forward_hook(
        lambda _m, _a, out, i=i: contributions.__setitem__(i, out)) for i in range(6)]
    with torch.no_grad():
        hidden = lm.model(input_ids=ids, output_hidden_states=True).hidden_states
    for handle in handles:
        handle.remove()
    for i in range(5):  # the last hidden state has the final norm applied
        x, y = hidden[i].double(), hidden[i + 1].double()
        h = x + contributions[i].double()
        assert float(bi["attn"][i]) == pytest.approx(1 - float(cosine_similarity(x, h, dim=-1).mean()), abs=1e-5)
        assert float(bi["mlp"][i]) == pytest.approx(1 - float(cosine_similarity(h, y, dim=-1).mean()), abs=1e-5)


@pytest.mark.parametrize("metric", ["bi", "angular", "ppl"])
def test_scoring_metrics_without_calibration_text_refuse(tiny_model_dir, metric):
    """bi/angular/ppl score layers on text: with none, the plan raises instead of removing nothing."""
    from prunekit.methods.shortgpt import ShortGPT

    lm = prunekit.load(tiny_model_dir("llama"))
    method = ShortGPT(None, ShortGPT.parse_options({"remove_layers": 1, "metric": metric}))
    with pytest.raises(ArgumentError, match=f"--metric {metric} scores layers on calibration text"):
        method.plan(lm, None, batch_size=1, progress=False)


def test_gemma4_depth_cut_keeps_its_per_layer_inputs_and_last_full_attention_layer(tokenizer, tmp_path):
    """Gemma-4 holds a slice per layer in two model-level tables (per-layer token inputs) and forces
    its last layer to full attention on load: a cut slices the tables to the kept layers, removing the
    last layer is refused by name, and ShortGPT's ranking passes over it to the next-lowest layer."""
    from prunekit.methods.shortgpt import describable_lowest
    from prunekit.zoo import tiny_loaded

    lm = tiny_loaded("gemma4_text", tokenizer)
    width = lm.model.config.hidden_size_per_layer_input
    table = lm.model.model.embed_tokens_per_layer.weight.detach().clone()
    assert describable_lowest(lm.adapter, [2, 0, 1], 1) == ([0], [2])
    with pytest.raises(ArgumentError, match="rewrites when it is loaded"):
        prunekit.prune(lm, "shortgpt", layers=[2], progress=False)
    assert lm.adapter.num_layers() == 3
    record = prunekit.prune(lm, "shortgpt", layers=[1], progress=False)
    kept = torch.cat([table[:, :width], table[:, 2 * width:]], dim=1)
    assert torch.equal(lm.model.model.embed_tokens_per_layer.weight, kept)
    prunekit.save(lm, tmp_path, record=prunekit.build_record(lm, [record]), overwrite=True, report=False)
    ids = torch.randint(0, 1000, (1, 12))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.allclose(lm.model(ids).logits, reloaded(ids).logits, atol=1e-5)
