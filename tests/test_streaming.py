"""Pruning with decoder layers streamed from the safetensors shards: the same weights as the
in-memory run, a checkpoint plain transformers reads, and only one layer resident at a time."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

import prunekit
from prunekit.api import prune_streaming
from prunekit.errors import ArgumentError
from prunekit.models.streaming import StreamedModel
from prunekit.recipe import CalibrationSettings, Step
from test_cli import only_error_line

CALIB = CalibrationSettings(nsamples=4, seqlen=64)


@pytest.mark.parametrize("family, step", [
    ("llama", Step("wanda", sparsity=0.5)),
    ("llama", Step("sparsegpt", pattern="2:4")),
    ("opt", Step("ria", sparsity=0.5)),
    ("gpt2", Step("sparsegpt", sparsity=0.5)),
    ("gpt_neox", Step("magnitude", pattern="2:4")),
    ("qwen2", Step("svd", layers="last:1", options={"rate": 0.5, "modules": "mlp"})),
])
def test_streamed_prune_equals_in_memory(tiny_model_dir, data_root, tmp_path, family, step):
    source = tiny_model_dir(family)
    lm = prunekit.load(source)
    prunekit.prune(lm, step, calibration=CALIB, data_root=data_root, progress=False)
    path, record = prune_streaming(source, step, tmp_path / "out", calibration=CALIB, data_root=data_root,
                                   progress=False)
    streamed = AutoModelForCausalLM.from_pretrained(path)
    expected = lm.model.state_dict()
    for name, value in streamed.state_dict().items():
        assert torch.equal(value, expected[name]), name
    assert record["model"]["streamed"] and record["steps"][0]["step"]["method"] == step.method


def test_streaming_reads_sharded_checkpoints_and_frees_layers(tiny_model_dir, data_root, tmp_path):
    source = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama")).save_pretrained(source, max_shard_size="2MB")
    prunekit.load(tiny_model_dir("llama")).tokenizer.save_pretrained(source)
    assert len(list(source.glob("*.safetensors"))) > 2
    streamed = StreamedModel(source)
    layers = streamed.loaded.adapter.decoder_layers()
    assert all(p.is_meta for layer in layers for p in layer.parameters())
    assert not streamed.loaded.model.get_input_embeddings().weight.is_meta
    streamed.before(1)
    assert not any(p.is_meta for p in layers[1].parameters()) and all(p.is_meta for p in layers[0].parameters())
    path, _ = prune_streaming(source, Step("wanda", sparsity=0.5), tmp_path / "out", calibration=CALIB,
                              data_root=data_root, progress=False)
    lm = prunekit.load(tiny_model_dir("llama"))
    prunekit.prune(lm, "wanda", sparsity=0.5, calibration=CALIB, data_root=data_root, progress=False)
    ids = torch.arange(1, 40)[None]
    assert torch.equal(AutoModelForCausalLM.from_pretrained(path)(ids).logits, lm.model(ids).logits)


def test_stream_bad_input(tiny_model_dir, tmp_path, capsys):
    from prunekit.cli import main

    model = str(tiny_model_dir("llama"))
    for extra, expected in ((["--method", "shortgpt", "--remove-layers", "1"], "--stream works with"),
                            (["--method", "fista", "--sparsity", "0.5"], "--stream works with"),
                            (["--method", "svd", "--rate", "0.5", "--factored"], "--stream works with"),
                            (["--method", "wanda", "--sparsity", "0.5", "--eval", "wikitext2"], "--heal and --eval")):
        assert main(["prune", "--model", model, "--stream", "--out", str(tmp_path / "o"), *extra]) != 0
        assert expected in only_error_line(capsys)
        assert not (tmp_path / "o").exists()
    with pytest.raises(ArgumentError):
        prune_streaming(model, Step("llm-pruner", options={"ratio": 0.2}), tmp_path / "o")
