"""GGUF export with llama.cpp's converter and quantizer, read back by transformers and llama.cpp.

The refusals need no llama.cpp; the round trips need the ``gguf`` extra (llama-cpp-python and
the converter it vendors), which CI installs: there a missing build fails instead of skipping.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from test_cli import only_error_line, run_cli

import prunekit
from prunekit.errors import ArgumentError, OutputExistsError, UnsupportedArchitectureError
from prunekit.export import export_gguf
from prunekit.export.gguf_export import plan_export


def _need_llamacpp():
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("llama-cpp-python is not installed (CI installs the gguf extra)", pytrace=False)
        pytest.skip("llama-cpp-python is not installed (pip install -e '.[gguf]')")
    from prunekit.export.llamacpp import find_converter

    return find_converter()


@pytest.fixture(scope="module")
def converter():
    return _need_llamacpp()


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits[0].float()


def _llamacpp_logits(path: Path, ids: torch.Tensor, f32_cache: bool = False) -> torch.Tensor:
    from prunekit.eval.llamacpp import sequence_logits

    return sequence_logits(path, ids, threads=2, f32_cache=f32_cache)


def _fp16_rounded(model) -> None:
    """What an f16 GGUF stores: matrices rounded to fp16, 1-D tensors (norms) kept in f32."""
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.copy_(parameter.half().float())


IDS = torch.randint(0, 1000, (1, 48), generator=torch.Generator().manual_seed(0))


# ---- refusals: one line, exit != 0, before any slow work, nothing written ---------------------

def test_unknown_outtype_and_bad_output_are_one_line(tmp_path, tiny_model_dir, capsys):
    source = tiny_model_dir("llama")
    with pytest.raises(ArgumentError, match="unknown --outtype 'q9_9'"):
        export_gguf(source, tmp_path / "m.gguf", "q9_9")
    with pytest.raises(ArgumentError, match="must name a .gguf file"):
        export_gguf(source, tmp_path / "m.bin", "f16")
    (tmp_path / "exists.gguf").write_bytes(b"keep")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        export_gguf(source, tmp_path / "exists.gguf", "f16")
    assert (tmp_path / "exists.gguf").read_bytes() == b"keep"
    with pytest.raises(ArgumentError, match="needs an importance matrix"):
        export_gguf(source, tmp_path / "m.gguf", "iq2_xxs")
    capsys.readouterr()
    assert run_cli("export", "--model", source, "--outtype", "q9_9", "--out", tmp_path / "m.gguf") != 0
    assert "unknown --outtype" in only_error_line(capsys)
    assert not list(tmp_path.glob("m*"))


def test_architecture_refusals_name_the_reason():
    architectures = {"LlamaForCausalLM", "Qwen2ForCausalLM"}
    with pytest.raises(UnsupportedArchitectureError, match="no OPTForCausalLM"):
        plan_export({"architectures": ["OPTForCausalLM"], "model_type": "opt"}, architectures)
    with pytest.raises(UnsupportedArchitectureError, match="'prunekit_shapes'.*feed_forward_length"):
        plan_export({"architectures": ["Qwen2ForCausalLM"], "prunekit_shapes": {"linears": {}}}, architectures)
    plan = plan_export({"architectures": ["LlamaForCausalLM"], "prunekit_shapes": {"linears": {}}}, architectures)
    assert plan["per_layer"] and plan["architecture"] == "LlamaForCausalLM"


def test_gemma_attention_scale_llamacpp_would_get_wrong_is_refused():
    """llama.cpp reads Gemma-3's attention scale off the layer count (62 = 27B); Gemma-3 27B's shapes
    (hidden 5376, 32 heads of 128, query_pre_attn_scalar 168) export whole, not cut to 54 layers or
    with 24 heads; a 1B-shaped model (head_dim = query_pre_attn_scalar = 256) exports at any depth but 62."""
    gemma3 = {"Gemma3ForCausalLM"}
    big = {"architectures": ["Gemma3ForCausalLM"], "hidden_size": 5376, "num_attention_heads": 32, "head_dim": 128,
           "query_pre_attn_scalar": 168}
    plan_export({**big, "num_hidden_layers": 62}, gemma3)
    for cut in ({"num_hidden_layers": 54}, {"num_hidden_layers": 62, "num_attention_heads": 24}):
        with pytest.raises(UnsupportedArchitectureError, match=r"1/sqrt\(\d+\) but transformers by 1/sqrt\(168\)"):
            plan_export({**big, **cut}, gemma3)
    small = {"architectures": ["Gemma3ForCausalLM"], "hidden_size": 1152, "num_attention_heads": 4, "head_dim": 256,
             "query_pre_attn_scalar": 256}
    for layers in (26, 20):
        plan_export({**small, "num_hidden_layers": layers}, gemma3)
    with pytest.raises(UnsupportedArchitectureError, match=r"1/sqrt\(288\)"):  # 62 layers: the 27B rule
        plan_export({**small, "num_hidden_layers": 62}, gemma3)


def test_falcon_7b_layout_is_shown_to_the_converter_with_its_one_kv_head(tmp_path):
    """transformers saves Falcon-7B's num_kv_heads as the head count (71) though its multi-query
    attention has one KV head; the converter splits q/k/v by that field, so export shows it 1."""
    from prunekit.export.gguf_export import converter_view

    falcon = {"FalconForCausalLM"}
    seven_b = {"architectures": ["FalconForCausalLM"], "multi_query": True, "new_decoder_architecture": False,
               "num_attention_heads": 71, "num_kv_heads": 71}
    assert plan_export(seven_b, falcon)["config_fixes"] == {"num_kv_heads": 1}
    forty_b = {**seven_b, "new_decoder_architecture": True, "num_kv_heads": 8}  # grouped KV heads: read as written
    assert plan_export(forty_b, falcon)["config_fixes"] == {}
    source = tmp_path / "source"
    source.mkdir()
    (source / "config.json").write_text(json.dumps(seven_b))
    (source / "model.safetensors").write_bytes(b"weights")
    view = converter_view(source, tmp_path / "view", {"num_kv_heads": 1})
    assert json.loads((view / "config.json").read_text())["num_kv_heads"] == 1
    assert (view / "model.safetensors").read_bytes() == b"weights"
    assert json.loads((source / "config.json").read_text())["num_kv_heads"] == 71  # the checkpoint is untouched


def test_missing_llamacpp_build_is_one_line(tmp_path, tiny_model_dir, monkeypatch):
    import importlib.metadata

    real_version = importlib.metadata.version

    def version(name):
        if name == "llama-cpp-python":
            raise importlib.metadata.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.delenv("PRUNEKIT_LLAMA_CPP", raising=False)
    monkeypatch.setattr(importlib.metadata, "version", version)
    with pytest.raises(prunekit.PrunekitError, match=r"llama.cpp is not installed: pip install -e '.\[gguf\]'"):
        export_gguf(tiny_model_dir("llama"), tmp_path / "m.gguf", "f16")
    assert not list(tmp_path.iterdir())


def test_a_failed_conversion_leaves_no_partial_file(tmp_path, tiny_model_dir, converter):
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in Path(tiny_model_dir("llama")).iterdir():
        (broken / item.name).write_bytes(item.read_bytes() if item.suffix != ".safetensors" else b"not a tensor file")
    out = tmp_path / "out"
    with pytest.raises(prunekit.PrunekitError, match="converter failed"):
        export_gguf(broken, out / "m.gguf", "f16")
    assert not list(out.iterdir())


def test_shapes_llamacpp_rejects_leave_no_file_and_name_the_tensor(tmp_path, tiny_model_dir, converter, capsys):
    """llama.cpp's phi2 graph builds k/v as n_embd x n_embd (no grouped-query attention): a Phi
    checkpoint with 2 KV heads of 4 converts, but the export loads it first and refuses it."""
    out = tmp_path / "phi.gguf"
    assert run_cli("export", "--model", tiny_model_dir("phi"), "--outtype", "f32", "--out", out) != 0
    line = only_error_line(capsys)
    assert "llama.cpp cannot load the PhiForCausalLM GGUF" in line and "blk.0.attn_k.weight" in line
    assert not out.exists() and not list(tmp_path.glob(".phi*"))


# ---- round trips ------------------------------------------------------------------------------

def test_f16_gguf_reads_back_in_transformers_and_llamacpp(tmp_path, tiny_model_dir, converter):
    from transformers import AutoModelForCausalLM

    source = tiny_model_dir("llama")
    record = export_gguf(source, tmp_path / "tiny-f16.gguf", "f16")
    assert record["outtype"] == "f16" and Path(record["file"]).is_file()
    reference = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    _fp16_rounded(reference)
    expected = _logits(reference, IDS)
    read_back = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="tiny-f16.gguf", dtype=torch.float32)
    assert torch.allclose(_logits(read_back, IDS), expected, atol=1e-4, rtol=0)
    in_llamacpp = _llamacpp_logits(tmp_path / "tiny-f16.gguf", IDS)
    assert (in_llamacpp - expected).abs().max() < 2e-2 * expected.abs().max()  # llama.cpp computes in f16 there


def test_depth_and_per_layer_widths_run_in_llamacpp(tmp_path, real_float_dir, converter, data_root):
    """Depth cut (fewer blocks) and LLM-Pruner's non-uniform widths (llama.cpp's 'deci' arrays) on
    the real model: llama.cpp's logits follow the pruned checkpoint's."""
    from transformers import AutoModelForCausalLM

    base = prunekit.load(real_float_dir)
    prunekit.prune(base, "llm-pruner", param_ratio=0.1, data_root=data_root, progress=False,
                   calibration=prunekit.CalibrationSettings(nsamples=2, seqlen=64))
    record = prunekit.prune(base, "shortgpt", remove_layers=4, data_root=data_root, progress=False,
                            calibration=prunekit.CalibrationSettings(nsamples=2, seqlen=64))
    checkpoint = tmp_path / "pruned"
    prunekit.save(base, checkpoint, record=record, report=False)
    config = json.loads((checkpoint / "config.json").read_text())
    assert "prunekit_shapes" in config and config["num_hidden_layers"] == 26

    record = export_gguf(checkpoint, tmp_path / "pruned.gguf", "f32")
    assert record["gguf_architecture"] == "deci"
    from gguf import GGUFReader

    fields = GGUFReader(tmp_path / "pruned.gguf").fields
    heads = list(fields["deci.attention.head_count"].contents())
    widths = list(fields["deci.feed_forward_length"].contents())
    assert len(heads) == len(widths) == 26 and len(set(widths)) > 1
    reference = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32, trust_remote_code=True)
    expected = _logits(reference, IDS)
    got = _llamacpp_logits(tmp_path / "pruned.gguf", IDS)
    assert (got - expected).abs().max() < 1e-2 * expected.abs().max()
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean() > 0.95


def test_quantized_export_is_smaller_and_runs(tmp_path, tiny_model_dir, converter, capsys):
    source = tiny_model_dir("llama")
    f16 = export_gguf(source, tmp_path / "f16.gguf", "f16")
    q8 = export_gguf(source, tmp_path / "q8.gguf", "q8_0")
    assert q8["size_mb"] < 0.6 * f16["size_mb"]
    assert not any("do not divide" in note for note in q8["notes"])  # 64 columns: two q8_0 blocks each
    q4 = export_gguf(source, tmp_path / "q4.gguf", "q4_k_m")  # 64 < one 256-column k-quant block
    assert any("256-column q4_k_m blocks do not divide (64, 128)" in note for note in q4["notes"])
    logits = _llamacpp_logits(tmp_path / "q8.gguf", IDS)
    assert torch.isfinite(logits).all()
    capsys.readouterr()
    assert run_cli("export", "--model", source, "--outtype", "q8_0", "--out", tmp_path / "q8.gguf") != 0
    assert "exists" in only_error_line(capsys)


def test_factored_svd_is_written_dense(tmp_path, tiny_model_dir, converter):
    base = prunekit.load(tiny_model_dir("llama"))
    record = prunekit.prune(base, "svd", rate=0.5, factored=True, progress=False)
    checkpoint = tmp_path / "factored"
    prunekit.save(base, checkpoint, record=record, report=False)
    assert json.loads((checkpoint / "config.json").read_text()).get("prunekit_factored")
    record = export_gguf(checkpoint, tmp_path / "svd.gguf", "f32")
    assert any("written back dense" in note for note in record["notes"])
    expected = _logits(base.model, IDS)
    got = _llamacpp_logits(tmp_path / "svd.gguf", IDS, f32_cache=True)  # f32 weights and cache: near exact
    assert (got - expected).abs().max() < 1e-3 * expected.abs().max()


def test_report_page_has_a_llamacpp_section(tmp_path, tiny_model_dir):
    """A `bench --engine llama.cpp --json` file passed to `prunekit report --bench` becomes its own section."""
    from prunekit.report.page import build_sections, render_markdown

    base = prunekit.load(tiny_model_dir("llama"))
    record = prunekit.build_record(base, [prunekit.prune(base, "magnitude", sparsity=0.5, progress=False)])
    bench = {"engine": "llama.cpp", "llama_cpp_python": "0.3.36", "threads": 2,
             "speed": {label: {"file_mb": mb, "load_s": 0.1, "prompt_tok_s": pp, "gen_tok_s": tg, "prompt_len": 128,
                               "new_tokens": 64, "repeats": 5}
                       for label, mb, pp, tg in (("model", 80.0, 900.0, 60.0), ("baseline", 100.0, 700.0, 50.0))},
             "ratios": {"file_mb": 0.8, "prompt_speedup": 1.2857, "gen_speedup": 1.2},
             "perplexity": {"wikitext2": {"windows": 4, "seqlen": 2048, "model_llamacpp": 30.1, "baseline_llamacpp": 20.2,
                                          "model_prunekit": 30.0}}}
    page = render_markdown("t", build_sections(record, tmp_path, tmp_path, cost=bench))
    section = page.split("## llama.cpp", 1)[1]
    assert "generation tokens/s" in section and "1.2" in section and "30.1" in section and "prunekit on the HF" in section
    assert "## Cost" not in page


def test_imatrix_from_calibration_names_every_matrix(tmp_path, tiny_model_dir, converter, data_root):
    """--imatrix calibration: one vector per GGUF matrix (7 per layer + the LM head), equal to the
    mean squared input the HF module saw, and the quantizer accepts it."""
    from transformers import AutoModelForCausalLM

    from prunekit.export.imatrix import activation_imatrix, gguf_names

    source = tiny_model_dir("llama")
    f32 = export_gguf(source, tmp_path / "f32.gguf", "f32")
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    values = activation_imatrix(model, IDS, progress=False)
    named = gguf_names(values, Path(f32["file"]))
    assert len(named) == 7 * 2 + 1 and "blk.1.ffn_down.weight" in named and "output.weight" in named
    inputs = {}
    hook = model.model.layers[1].mlp.down_proj.register_forward_pre_hook(lambda _m, a: inputs.update(x=a[0]))
    with torch.no_grad():
        model(IDS)
    hook.remove()
    expected = (inputs["x"][0] ** 2).mean(0).numpy()
    assert abs(named["blk.1.ffn_down.weight"] - expected).max() < 1e-5 * abs(expected).max()
    record = export_gguf(source, tmp_path / "q4.gguf", "q4_k_m", imatrix="calibration", data_root=data_root,
                         calibration=prunekit.CalibrationSettings(corpus="c4", nsamples=2, seqlen=64), progress=False)
    assert any("importance matrix from 2 × 64" in note for note in record["notes"])
    assert torch.isfinite(_llamacpp_logits(tmp_path / "q4.gguf", IDS)).all()


def test_gguf_in_gguf_out_keeps_the_input_type(tmp_path, real_model_dir, tiny_model_dir, converter, capsys):
    """prune --export-gguf on the shared Q4_1 GGUF writes a Q4_1 GGUF of the pruned model that llama.cpp runs."""
    from gguf import GGUFReader, LlamaFileType

    out = tmp_path / "short"
    assert run_cli("prune", "--model", real_model_dir, "--method", "shortgpt", "--remove-layers", "2",
                   "--nsamples", "2", "--seqlen", "64", "--out", out, "--export-gguf", "--no-progress") == 0
    written = out / "short.q4_1.gguf"
    assert f"wrote {written}" in capsys.readouterr().out
    fields = GGUFReader(written).fields
    assert LlamaFileType(int(fields["general.file_type"].contents())) == LlamaFileType.MOSTLY_Q4_1
    assert int(fields["llama.block_count"].contents()) == 28
    assert torch.isfinite(_llamacpp_logits(written, IDS)).all()
    # "same" needs a GGUF input, and is refused before any pruning
    assert run_cli("prune", "--model", tiny_model_dir("llama"), "--method", "magnitude", "--sparsity", "0.5",
                   "--out", tmp_path / "m", "--export-gguf", "same") != 0
    assert "input GGUF's type" in only_error_line(capsys) and not (tmp_path / "m").exists()
