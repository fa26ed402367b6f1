"""On the real shared model (fast settings): adapter, engine, exact sparsity, reload, quality order."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

import prunekit
from prunekit.capture import layerwise
from prunekit.data import evaluation_windows
from prunekit.eval.perplexity import perplexity
from prunekit.sparsity import check_nm, prune_count

pytestmark = pytest.mark.real_model


def test_adapter_on_real_model(real_lm):
    adapter = real_lm.adapter
    assert adapter.family == "llama" and adapter.num_layers() == 30
    assert (adapter.num_heads, adapter.num_kv_heads, adapter.head_dim) == (9, 3, 64)
    shapes = {view.roles[0]: tuple(view.weight.shape) for view in adapter.linears(0)}
    assert shapes == {"q": (576, 576), "k": (192, 576), "v": (192, 576), "o": (576, 576),
                      "gate": (1536, 576), "up": (1536, 576), "down": (576, 1536)}
    assert real_lm.source["gguf_file"].endswith(".gguf") and real_lm.source["dtype"] == "float32"


def test_perplexity_matches_transformers_loss(real_lm, data_root):
    windows = evaluation_windows(real_lm.tokenizer, "wikitext2", seqlen=256, data_root=data_root, max_windows=2)
    ours = perplexity(real_lm.model, windows, progress=False)
    with torch.no_grad():
        losses = [float(real_lm.model(input_ids=w[None], labels=w[None]).loss) for w in windows.ids]
    assert ours["ppl"] == pytest.approx(math.exp(sum(losses) / len(losses)), rel=1e-4)
    assert ours["predicted_tokens"] == 2 * 255


def test_engine_on_real_model_matches_full_forward(real_lm, data_root):
    """Layer inputs propagated by the engine equal the hidden states of a normal forward."""
    ids = evaluation_windows(real_lm.tokenizer, "wikitext2", seqlen=64, data_root=data_root, max_windows=3).ids
    with torch.no_grad():
        hidden = real_lm.model(input_ids=ids, output_hidden_states=True).hidden_states
    layers = real_lm.adapter.decoder_layers()

    def check(ctx):
        # the attention input is the first norm applied to this layer's input hidden state
        norm = real_lm.adapter.norms(ctx.index)["input_layernorm"]
        with torch.no_grad():
            x = norm(hidden[ctx.index]).reshape(-1, 576).double()
        torch.testing.assert_close(ctx.stats["attn_in"].gram.double(), x.t() @ x, rtol=2e-4, atol=1e-2)
        assert ctx.layer is layers[ctx.index]

    layerwise(real_lm, check, calib_ids=ids, needs=frozenset({"gram"}), layers=[0, 1, 5], batch_size=2, progress=False)


def test_magnitude_quality_and_reload(fresh_real_lm, real_lm, data_root, tmp_path):
    windows = evaluation_windows(real_lm.tokenizer, "wikitext2", seqlen=512, data_root=data_root, max_windows=2)
    dense = perplexity(real_lm.model, windows, progress=False)["ppl"]
    lm = fresh_real_lm
    record = prunekit.prune(lm, "magnitude", sparsity=0.5, progress=False)
    for index in range(lm.adapter.num_layers()):
        for view in lm.adapter.linears(index):
            assert int((view.weight == 0).sum()) == prune_count(view.weight.numel(), 0.5)
    assert record["sparsity"]["overall"] == pytest.approx(0.5, abs=1e-6)
    pruned = perplexity(lm.model, windows, progress=False)["ppl"]
    assert 10 < dense < 40  # SmolLM2-135M on WikiText-2
    assert pruned > 2 * dense  # 50% magnitude costs a small model dearly, never helps it

    out = prunekit.save(lm, tmp_path / "mag50", record=prunekit.build_record(lm, [record]))
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    ids = windows.ids[:1, :128]
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, lm.model(input_ids=ids).logits)
    # embeddings and the LM head are never pruned unless asked
    assert torch.equal(reloaded.get_input_embeddings().weight, real_lm.model.get_input_embeddings().weight)
    assert torch.equal(reloaded.model.norm.weight, real_lm.model.model.norm.weight)


def test_two_four_on_real_model(fresh_real_lm):
    prunekit.prune(fresh_real_lm, "magnitude", pattern="2:4", progress=False)
    report = prunekit.check_sparsity(fresh_real_lm, ["2:4", "4:8", "1:4"])
    assert report["nm"]["2:4"]["valid"] and report["nm"]["4:8"]["valid"] and not report["nm"]["1:4"]["valid"]
    # measured zeros can exceed 50%: the Q4 source already has a few exact zeros among kept weights
    assert 0.5 <= report["sparsity"]["overall"] < 0.5 + 1e-4
    for index in (0, 29):
        for view in fresh_real_lm.adapter.linears(index):
            assert check_nm(view.weight, 2, 4)
