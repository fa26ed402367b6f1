"""SVD clipping, the few-shot ICL evaluator, and the validated clipping-rate search.

Tiny random models check numerics and plumbing (scorer vs naive scoring, factored vs dense,
reload); the split-overlap test reads the real task files.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import prunekit
from prunekit.data.tasks import content_key, load_task_data
from prunekit.errors import ArgumentError, DataError, PrunekitError
from prunekit.eval.icl import IclTask, Template, evaluate_icl, load_icl_task, sample_demonstrations
from prunekit.eval.loglik import Request, continuation_logliks
from prunekit.methods.selection import parse_layers, parse_modules
from prunekit.surgery.lowrank import FactoredLinear, Spectrum, kept_rank

from conftest import TINY_FAMILIES
from test_cli import only_error_line, run_cli

IDS = torch.tensor([[1, 400, 500, 600, 700, 800, 900, 1000]])


def test_rank_r_error_is_the_discarded_energy():
    torch.manual_seed(0)
    weight = torch.randn(48, 32) @ torch.diag(torch.logspace(0, -3, 32))
    spectrum = Spectrum.of(weight)
    for rate in (0.0, 0.1, 0.5, 0.9, 0.99):
        rank = kept_rank(rate, spectrum.size)
        error = float(((weight.double() - spectrum.product(rank).double()) ** 2).sum())
        assert error == pytest.approx(spectrum.discarded_energy(rank), rel=1e-4, abs=1e-8)
    assert [kept_rank(r, 576) for r in (0.0, 0.5, 0.9, 0.995)] == [576, 288, 58, 3]
    assert kept_rank(0.999, 32) == 1  # never below rank 1
    assert spectrum.condition_number() == pytest.approx(float(spectrum.S[0] / spectrum.S[-1]), rel=1e-6)


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt"])
def test_factored_equals_dense_and_reloads_with_plain_transformers(family, tiny_model_dir, tmp_path):
    dense = prunekit.load(tiny_model_dir(family))
    factored = prunekit.load(tiny_model_dir(family))
    prunekit.prune(dense, "svd", rate=0.75, modules="attn,mlp", layers="-1", progress=False)
    record = prunekit.prune(factored, "svd", rate=0.75, modules="attn,mlp", layers="-1", factored=True, progress=False)
    with torch.no_grad():
        a, b = dense.model(IDS).logits, factored.model(IDS).logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    before, after = record["lowrank"]["params_selected"]
    assert after < before
    prunekit.save(factored, tmp_path / "out", record=prunekit.build_record(factored, [record]))
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "out", trust_remote_code=True)
    with torch.no_grad():
        assert torch.equal(plain(IDS).logits, b)
    again = prunekit.load(tmp_path / "out")
    assert sum(isinstance(m, FactoredLinear) for m in again.model.modules()) == len(record["lowrank"]["modules"])
    with pytest.raises(ArgumentError, match="low-rank factors"):
        prunekit.prune(again, "magnitude", sparsity=0.5, progress=False)


def test_dense_clipping_sets_the_rank(tiny_model_dir):
    lm = prunekit.load(tiny_model_dir("llama"))
    record = prunekit.prune(lm, "svd", rate=0.9, modules="k,down", layers="first:1", progress=False)
    reports = record["layers"][0]["modules"]
    assert sorted(n.rsplit(".", 1)[-1] for n in reports) == ["down_proj", "k_proj"]
    for name, report in reports.items():
        weight = lm.model.get_submodule(name).weight
        assert int(torch.linalg.matrix_rank(weight.float())) == report["rank"] == kept_rank(0.9, min(weight.shape))


def test_spectrum_does_not_depend_on_the_thread_count():
    """LAPACK's SVD differs in the last bits between 1 and 2 threads at real sizes; the pinned
    Spectrum does not, so a layer-parallel worker (fewer threads) reproduces the serial factors."""
    weight = torch.randn(1536, 576, generator=torch.Generator().manual_seed(0))
    threads = torch.get_num_threads()
    products = []
    try:
        for count in (2, 1):
            torch.set_num_threads(count)
            products.append(Spectrum.of(weight).product(288))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(*products)


def test_clipping_in_two_workers_equals_one(tiny_model_dir):
    """SVD is data-free: layers clipped in spawned workers come back identical; --factored, which
    installs new modules, is refused with workers."""
    weights = []
    for workers in (1, 2):
        lm = prunekit.load(tiny_model_dir("llama"))
        prunekit.prune(lm, "svd", rate=0.5, modules="q,down", workers=workers, progress=False)
        weights.append({name: p.clone() for name, p in lm.model.named_parameters()})
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][n], weights[1][n]) for n in weights[0])
    with pytest.raises(ArgumentError, match="--factored"):
        prunekit.prune(prunekit.load(tiny_model_dir("llama")), "svd", rate=0.5, factored=True, workers=2, progress=False)


def test_condition_number_selector_picks_the_largest(tiny_model_dir):
    lm = prunekit.load(tiny_model_dir("llama"))
    table = prunekit.spectra(lm)["condition_number"]
    ranked = sorted(((value, int(layer), module) for layer, row in table.items() for module, value in row.items()),
                    reverse=True)
    record = prunekit.prune(lm, "svd", rate=0.5, select="top-k-condition", top_k=3, progress=False)
    chosen = {(c["layer"], c["module"].split(f"layers.{c['layer']}.")[1]) for c in record["lowrank"]["condition_choice"]}
    assert chosen == {(layer, module) for _, layer, module in ranked[:3]}
    assert len(record["lowrank"]["modules"]) == 3


def test_layer_and_module_selectors(tiny_model_dir):
    assert parse_layers("first:2", 30) == [0, 1] and parse_layers("last:2", 30) == [28, 29]
    assert parse_layers("-1,0-1", 30) == [0, 1, 29]
    for bad in ("-31", "30", "last:31", "first:0"):
        with pytest.raises(ArgumentError):
            parse_layers(bad, 30)
    lm = prunekit.load(tiny_model_dir("llama"))
    assert parse_modules("fc1", lm.adapter) == ("gate", "up")
    assert parse_modules("attn", lm.adapter) == ("q", "k", "v", "o")
    with pytest.raises(ArgumentError, match="valid modules are q, k, v, o, gate, up, down"):
        parse_modules("w_qkv", lm.adapter)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_shared_prefix_scores_equal_full_sequence_scores(family, tiny_model_dir):
    lm = prunekit.load(tiny_model_dir(family))
    prefix = [5, 6, 7, 8, 9, 10]
    requests = [Request([11, 12], [13]), Request([11, 12], [14]), Request([15], [16, 17, 18]), Request([], [19, 20])]
    fast = continuation_logliks(lm.model, prefix, requests, tokens_per_batch=4)
    with torch.no_grad():
        for request, (value, _) in zip(requests, fast):
            full = torch.tensor([prefix + request.context + request.continuation])
            log_probs = torch.log_softmax(lm.model(full).logits[0].float(), -1)
            start = len(prefix) + len(request.context)
            naive = sum(float(log_probs[start + i - 1, t]) for i, t in enumerate(request.continuation))
            assert value == pytest.approx(naive, abs=1e-4)


def _tiny_task(tmp_path, labels=(0, 1)):
    rows = [{"text": f"item {i} is {'good' if i % 2 else 'bad'}", "label": labels[i % 2]} for i in range(12)]
    for name, part in (("train", rows[:8]), ("test", rows[8:])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    spec = {"name": "toy", "kind": "label", "template": "Text: {text}\nLabel: {answer}", "answers": ["no", "yes"],
            "train": "train.jsonl", "test": "test.jsonl"}
    (tmp_path / "toy.json").write_text(json.dumps(spec))
    return tmp_path / "toy.json"


def test_icl_accuracy_equals_hand_computed_value(tiny_model_dir, tmp_path):
    lm = prunekit.load(tiny_model_dir("llama"))
    task = load_icl_task(str(_tiny_task(tmp_path)), None, validation_size=2)
    result = evaluate_icl(lm.model, lm.tokenizer, task, shots=2, split="test", seed=3)
    demos = sample_demonstrations(task.examples("pool"), 2, 3)
    assert [d["label"] for d in demos].count(0) == 1  # label-balanced
    prompt = "".join(f"Text: {d['text']}\nLabel: {['no', 'yes'][d['label']]}\n\n" for d in demos)
    correct = 0
    with torch.no_grad():
        for example in task.examples("test"):
            scores = []
            for word in ("no", "yes"):
                prefix = lm.tokenizer(prompt)["input_ids"] + lm.tokenizer(f"Text: {example['text']}\nLabel:",
                                                                           add_special_tokens=False)["input_ids"]
                answer = lm.tokenizer(" " + word, add_special_tokens=False)["input_ids"]
                log_probs = torch.log_softmax(lm.model(torch.tensor([prefix + answer])).logits[0].float(), -1)
                scores.append(sum(float(log_probs[len(prefix) + i - 1, t]) for i, t in enumerate(answer)))
            correct += int(scores.index(max(scores)) == example["label"])
    assert result["accuracy"] == correct / 4 and result["examples"] == 4
    assert result["template"]["text"] == "Text: {text}\nLabel: {answer}"


def test_validation_and_test_never_overlap(data_root):
    for name in ("sst2", "rte", "copa"):
        data = load_task_data(name, data_root)
        validation = {content_key(e) for e in data.splits["validation"]}
        assert validation and not validation & {content_key(e) for e in data.splits["test"]}, name
        assert not validation & {content_key(e) for e in data.splits["pool"]}, name
    assert len(load_task_data("copa", data_root).splits["test"]) == 100


def test_search_picks_the_best_validation_rate(tiny_model_dir, tmp_path):
    lm = prunekit.load(tiny_model_dir("llama"))
    original = lm.model.model.layers[1].self_attn.k_proj.weight.clone()
    result = prunekit.search_svd(lm, str(_tiny_task(tmp_path)), shots=2, modules="k", layers="-1",
                                 grid=[0, 0.5, 0.9], validation_size=2, progress=False)
    accuracy = {t["rate"]: t["accuracy"] for t in result["trials"]}
    best = max(accuracy.values())
    assert result["chosen_rates"]["model.layers.1.self_attn.k_proj"] == min(r for r, a in accuracy.items() if a == best)
    chosen = result["chosen_rates"]["model.layers.1.self_attn.k_proj"]
    weight = lm.model.model.layers[1].self_attn.k_proj.weight
    assert torch.equal(weight, original) == (chosen == 0.0)  # the choice stays applied


def test_icl_bad_input(tiny_model_dir, tmp_path, data_root):
    lm = prunekit.load(tiny_model_dir("llama"))
    with pytest.raises(ArgumentError, match="must be in \\[0, 1\\)"):
        prunekit.prune(lm, "svd", rate=1.0)
    with pytest.raises(ArgumentError, match="out of range"):
        prunekit.prune(lm, "svd", rate=0.5, layers="5")
    with pytest.raises(ArgumentError, match="more than the 7 training examples"):
        prunekit.evaluate_icl(lm, [str(_tiny_task(tmp_path))], shots=50, validation_size=1)
    bad = tmp_path / "bad"
    bad.mkdir()
    with pytest.raises(DataError, match="label 2 does not match the template's 2 answers"):
        load_icl_task(str(_tiny_task(bad, labels=(0, 2))), None)
    with pytest.raises(ArgumentError, match="exactly one \\{answer\\}"):
        Template("no slot here", answers=("a", "b"))
    task = load_icl_task("copa", data_root)
    with pytest.raises(ArgumentError, match="--split"):
        evaluate_icl(lm.model, lm.tokenizer, task, shots=1, split="train")
    assert isinstance(task, IclTask)


def test_cli_icl_search_and_spectrum(tiny_model_dir, tmp_path, capsys):
    model = tiny_model_dir("llama")
    task = _tiny_task(tmp_path)
    out = tmp_path / "eval.json"
    assert run_cli("eval", "--model", model, "--icl", task, "--shots", "2", "--validation-size", "2", "--json", out,
                   "--no-progress") == 0
    assert 0 <= json.loads(out.read_text())["icl"]["toy"]["accuracy"] <= 1
    assert run_cli("search-svd", "--model", model, "--task", task, "--shots", "2", "--modules", "k", "--layers",
                   "last:1", "--grid", "0,0.9", "--validation-size", "2", "--out", tmp_path / "clipped", "--no-progress") == 0
    record = json.loads((tmp_path / "clipped" / "prunekit.json").read_text())
    assert record["steps"][0]["search"]["test"]["baseline"]["examples"] == 4
    assert run_cli("analyze", "--model", model, "--what", "spectrum", "--out", tmp_path / "spec", "--no-progress") == 0
    assert (tmp_path / "spec" / "spectrum.png").stat().st_size > 0
    capsys.readouterr()
    assert run_cli("eval", "--model", model, "--icl", "nope") != 0
    assert "unknown ICL task 'nope'" in only_error_line(capsys)
    assert run_cli("prune", "--model", model, "--method", "svd", "--modules", "zz", "--out", tmp_path / "x") != 0
    assert "valid modules are" in only_error_line(capsys)
    assert run_cli("prune", "--model", model, "--method", "svd", "--rate", "-0.1", "--out", tmp_path / "x") != 0
    assert "[0, 1)" in only_error_line(capsys)
    assert not (tmp_path / "x").exists()
    with pytest.raises(PrunekitError):
        prunekit.prune(prunekit.load(model), "svd", sparsity=0.5)
