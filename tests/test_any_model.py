"""Evaluation needs no adapter; a type without a family adapter is pruned through the structural
fallback (mask methods, depth), and what that fallback cannot do is refused before any slow work."""

import json

import pytest

from conftest import UNADAPTED_FAMILIES
from test_cli import only_error_line as error_line, run_cli


@pytest.mark.parametrize("family", UNADAPTED_FAMILIES)
def test_eval_check_and_bench_work_on_a_model_type_without_adapter(tiny_model_dir, data_root, tmp_path, capsys, family):
    model = tiny_model_dir(family)
    out = tmp_path / "eval.json"
    assert run_cli("eval", "--model", model, "--ppl", "wikitext2", "--max-windows", "1", "--eval-seqlen", "32",
                   "--data-root", data_root, "--json", out, "--no-progress") == 0
    assert json.loads(out.read_text())["ppl"]["wikitext2"] > 1
    assert run_cli("check", "--model", model, "--json", tmp_path / "check.json", "--no-progress") == 0
    check = json.loads((tmp_path / "check.json").read_text())
    assert check["sparsity"]["overall"] == 0 and len(check["sparsity"]["layers"]) == 14  # 7 linears x 2 layers
    assert run_cli("bench", "--model", model, "--repeats", "1", "--prompt-len", "8", "--new-tokens", "2", "--batch", "1",
                   "--json", tmp_path / "bench.json") == 0
    assert json.loads((tmp_path / "bench.json").read_text())["model"]["layers"] == 2
    capsys.readouterr()
    # width pruning needs to know how heads and channels couple: refused from the config, nothing written
    assert run_cli("prune", "--model", model, "--method", "llm-pruner", "--param-ratio", "0.2", "--out", tmp_path / "w",
                   "--no-progress") != 0
    assert "structural fallback: mask methods and depth removal only" in error_line(capsys)
    assert not (tmp_path / "w").exists()
    # mask methods run on the maps the structural adapter found, and the result reloads in transformers
    assert run_cli("prune", "--model", model, "--method", "wanda", "--sparsity", "0.5", "--nsamples", "4", "--seqlen",
                   "32", "--data-root", data_root, "--out", tmp_path / "p", "--no-progress") == 0
    record = json.loads((tmp_path / "p" / "prunekit.json").read_text())
    assert record["model"]["family"] == "structural"
    assert [m["roles"] for m in record["model"]["structure"]["layer0"]] == [[r] for r in "q k v o gate up down".split()]
    assert record["steps"][0]["sparsity"]["pruned_matrices"] == 14 and record["steps"][0]["sparsity"]["pruned"] == 0.5


def test_a_recurrent_model_evaluates_but_pruning_says_why_not(tiny_model_dir, data_root, tmp_path, capsys):
    model = tiny_model_dir("mamba")
    out = tmp_path / "eval.json"
    assert run_cli("eval", "--model", model, "--ppl", "wikitext2", "--max-windows", "1", "--eval-seqlen", "32",
                   "--data-root", data_root, "--json", out, "--no-progress") == 0
    assert json.loads(out.read_text())["ppl"]["wikitext2"] > 1
    capsys.readouterr()
    assert run_cli("prune", "--model", model, "--method", "magnitude", "--sparsity", "0.5", "--out", tmp_path / "p",
                   "--no-progress") != 0
    assert "cannot prune model type 'mamba': a recurrent / state-space / hybrid model" in error_line(capsys)
    assert not (tmp_path / "p").exists()


def _metadata_only_gguf(directory, architecture: str):
    import gguf
    import numpy as np

    directory.mkdir()
    writer = gguf.GGUFWriter(str(directory / "model.gguf"), architecture)
    writer.add_name("tiny")
    writer.add_context_length(256)
    writer.add_embedding_length(64)
    writer.add_block_count(2)
    writer.add_feed_forward_length(128)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_tensor("token_embd.weight", np.zeros((8, 64), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return directory


@pytest.mark.parametrize("architecture,method,message", [
    ("minimax_m2", ["llm-pruner", "--param-ratio", "0.2"], "'minimax_m2' has none"),
    ("rwkv7", ["magnitude", "--sparsity", "0.5"], "architecture rwkv7 is not supported")])
def test_prune_refuses_from_the_gguf_metadata_before_converting(tmp_path, capsys, monkeypatch, architecture, method,
                                                                message):
    import prunekit.models.loading as loading

    def no_conversion(*_args, **_kwargs):
        raise AssertionError("the GGUF was converted before the architecture check")

    monkeypatch.setattr(loading, "convert_gguf", no_conversion)
    model = _metadata_only_gguf(tmp_path / "gguf", architecture)
    assert run_cli("prune", "--model", model, "--method", *method, "--out", tmp_path / "p", "--no-progress") != 0
    assert message in error_line(capsys)
    assert not (tmp_path / "p").exists()
