"""Zero-shot multiple choice: local data in the harness's layout, the harness's numbers, and
prunekit's own scorer agreeing with the harness on the same examples (real model)."""

from __future__ import annotations

import json

import pytest

from prunekit.cli import main
from test_cli import only_error_line
from prunekit.data.choice_tasks import READERS, mmlu_subject, mmlu_subjects
from prunekit.eval.zero_shot import build_task, score_with_prunekit

# the data README's counts
EXPECTED = {"boolq": 3270, "piqa": 1838, "hellaswag": 10042, "winogrande": 1267, "arc_easy": 2376,
            "arc_challenge": 1172, "openbookqa": 500}



def test_local_task_files_have_the_documented_sizes(data_root):
    for name, count in EXPECTED.items():
        assert len(READERS[name](data_root).docs) == count, name
    subjects = mmlu_subjects(data_root)
    assert len(subjects) == 57
    assert sum(len(mmlu_subject(data_root, s).docs) for s in subjects) == 14042


@pytest.mark.parametrize("name", sorted(EXPECTED) + ["mmlu"])
def test_harness_configs_read_the_local_docs(data_root, name):
    """Every doc renders with the harness's own prompt and its gold is a valid choice."""
    task = build_task(name, data_root, "anatomy" if name == "mmlu" else None)
    docs = list(task.eval_docs)
    assert len(docs) == (EXPECTED.get(name) or 135)
    for doc in docs[:50]:
        choices = task.doc_to_choice(doc)
        gold = task.doc_to_text(doc) if task.multiple_input else task.doc_to_target(doc)
        gold = gold if isinstance(gold, int) else choices.index(gold)
        assert 0 <= gold < len(choices) and len(choices) >= 2
    if name == "arc_easy":
        assert task.doc_to_text(docs[0]).startswith("Question: ") and task.doc_to_text(docs[0]).endswith("\nAnswer:")
    if name == "mmlu":
        assert "about anatomy" in task.config.description


@pytest.mark.real_model
def test_prunekit_scorer_agrees_with_the_harness(real_lm, data_root):
    """Same examples, same model: per-example correctness and log-likelihoods equal the harness's
    (BoolQ: long context; WinoGrande: partial scoring; HellaSwag: 4 choices, acc_norm)."""
    from lm_eval import evaluator
    from lm_eval.models.huggingface import HFLM

    harness = HFLM(pretrained=real_lm.model, tokenizer=real_lm.tokenizer, batch_size=8, device="cpu")
    for name in ("boolq", "winogrande", "hellaswag"):
        out = evaluator.evaluate(lm=harness, task_dict={name: build_task(name, data_root)}, limit=4,
                                 bootstrap_iters=0, log_samples=True, verbosity="ERROR")
        samples = sorted(out["samples"][name], key=lambda s: s["doc_id"])
        ours = score_with_prunekit(real_lm.model, real_lm.tokenizer, build_task(name, data_root), limit=4)
        assert ours["correct"] == [int(s["acc"]) for s in samples], name
        if "acc_norm" in samples[0]:
            assert ours["acc_norm"] == pytest.approx(out["results"][name]["acc_norm,none"]), name
        theirs = [resp[0][0] for s in samples for resp in s["resps"]]
        assert ours["logliks"] == pytest.approx(theirs, abs=2e-3), name


def test_cli_zero_shot_json(tiny_model_dir, data_root, tmp_path):
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(tiny_model_dir("llama")), "--tasks", "piqa,arc_challenge", "--limit", "3",
                 "--data-root", str(data_root), "--json", str(out), "--no-progress"]) == 0
    result = json.loads(out.read_text())
    assert set(result["tasks"]) == {"piqa", "arc_challenge"}
    for task in result["tasks"].values():
        assert task["examples"] == 3 and 0 <= task["acc"] <= 1 and 0 <= task["acc_norm"] <= 1
    assert result["zero_shot"]["mean_acc"] == pytest.approx(
        (result["tasks"]["piqa"]["acc"] + result["tasks"]["arc_challenge"]["acc"]) / 2)


def test_cli_zero_shot_bad_input(tmp_path, data_root, capsys):
    """Checked before the model is loaded: the model path here does not even exist."""
    missing_model = tmp_path / "no-model"
    assert main(["eval", "--model", str(missing_model), "--tasks", "piqa,sciq"]) != 0
    line = only_error_line(capsys)
    assert "sciq" in line and "boolq" in line and "hellaswag" in line
    assert main(["eval", "--model", str(missing_model), "--tasks", "piqa", "--limit", "0"]) != 0
    assert "--limit" in only_error_line(capsys)
    empty_root = tmp_path / "data"
    empty_root.mkdir()
    assert main(["eval", "--model", str(missing_model), "--tasks", "openbookqa", "--data-root", str(empty_root)]) != 0
    assert "openbookqa/test.jsonl" in only_error_line(capsys)
