"""The cost report (`prunekit bench`) and the run report page (`prunekit report`): plumbing on a
tiny model, the notes' logic, and bad input."""

from __future__ import annotations

import json

import pytest

from prunekit.cli import main
from test_cli import only_error_line
from prunekit.eval.cost import compare



@pytest.fixture(scope="module")
def pruned_run(tiny_model_dir, data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "wanda"
    assert main(["prune", "--model", str(tiny_model_dir("llama")), "--method", "wanda", "--sparsity", "0.5",
                 "--nsamples", "4", "--seqlen", "64", "--data-root", str(data_root), "--out", str(out),
                 "--eval", "wikitext2", "--max-windows", "1", "--no-progress", "--report-error"]) == 0
    page = (out / "report" / "report.md").read_text()  # every run gets its page
    assert "## Sparsity" in page and "## Perplexity" in page
    return out


def test_bench_measures_both_models_and_the_ratios(pruned_run, tiny_model_dir, tmp_path):
    report_path = tmp_path / "bench.json"
    assert main(["bench", "--model", str(pruned_run), "--baseline", str(tiny_model_dir("llama")), "--repeats", "1",
                 "--prompt-len", "16", "--new-tokens", "4", "--batch", "2", "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    model, base = report["model"], report["baseline"]
    assert model["params"] == base["params"] and model["params_nonzero"] < base["params_nonzero"]
    assert model["disk_mb"] > 0 and model["prefill_ms"] > 0 and model["decode_tok_s"] > 0
    assert model["peak_rss_load_mb"] > model["rss_before_load_mb"]
    assert report["ratios"]["params_nonzero"] == pytest.approx(model["params_nonzero"] / base["params_nonzero"])


def test_cost_notes_say_when_zeros_cannot_speed_up():
    dense = {"params": 100, "params_nonzero": 100, "prefill_ms": 10.0, "decode_tok_s": 50.0}
    sparse = {"params": 100, "params_nonzero": 50, "prefill_ms": 10.2, "decode_tok_s": 49.0}
    notes = compare(sparse, dense)["notes"]
    assert len(notes) == 1 and "50% of the parameters are zeros" in notes[0]
    thinner = {"params": 70, "params_nonzero": 70, "prefill_ms": 7.0, "decode_tok_s": 70.0}
    assert compare(thinner, dense) == {"ratios": {"params": 0.7, "params_nonzero": 0.7, "prefill_ms": 0.7,
                                                  "decode_tok_s": 1.4}, "notes": []}


def test_report_page_from_a_run(pruned_run, tmp_path):
    evaluation = tmp_path / "eval.json"
    evaluation.write_text(json.dumps({"tasks": {"piqa": {"acc": 0.5, "acc_norm": 0.6, "examples": 4}},
                                      "zero_shot": {"mean_acc": 0.5}, "ppl": {"ptb": 123.0}}))
    baseline = tmp_path / "dense.json"
    baseline.write_text(json.dumps({"tasks": {"piqa": {"acc": 0.75, "acc_norm": 0.7, "examples": 4}},
                                    "zero_shot": {"mean_acc": 0.75}, "ppl": {"ptb": 100.0}}))
    out = tmp_path / "page"
    assert main(["report", str(pruned_run), "--eval", str(evaluation), "--baseline-eval", str(baseline),
                 "--out", str(out)]) == 0
    markdown = (out / "report.md").read_text()
    for heading in ("## Recipe", "## Data provenance", "## Sparsity", "## Reconstruction error (step 1)",
                    "## Perplexity", "## Zero-shot tasks", "## Timings"):
        assert heading in markdown, heading
    assert "| ptb | 123 | 100 | 1.23 |" in markdown and "c4_sample.jsonl.gz" in markdown
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "src='sparsity.png'" not in page  # self-contained
    assert (out / "sparsity.png").is_file() and (out / "recon_error_step1.png").is_file()


def test_report_bad_input(pruned_run, tmp_path, capsys):
    assert main(["report", str(tmp_path)]) != 0
    assert "prunekit.json" in only_error_line(capsys)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert main(["report", str(pruned_run), "--eval", str(broken), "--out", str(tmp_path / "p")]) != 0
    assert "not valid JSON" in only_error_line(capsys) and not (tmp_path / "p").exists()
    assert main(["bench", "--model", str(pruned_run), "--repeats", "0"]) != 0
    assert "--repeats" in only_error_line(capsys)


def test_sparse_kernel_candidates_and_cpu_refusal(tiny_model_dir, capsys):
    """Only 2:4-valid fp16/bf16 nn.Linear weights go to the semi-structured kernels; on CPU the flag is refused."""
    import prunekit
    from prunekit.eval.sparse_kernels import candidates, convert

    lm = prunekit.load(tiny_model_dir("llama"))
    prunekit.prune(lm, "magnitude", pattern="2:4", layers="0", progress=False)
    eligible, skipped = candidates(lm)
    assert not eligible and all("dtype float32" in reason for reason in skipped.values())
    lm.model.half()
    eligible, skipped = candidates(lm)
    assert {v.name for v in eligible} == {v.name for v in lm.adapter.linears(0)}
    assert all(reason == "weight is not 2:4 along its inputs" for reason in skipped.values()) and len(skipped) == 7
    gpt2 = prunekit.load(tiny_model_dir("gpt2"))
    assert all("Conv1D" in reason for reason in candidates(gpt2)[1].values())
    with pytest.raises(prunekit.PrunekitError, match="CUDA"):
        convert(lm)
    assert main(["bench", "--model", str(tiny_model_dir("llama")), "--sparse-kernels", "--device", "cpu"]) != 0
    assert "needs a CUDA GPU" in only_error_line(capsys)
