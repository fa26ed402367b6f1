"""The CLI: the happy path with stable JSON keys, and every bad input from the foundation issue."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from prunekit.cli import main


def run_cli(*args):
    return main([str(a) for a in args])


def only_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("prunekit: error:"), err
    return err[0]


def test_prune_eval_check_roundtrip(tiny_model_dir, tmp_path, capsys):
    model = tiny_model_dir("llama")
    out = tmp_path / "pruned"
    assert run_cli("prune", "--model", model, "--method", "magnitude", "--pattern", "2:4", "--out", out,
                   "--eval", "wikitext2", "--max-windows", "2", "--eval-seqlen", "64", "--no-progress") == 0
    record = json.loads((out / "prunekit.json").read_text())
    assert record["sparsity"]["overall"] == pytest.approx(0.5)
    assert record["recipe"]["steps"][0]["pattern"] == "2:4"
    assert record["ppl"]["wikitext2"] > 1 and record["eval"]["wikitext2"]["windows"] == 2
    assert {"load", "eval", "steps"} <= set(record["timings"]) and record["peak_rss_mb"] > 0
    assert not list(tmp_path.glob(".pruned.tmp-*"))
    check_json = tmp_path / "check.json"
    assert run_cli("check", "--model", out, "--json", check_json, "--no-progress") == 0
    check = json.loads(check_json.read_text())
    assert check["nm"]["2:4"]["valid"] and check["sparsity"]["overall"] == pytest.approx(0.5)
    assert all(v == pytest.approx(0.5) for v in check["sparsity"]["layers"].values())
    eval_json = tmp_path / "eval.json"
    assert run_cli("eval", "--model", out, "--ppl", "wikitext2,ptb", "--max-windows", "1", "--eval-seqlen", "64",
                   "--json", eval_json, "--no-progress") == 0
    assert set(json.loads(eval_json.read_text())["ppl"]) == {"wikitext2", "ptb"}
    assert run_cli("eval", "--model", out, "--check-sparsity", "--json", eval_json, "--no-progress") == 0
    assert json.loads(eval_json.read_text())["nm"]["2:4"]["valid"]


def test_out_exists_needs_overwrite(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    args = ["prune", "--model", tiny_model_dir("gpt2"), "--method", "magnitude", "--sparsity", "0.5", "--out", out, "--no-progress"]
    assert run_cli(*args) != 0
    assert "exists" in only_error_line(capsys) and (out / "keep.txt").exists()
    assert run_cli(*args, "--overwrite") == 0
    assert (out / "prunekit.json").exists() and not (out / "keep.txt").exists()


@pytest.mark.parametrize("extra,message", [
    (["--sparsity", "1.0"], "in [0, 1)"),
    (["--sparsity", "-0.2"], "in [0, 1)"),
    (["--pattern", "4:2"], "0 < N < M"),
    (["--pattern", "two:four"], "N:M"),
    (["--sparsity", "0.5", "--pattern", "2:4"], "not both"),
    (["--pattern", "2:24"], "does not divide the input width 64"),
    (["--sparsity", "0.5", "--roles", "q,gate,fc9"], "unknown role 'fc9'"),
    (["--sparsity", "0.5", "--layers", "0-7"], "out of range"),
    (["--sparsity", "0.5", "--method", "nosuch"], "unknown method 'nosuch'"),
    (["--sparsity", "0.5", "--nsamples", "0"], "--nsamples"),
])
def test_bad_arguments(tiny_model_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "never"
    args = ["prune", "--model", tiny_model_dir("llama"), "--method", "magnitude", "--out", out, "--no-progress", *extra]
    assert run_cli(*args) != 0
    assert message in only_error_line(capsys)
    assert not out.exists() and not list(tmp_path.glob(".never*"))


def test_missing_model_and_unsupported_architecture(tmp_path, capsys):
    assert run_cli("check", "--model", tmp_path / "no-such-model", "--no-progress") != 0
    assert "model directory not found" in only_error_line(capsys)
    from transformers import BertConfig
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(tmp_path / "bert")
    assert run_cli("check", "--model", tmp_path / "bert", "--no-progress") != 0
    assert "unsupported architecture 'bert'" in only_error_line(capsys)
    from transformers import LlamaConfig
    cfg = LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                      architectures=["LlamaForSequenceClassification"])
    cfg.save_pretrained(tmp_path / "classifier")
    assert run_cli("check", "--model", tmp_path / "classifier", "--no-progress") != 0
    assert "not a causal language model" in only_error_line(capsys)
    assert run_cli("check", "--model", "some-org/some-model-that-is-not-here", "--no-progress") != 0
    assert "not a local directory" in only_error_line(capsys)
    (tmp_path / "empty").mkdir()
    assert run_cli("check", "--model", tmp_path / "empty", "--no-progress") != 0
    assert "no config.json" in only_error_line(capsys)


def test_missing_and_short_data(tiny_model_dir, tmp_path, capsys):
    model = tiny_model_dir("opt")
    assert run_cli("eval", "--model", model, "--ppl", tmp_path / "missing.txt", "--no-progress") != 0
    assert "data file not found" in only_error_line(capsys)
    short = tmp_path / "short.txt"
    short.write_text("too short")
    assert run_cli("eval", "--model", model, "--ppl", short, "--eval-seqlen", "64", "--no-progress") != 0
    assert "shorter than one window" in only_error_line(capsys)
    assert run_cli("eval", "--model", model, "--ppl", "wikitext2", "--data-root", tmp_path, "--no-progress") != 0
    assert "wikitext-2-raw-v1/test.jsonl" in only_error_line(capsys)
    assert run_cli("eval", "--model", model, "--ppl", "wikitext2", "--eval-seqlen", "4096", "--no-progress") != 0
    assert "longer than the model's context" in only_error_line(capsys)
    assert run_cli("eval", "--model", model, "--ppl", "wikitext2", "--max-windows", "0", "--no-progress") != 0
    assert "--max-windows" in only_error_line(capsys)


def test_calibrated_prune_bad_data_and_nan(tiny_model_dir, tmp_path, capsys):
    model = tiny_model_dir("llama")
    out = tmp_path / "out"
    short = tmp_path / "short.txt"
    short.write_text("a few words only")
    base = ["prune", "--model", model, "--method", "wanda", "--sparsity", "0.5", "--out", out, "--no-progress",
            "--nsamples", "2", "--seqlen", "32"]
    assert run_cli(*base, "--calib", short) != 0
    assert "shorter than one window" in only_error_line(capsys)
    assert run_cli(*base, "--calib", tmp_path / "absent.jsonl") != 0
    assert "data file not found" in only_error_line(capsys)
    assert run_cli(*base[:-2], "--seqlen", "100000") != 0
    assert "longer than the model's context" in only_error_line(capsys)
    assert run_cli(*base, "--group", "row") != 0
    assert "has no option group" in only_error_line(capsys)
    assert not out.exists()


@pytest.mark.parametrize("method, where", [("sparsegpt", "layer 1"), ("fista", "layers.1.mlp.gate_proj")])
def test_nan_activations_name_the_layer(tiny_model_dir, data_root, method, where):
    import torch

    import prunekit
    from prunekit.errors import NumericalError
    from prunekit.recipe import CalibrationSettings

    lm = prunekit.load(tiny_model_dir("llama"))
    with torch.no_grad():
        lm.adapter.linears(1)[3].weight[0, 0] = float("nan")  # o_proj of layer 1 -> NaN MLP inputs
    with pytest.raises(NumericalError, match=f"{where}.*not finite"):
        prunekit.prune(lm, method, sparsity=0.5, progress=False,
                       calibration=CalibrationSettings(nsamples=2, seqlen=16, batch_size=2))


def test_interrupt_inside_a_run_leaves_nothing(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """Ctrl-C while writing the checkpoint: exit 130, no output and no temporary directory."""
    import prunekit.io.save as save_module

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "out"
    monkeypatch.setattr(save_module, "write_json", interrupted)
    code = run_cli("prune", "--model", tiny_model_dir("gpt_neox"), "--method", "magnitude", "--sparsity", "0.5",
                   "--out", out, "--no-progress")
    assert code == 130 and "interrupted" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_sigint_during_evaluation(tiny_model_dir, tmp_path):
    """A real SIGINT to the CLI process while it evaluates: exit 130, no output directory."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "prunekit.cli", "prune", "--model", str(tiny_model_dir("llama")), "--method", "magnitude",
         "--sparsity", "0.5", "--out", str(out), "--eval", "wikitext2", "--eval-seqlen", "32", "--eval-batch-size", "1"],
        stderr=subprocess.PIPE, text=True, env=env,
        # a test runner started in the background (`cmd &` without job control) ignores SIGINT, and
        # an ignored signal stays ignored across exec: give the CLI the default disposition
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    seen = ""
    while "ppl wikitext2" not in seen:  # tqdm writes the evaluation bar to stderr
        chunk = proc.stderr.read(64)
        assert chunk, f"process ended before evaluating: {seen[-500:]}"
        seen += chunk
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130, seen[-300:] + rest[-300:]
    assert "interrupted" in rest
    assert not out.exists() and list(Path(tmp_path).iterdir()) == []
