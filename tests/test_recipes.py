"""YAML recipes: composition of methods, validation before any work (with the recipe line),
records per step, and --resume after an interruption giving the same model as one run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from prunekit.cli import main
from prunekit.errors import ArgumentError
from prunekit.recipe import parse_recipe
from prunekit.runner import run_recipe, work_dir_for
from test_cli import only_error_line

RECIPE = """\
calibration: {nsamples: 4, seqlen: 64}
steps:
  - method: shortgpt
    remove_layers: 1
  - method: wanda
    pattern: "2:4"
  - method: lora
    steps: 2
    batch_size: 1
    seqlen: 32
  - method: eval
    ppl: wikitext2
    max_windows: 1
"""


def test_recipe_composes_depth_unstructured_lora_eval(tiny_model_dir, data_root, tmp_path):
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(RECIPE)
    out = tmp_path / "out"
    assert main(["run", str(recipe_file), "--model", str(tiny_model_dir("llama")), "--out", str(out),
                 "--data-root", str(data_root), "--no-progress"]) == 0
    record = json.loads((out / "prunekit.json").read_text())
    assert [s["step"]["method"] for s in record["steps"]] == ["shortgpt", "wanda", "lora", "eval"]
    assert [s["recipe_line"] for s in record["steps"]] == [3, 5, 7, 11]
    assert record["steps"][0]["depth"]["layers_after"] == 1 and "wikitext2" in record["ppl"]
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 1
    for name, param in model.named_parameters():  # 2:4 survives the merged LoRA
        if "layers.0" in name and name.endswith("proj.weight"):
            assert (param.reshape(-1, 4) == 0).sum(1).min() >= 2, name
    assert not work_dir_for(out).exists()
    page = (out / "report" / "report.md").read_text()
    assert "## Depth (step 1)" in page and "## Recovery (step 3)" in page and "| wikitext2 |" in page


def test_resume_after_interruption_matches_one_run(tiny_model_dir, data_root, tmp_path):
    recipe = parse_recipe(RECIPE.replace("  - method: eval\n    ppl: wikitext2\n    max_windows: 1\n", ""), "r.yaml")
    model = str(tiny_model_dir("llama"))
    whole, _ = run_recipe(recipe, model, tmp_path / "whole", data_root=data_root, progress=False)

    def interrupt(number, item, record):
        if number == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_recipe(recipe, model, tmp_path / "resumed", data_root=data_root, progress=False, on_step=interrupt)
    assert not (tmp_path / "resumed").exists() and work_dir_for(tmp_path / "resumed").is_dir()
    resumed, record = run_recipe(recipe, model, tmp_path / "resumed", resume=True, data_root=data_root, progress=False)
    assert [s["step"]["method"] for s in record["steps"]] == ["shortgpt", "wanda", "lora"]
    ids = torch.arange(1, 33)[None]
    a, b = (AutoModelForCausalLM.from_pretrained(p)(ids).logits for p in (whole, resumed))
    assert torch.equal(a, b)


@pytest.mark.parametrize("text, expected", [
    ("steps:\n  - method: wanda\n    sparsity: 0.5\n  - method: nosuch\n", "line 4 (step 2: nosuch)"),
    ("steps:\n  - method: wanda\n    sparsity: 0.5\n    colour: red\n", "line 2 (step 1: wanda): method 'wanda' has no option colour"),
    ("steps:\n  - method: svd\n    rate: 0.5\n    factored: true\n  - method: magnitude\n    pattern: '2:4'\n",
     "line 5 (step 2: magnitude): impossible order"),
    ("steps:\n  - method: wanda\n    sparsity: 0.5\n    pattern: '2:4'\n", "line 2 (step 1: wanda)"),
    ("steps:\n  - method: eval\n    tasks: [piqa, sciq]\n", "line 2 (step 1: eval): unknown zero-shot task"),
    ("steps:\n  - method: lora\n    stepz: 3\n", "unknown LoRA keys stepz"),
    ("steps: []\n", "no steps"),
    ("steps:\n  - method: wanda\n   sparsity: 0.5\n", "not valid YAML"),
])
def test_recipe_validation_names_the_line(text, expected):
    with pytest.raises(ArgumentError) as error:
        parse_recipe(text, "r.yaml")
    assert expected in str(error.value) and str(error.value).startswith("r.yaml")


def test_targets_checked_against_the_model_before_any_work(tiny_model_dir, data_root, tmp_path, capsys):
    """The tiny model has 2 layers; after removing one, layer 1 no longer exists."""
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text("steps:\n  - method: shortgpt\n    remove_layers: 1\n    metric: reverse\n"
                           "  - method: magnitude\n    sparsity: 0.5\n    layers: '1'\n")
    out = tmp_path / "out"
    assert main(["run", str(recipe_file), "--model", str(tiny_model_dir("llama")), "--out", str(out),
                 "--data-root", str(data_root), "--no-progress"]) != 0
    line = only_error_line(capsys)
    assert "r.yaml line 5 (step 2: magnitude)" in line and "1 layers at this step" in line
    assert not out.exists() and not work_dir_for(out).exists()
    recipe_file.write_text("steps:\n  - method: magnitude\n    sparsity: 0.5\n    roles: q,fc1\n")
    assert main(["run", str(recipe_file), "--model", str(tiny_model_dir("llama")), "--out", str(out)]) != 0
    assert "fc1" in only_error_line(capsys)
    assert main(["run", str(tmp_path / "missing.yaml"), "--model", "x", "--out", str(out)]) != 0
    assert "recipe not found" in only_error_line(capsys)


DEPTH_RECIPE = """\
steps:
  - method: magnitude
    sparsity: 0.3
  - method: shortgpt
    remove_layers: 1
    metric: reverse
  - method: magnitude
    sparsity: 0.5
"""


def _interrupt_when(monkeypatch, target, name, predicate):
    """Make ``target.name`` raise KeyboardInterrupt on the call where ``predicate(*args)`` holds."""
    original = getattr(target, name)

    def wrapped(*args, **kwargs):
        if predicate(*args):
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, wrapped)


@pytest.mark.parametrize("where", ["saving the checkpoint", "between checkpoint and state", "before the old commit is removed"])
def test_an_interrupted_commit_never_runs_a_step_twice(tiny_model_dir, data_root, tmp_path, monkeypatch, where):
    """Killed at each point of committing step 2 (which removes a layer): --resume starts from the
    last whole commit, so the layer is removed once, and the result equals an uninterrupted run."""
    import prunekit.runner as runner

    recipe = parse_recipe(DEPTH_RECIPE, "r.yaml")
    model = str(tiny_model_dir("llama"))
    whole, _ = run_recipe(recipe, model, tmp_path / "whole", data_root=data_root, progress=False)
    with monkeypatch.context() as patch:
        if where == "saving the checkpoint":
            _interrupt_when(patch, runner.api, "save", lambda lm, out, **_: ".step-0002.tmp" in str(out))
        elif where == "between checkpoint and state":
            _interrupt_when(patch, runner, "write_json", lambda path, data: "step-0002" in str(path))
        else:
            _interrupt_when(patch, runner.shutil, "rmtree",  # step 2's rename is done, step 1's commit not yet gone
                            lambda path, *a, **k: str(path).endswith("step-0001") and (Path(path).parent / "step-0002").is_dir())
        with pytest.raises(KeyboardInterrupt):
            run_recipe(recipe, model, tmp_path / "resumed", data_root=data_root, progress=False)
    assert not (tmp_path / "resumed").exists()
    resumed, record = run_recipe(recipe, model, tmp_path / "resumed", resume=True, data_root=data_root, progress=False)
    assert [s["step"]["method"] for s in record["steps"]] == ["magnitude", "shortgpt", "magnitude"]
    a, b = (AutoModelForCausalLM.from_pretrained(p) for p in (whole, resumed))
    assert a.config.num_hidden_layers == b.config.num_hidden_layers == 1
    ids = torch.arange(1, 33)[None]
    assert torch.equal(a(ids).logits, b(ids).logits)
    assert not work_dir_for(tmp_path / "resumed").exists()


def test_resume_refuses_a_model_changed_in_place(tiny_model_dir, data_root, tmp_path):
    """The fingerprint is the model's content, not its path: new weights under the same path are refused."""
    import shutil

    from transformers import AutoModelForCausalLM as Auto

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir("llama"), model_dir)
    recipe = parse_recipe(DEPTH_RECIPE, "r.yaml")

    def interrupt(number, item, record):
        if number == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_recipe(recipe, str(model_dir), tmp_path / "out", data_root=data_root, progress=False, on_step=interrupt)
    changed = Auto.from_pretrained(model_dir)
    with torch.no_grad():
        changed.model.layers[0].mlp.up_proj.weight.mul_(2)
    changed.save_pretrained(model_dir)
    with pytest.raises(ArgumentError, match="another recipe or model"):
        run_recipe(recipe, str(model_dir), tmp_path / "out", resume=True, data_root=data_root, progress=False)
