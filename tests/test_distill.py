"""Distillation recovery: the loss pieces, the layer map, masks kept, the teacher found, bad input."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

import prunekit
from prunekit.data import calibration_windows
from prunekit.errors import ArgumentError
from prunekit.recovery import KdSettings
from prunekit.recovery.distill import distill_kl, layer_map, lineage, relative_hidden_error
from prunekit.sparsity import check_nm

from test_cli import only_error_line, run_cli

FAST = dict(steps=12, batch_size=2, seqlen=32, seed=0)


def test_kl_is_zero_for_equal_logits_and_top_k_of_everything_is_the_full_kl():
    torch.manual_seed(0)
    teacher, student = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    assert distill_kl(teacher, teacher, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    full = distill_kl(student, teacher, 2.0)
    top = teacher.topk(11, dim=-1)
    assert distill_kl(student, top.values, 2.0, top.indices).item() == pytest.approx(full.item(), rel=1e-5)
    few = teacher.topk(3, dim=-1)
    assert distill_kl(student, few.values, 2.0, few.indices).item() >= 0
    h = [torch.ones(2, 3, 4) * 10, torch.ones(2, 3, 4)]
    assert relative_hidden_error(h, h).item() == 0
    assert relative_hidden_error([h[0] * 1.1, h[1] * 1.1], h).item() == pytest.approx(0.01, rel=1e-4)


def test_the_layer_map_composes_depth_steps():
    steps = [{"depth": {"kept": [0, 1, 3, 4, 5]}}, {"width": {}}, {"depth": {"kept": [0, 2, 3, 4]}}]
    assert layer_map(steps, 6) == [0, 3, 4, 5]
    assert layer_map([], 3) == [0, 1, 2]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tokenizer):
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=256, vocab_size=49152)
    path = tmp_path_factory.mktemp("teacher")
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _held_out_kl(student, teacher_dir, data_root):
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir)
    ids = calibration_windows(student.tokenizer, "c4", nsamples=4, seqlen=32, seed=123, data_root=data_root).ids
    with torch.no_grad():
        return distill_kl(student.model(input_ids=ids).logits, teacher(input_ids=ids).logits, 1.0).item()


@pytest.mark.parametrize("topk", [0, 64])
def test_kd_lowers_the_kl_to_the_teacher_on_held_out_windows(teacher_dir, data_root, topk):
    student = prunekit.load(teacher_dir)
    prunekit.prune(student, "magnitude", sparsity=0.6, progress=False)
    before = _held_out_kl(student, teacher_dir, data_root)
    step = prunekit.recover(student, KdSettings(**FAST, lr=2e-3, kd_topk=topk), data_root=data_root, progress=False)
    after = _held_out_kl(student, teacher_dir, data_root)
    report = step["recovery"]
    assert step["step"]["method"] == "kd" and report["objective"] == "kd"
    assert after < 0.9 * before, (before, after)
    assert report["teacher"]["model"] == str(teacher_dir) or report["teacher"]["model"] == teacher_dir
    assert ("precomputed" in report["teacher"]["mode"]) == (topk > 0)
    assert report["sparsity_after"] == pytest.approx(report["sparsity_before"])
    assert set(report["loss_parts"]) == {"kd"} and report["peak_rss_mb"] > 0
    # the report's own held-out measurement (windows drawn after the training ones, the training objective:
    # with top-K the KL to the renormalised top-K, which a random teacher's flat distribution keeps high) agrees
    assert report["heldout_windows"] == 8 and report["heldout_loss_after"] < report["heldout_loss_before"]


def test_kd_full_keeps_the_masks_exact(teacher_dir, data_root):
    student = prunekit.load(teacher_dir)
    prunekit.prune(student, "magnitude", pattern="2:4", progress=False)
    masks = {v.name: v.weight == 0 for i in range(4) for v in student.adapter.linears(i)}
    step = prunekit.recover(student, KdSettings(**FAST, lr=1e-3, kd_params="full", kd_ce_weight=0.5),
                            data_root=data_root, progress=False)
    report = step["recovery"]
    assert report["params"] == "full" and report["pruned_entries_moved_before_remask"] == 0
    assert set(report["loss_parts"]) == {"kd", "ce"}
    for index in range(4):
        for view in student.adapter.linears(index):
            assert torch.equal(view.weight == 0, masks[view.name]) and check_nm(view.weight, 2, 4)
    dense = AutoModelForCausalLM.from_pretrained(teacher_dir)
    assert not torch.equal(dense.model.embed_tokens.weight, student.model.model.embed_tokens.weight)  # all weights trained


def test_a_depth_pruned_student_maps_its_layers_to_the_teachers(teacher_dir, data_root, tmp_path, capsys):
    out = tmp_path / "short"
    assert run_cli("prune", "--model", teacher_dir, "--method", "shortgpt", "--layers", "1", "--out", out,
                   "--no-progress") == 0
    source, steps = lineage({"model": str(out)})
    assert source["model"] == str(teacher_dir) and steps[0]["depth"]["kept"] == [0, 2, 3]
    healed = tmp_path / "healed"
    assert run_cli("recover", "--model", out, "--objective", "kd", "--kd-hidden-weight", "1.0", "--steps", "6",
                   "--batch-size", "2", "--seqlen", "32", "--data-root", data_root, "--out", healed,
                   "--no-progress") == 0
    record = json.loads((healed / "prunekit.json").read_text())
    report = record["steps"][0]["recovery"]
    assert report["layer_map"] == [0, 2, 3] and set(report["loss_parts"]) == {"kd", "hidden"}
    assert (healed / "loss.png").is_file() and "Recovery (step 1)" in (healed / "report" / "report.md").read_text()
    # in one run: prune then --heal kd maps the layers from the run's own depth step
    both = tmp_path / "both"
    assert run_cli("prune", "--model", teacher_dir, "--method", "shortgpt", "--layers", "2", "--heal", "kd",
                   "--heal-kd-hidden-weight", "0.5", "--heal-steps", "4", "--heal-batch-size", "2", "--heal-seqlen", "32",
                   "--data-root", data_root, "--out", both, "--no-progress") == 0
    steps = json.loads((both / "prunekit.json").read_text())["steps"]
    assert steps[1]["recovery"]["layer_map"] == [0, 1, 3]


def test_bad_distillation_input_is_one_clear_error(teacher_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli("recover", "--model", teacher_dir, "--kd-alpha", "2", "--out", out, "--no-progress") == 2
    assert "--kd-alpha apply to distillation: add --objective kd" in only_error_line(capsys) and not out.exists()
    assert run_cli("recover", "--model", teacher_dir, "--objective", "kd", "--teacher", tmp_path / "nowhere",
                   "--out", out, "--no-progress") == 2
    assert "does not exist" in only_error_line(capsys) and not out.exists()
    assert run_cli("recover", "--model", teacher_dir, "--objective", "kd", "--kd-alpha", "0", "--out", out,
                   "--no-progress") == 2
    assert "needs a loss" in only_error_line(capsys)
    with pytest.raises(ArgumentError, match="--kd-params must be one of"):
        KdSettings(kd_params="half").validate()
