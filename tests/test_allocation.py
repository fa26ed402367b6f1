"""Layer-wise sparsity allocation: OWL's numerics, exact overall targets, bands, files, bad input."""

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

import prunekit
from prunekit.errors import ArgumentError
from prunekit.methods.allocation import layer_outlier_ratio, owl_sparsities
from prunekit.recipe import CalibrationSettings

from test_cli import only_error_line, run_cli

FAST = CalibrationSettings(corpus="c4", nsamples=4, seqlen=32)


def test_owl_matches_the_reference_formula_when_no_layer_leaves_the_band():
    ratios = [0.5, 1.0, 1.5, 2.0, 2.5]  # symmetric: the reference's centring already stays within ±λ
    lam, target = 0.08, 0.7
    scaled = (np.array(ratios) - 0.5) / 2.0 * 2 * lam
    reference = 1 - (scaled - scaled.mean() + (1 - target))  # sparsity = 1 - keep ratio, as the OWL code has it
    assert owl_sparsities(ratios, target, lam) == pytest.approx(list(reference), abs=1e-9)


@pytest.mark.parametrize("sizes", [None, [1, 1, 1, 1, 1, 1], [3, 1, 1, 2, 5, 1]])
def test_owl_keeps_the_weighted_target_exact_and_every_layer_in_its_band(sizes):
    ratios = [0.1, 0.11, 0.12, 0.1, 0.9, 0.13]  # skewed: one outlier-heavy layer
    values = owl_sparsities(ratios, 0.6, 0.08, sizes)
    weights = np.ones(6) if sizes is None else np.array(sizes, dtype=float)
    assert float(np.average(values, weights=weights)) == pytest.approx(0.6, abs=1e-9)
    assert all(0.52 - 1e-12 <= v <= 0.68 + 1e-12 for v in values)
    order = np.argsort(ratios)
    assert all(values[a] >= values[b] - 1e-12 for a, b in zip(order, order[1:]))  # more outliers, fewer zeros
    assert values[4] == min(values)
    assert owl_sparsities([0.2] * 4, 0.5, 0.08) == [0.5] * 4


def test_layer_outlier_ratio_counts_scores_above_m_times_the_layer_mean():
    from prunekit.models.adapters.base import LinearView

    weight = torch.ones(2, 4)
    weight[0, 0] = 100.0
    view = LinearView("l.0.q", "q", ("q",), torch.nn.Linear(4, 2, bias=False), "attn")
    view.module.weight.data.copy_(weight)
    # scores = |W|·||X||: mean (100 + 7) / 8 = 13.4; only the 100 is above 5 x 13.4
    assert layer_outlier_ratio([view], [torch.ones(4)], 5.0) == pytest.approx(1 / 8)
    assert layer_outlier_ratio([view], [torch.ones(4)], 0.5) == pytest.approx(1 / 8)
    assert layer_outlier_ratio([view], [torch.ones(4)], 0.05) == pytest.approx(1.0)


@pytest.fixture(scope="module")
def four_layer_dir(tmp_path_factory, tokenizer):
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=256, vocab_size=49152)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # make the layers differ in outliers, as real models do
        for index, layer in enumerate(model.model.layers):
            layer.mlp.down_proj.weight[:, : 2 * index] *= 30.0
    path = tmp_path_factory.mktemp("tiny-llama-4")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _layer_sparsity(lm, index):
    views = lm.adapter.linears(index)
    return sum(int((v.weight == 0).sum()) for v in views) / sum(v.weight.numel() for v in views)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt", "ria", "fista"])
def test_owl_hits_the_overall_target_with_each_layer_in_its_band(method, four_layer_dir, data_root):
    lm = prunekit.load(four_layer_dir)
    options = {"fista_iterations": 10, "fista_final_iterations": 10, "bisection_steps": 6} if method == "fista" else {}
    step = prunekit.prune(lm, method, sparsity=0.6, allocation="owl", calibration=FAST, data_root=data_root,
                          progress=False, **options)
    allocation = step["allocation"]
    assert allocation["mode"] == "owl" and set(allocation["outlier_ratio"]) == {"0", "1", "2", "3"}
    allocated = [allocation["sparsity"][str(i)] for i in range(4)]
    assert len(set(allocated)) > 1 and all(0.52 - 1e-9 <= v <= 0.68 + 1e-9 for v in allocated)
    for index in range(4):  # each layer at its own target, up to one weight per row
        assert _layer_sparsity(lm, index) == pytest.approx(allocated[index], abs=1 / 64)
    assert step["sparsity"]["overall"] == pytest.approx(0.6, abs=1 / 128)
    assert step["calibration"] is not None  # magnitude too: OWL scores layers with activations


def test_owl_gives_the_outlier_heavy_layer_the_fewest_zeros(four_layer_dir, data_root):
    lm = prunekit.load(four_layer_dir)
    step = prunekit.prune(lm, "wanda", sparsity=0.5, allocation="owl", calibration=FAST, data_root=data_root,
                          progress=False)
    ratios = step["allocation"]["outlier_ratio"]
    sparsity = step["allocation"]["sparsity"]
    most = max(ratios, key=ratios.get)
    assert sparsity[most] == min(sparsity.values())


def test_an_allocation_file_sets_each_layer(four_layer_dir, data_root, tmp_path):
    file = tmp_path / "alloc.json"
    file.write_text(json.dumps([0.4, 0.5, 0.6, 0.5]))
    lm = prunekit.load(four_layer_dir)
    step = prunekit.prune(lm, "magnitude", sparsity=0.5, allocation=str(file), progress=False)
    assert step["calibration"] is None  # a file needs no data for a data-free method
    for index, value in enumerate([0.4, 0.5, 0.6, 0.5]):
        assert _layer_sparsity(lm, index) == pytest.approx(value, abs=1 / 64)
    record_style = tmp_path / "record.json"
    record_style.write_text(json.dumps({"sparsity": step["allocation"]["sparsity"]}))  # the record's own shape
    again = prunekit.load(four_layer_dir)
    prunekit.prune(again, "magnitude", sparsity=0.5, allocation=str(record_style), progress=False)
    assert all(torch.equal(a.weight, b.weight) for i in range(4)
               for a, b in zip(lm.adapter.linears(i), again.adapter.linears(i)))


def test_bad_allocations_are_one_clear_error(four_layer_dir, tmp_path, capsys):
    wrong_count = tmp_path / "three.json"
    wrong_count.write_text(json.dumps([0.5, 0.5, 0.5]))
    lm = prunekit.load(four_layer_dir)
    with pytest.raises(ArgumentError, match="has 3 sparsities; this step prunes 4 layers"):
        prunekit.prune(lm, "magnitude", sparsity=0.5, allocation=str(wrong_count), progress=False)
    off_mean = tmp_path / "off.json"
    off_mean.write_text(json.dumps([0.7, 0.7, 0.7, 0.7]))
    with pytest.raises(ArgumentError, match="averages 0.7000 .* not --sparsity 0.5"):
        prunekit.prune(lm, "magnitude", sparsity=0.5, allocation=str(off_mean), progress=False)
    with pytest.raises(ArgumentError, match="N:M pattern"):
        prunekit.prune(lm, "wanda", pattern="2:4", allocation="owl", progress=False)
    with pytest.raises(ArgumentError, match="--allocation must be uniform, owl or a .json file"):
        prunekit.prune(lm, "wanda", sparsity=0.5, allocation="outliers", progress=False)
    with pytest.raises(ArgumentError, match="--owl-lambda must be in"):
        prunekit.prune(lm, "wanda", sparsity=0.5, allocation="owl", owl_lambda=0.7, progress=False)
    out = tmp_path / "out"
    capsys.readouterr()  # the API loads above drew their bars
    assert run_cli("prune", "--model", four_layer_dir, "--method", "wanda", "--sparsity", "0.5", "--allocation",
                   wrong_count, "--out", out, "--no-progress") == 2
    assert "has 3 sparsities" in only_error_line(capsys) and not out.exists()
    assert run_cli("prune", "--model", four_layer_dir, "--method", "wanda", "--sparsity", "0.5", "--allocation",
                   tmp_path / "missing.json", "--out", out, "--no-progress") == 2
    assert "--allocation file not found" in only_error_line(capsys) and not out.exists()


def test_the_report_page_plots_the_allocation_beside_the_error(four_layer_dir, data_root, tmp_path):
    out = tmp_path / "owl"
    assert run_cli("prune", "--model", four_layer_dir, "--method", "wanda", "--sparsity", "0.6", "--allocation", "owl",
                   "--report-error", "--nsamples", "4", "--seqlen", "32", "--data-root", data_root, "--out", out,
                   "--no-progress") == 0
    record = json.loads((out / "prunekit.json").read_text())
    assert record["steps"][0]["allocation"]["mode"] == "owl" and record["timings"]["steps"][0]["allocation"] > 0
    page = (out / "report" / "report.md").read_text()
    assert "Sparsity allocation (step 1)" in page and "allocation_step1.png" in page
    assert "mean reconstruction error" in page
