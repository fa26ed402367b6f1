"""Every ``prunekit`` command in the README's code blocks runs as written, on a tiny model.

A command is taken as the README prints it: continuation lines joined, the trailing comment and
the ``[optional]`` parts dropped, ``DIR`` the tiny model, ``MOE_DIR`` a tiny mixture-of-experts one, ``OUT`` (and ``OUT-lora``, ``OUT-50``…)
folders that the commands share in README order, so ``check --model OUT`` reads what the prune
above it wrote. Only sizes change, so that the whole README runs in a minute: long loops
(``--steps 100``) are cut short and, where the command has the flag, calibration, evaluation
windows and task examples are capped. The recipe is the README's YAML block, with the same caps.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from test_cli import run_cli

README = Path(__file__).resolve().parents[1] / "README.md"
SIZES = {"--steps": "2", "--heal-steps": "2"}  # README value -> the test's, where a command sets one
FISTA_SIZES = ["--fista-iterations", "3", "--fista-final-iterations", "3", "--bisection-steps", "4",
               "--refit-iterations", "3", "--lambda-ladder", "0"]
CALIBRATED = ("wanda", "sparsegpt", "fista", "shortgpt", "llm-pruner", "spp", "expert-prune")
CAPS = {  # command -> flags added when the command has the named trigger
    "prune": [("--method", CALIBRATED, ["--nsamples", "4", "--seqlen", "64"]),
              ("--method", ("spp",), ["--lbi-iterations", "40"]),
              ("--method", ("fista",), FISTA_SIZES),
              ("--heal", None, ["--heal-seqlen", "32", "--heal-batch-size", "1"])],
    "eval": [("--ppl", None, ["--max-windows", "2", "--eval-seqlen", "128"]), ("--tasks", None, ["--limit", "2"]),
             ("--icl", None, ["--icl-limit", "4", "--shots", "1"])],
    "search-svd": [("--task", None, ["--validation-limit", "4", "--test-limit", "4", "--shots", "1"])],
    "analyze": [("--what", ("bi",), ["--nsamples", "2", "--seqlen", "64"])],
    "recover": [("--model", None, ["--steps", "2", "--seqlen", "32", "--batch-size", "1"])],
    "bench": [("--model", None, ["--repeats", "1", "--new-tokens", "2", "--prompt-len", "16"])],
}


def readme_commands(text: str) -> list[str]:
    """The ``prunekit`` command lines of the README's bash blocks, optional parts and comments removed."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("#", 1)[0].strip()
            if not line.startswith("prunekit "):
                continue
            while re.search(r"\[[^\[\]]*\]", line):
                line = re.sub(r"\s*\[[^\[\]]*\]", "", line)
            commands.append(line)
    return commands


def recipe_text(text: str) -> str:
    recipe = re.search(r"```yaml\n(.*?)```", text, flags=re.S).group(1)
    return recipe.replace("steps: 100", "steps: 2").replace("limit: 200", "limit: 2").replace(
        "ppl: [wikitext2]", "ppl: [wikitext2]\n    max_windows: 2\n    eval_seqlen: 128").replace(
        "nsamples: 128, seqlen: 512", "nsamples: 4, seqlen: 64").replace("nsamples: 32", "nsamples: 4").replace(
        "pattern: \"2:4\"", "pattern: \"2:4\"\n    " + "\n    ".join(
            f"{flag[2:].replace('-', '_')}: {value}" for flag, value in zip(FISTA_SIZES[::2], FISTA_SIZES[1::2])))


def _sized(argv: list[str]) -> list[str]:
    argv = [SIZES[prev] if prev in SIZES else value for prev, value in zip([""] + argv, argv)]
    for trigger, values, extra in CAPS.get(argv[0], []):
        if trigger in argv and (values is None or argv[argv.index(trigger) + 1] in values):
            for flag, value in zip(extra[::2], extra[1::2]):
                if flag not in argv:
                    argv += [flag, value]
    return argv


@pytest.fixture
def deep_tiny_model(tmp_path_factory, tokenizer) -> Path:
    """A tiny Llama deep enough for ``--remove-layers 6``, wide enough in context for ICL prompts, and
    with enough of its parameters in heads and MLP channels for the README's ``--param-ratio 0.2``
    (a tied embedding; its 49,152-row vocabulary would otherwise hold 95% of them)."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    config = tf.LlamaConfig(hidden_size=64, intermediate_size=512, num_hidden_layers=8, num_attention_heads=4,
                            num_key_value_heads=2, max_position_embeddings=2048, vocab_size=49152,
                            tie_word_embeddings=True)
    path = tmp_path_factory.mktemp("readme-model")
    tf.AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def tiny_moe_model(tmp_path_factory, tokenizer) -> Path:
    from prunekit.models.tiny import tiny_model

    path = tmp_path_factory.mktemp("readme-moe")
    tiny_model("qwen3_moe").save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_every_readme_command_runs_as_written(deep_tiny_model, tiny_moe_model, data_root, tmp_path, monkeypatch,
                                              capsys):
    text = README.read_text()
    commands = readme_commands(text)
    assert len(commands) >= 25 and any(c.startswith("prunekit run recipe.yaml") for c in commands)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PRUNEKIT_DATA", str(data_root))
    (tmp_path / "recipe.yaml").write_text(recipe_text(text))
    (tmp_path / "layers.json").write_text("[0.5, 0.55, 0.6, 0.65, 0.55, 0.6, 0.65, 0.7]")
    for command in commands:
        argv = command.split()[1:]
        outs = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--out" and argv[i + 1].startswith("OUT")]
        models = {"DIR": str(deep_tiny_model), "MOE_DIR": str(tiny_moe_model)}
        argv = [models[a] if a in models else str(tmp_path / a) if re.fullmatch(r"OUT(-\w+)?", a) else a
                for a in argv]
        for out in outs:  # a command's OUT is fresh, as for a reader running this line
            shutil.rmtree(tmp_path / out, ignore_errors=True)
        argv = _sized(argv) + (["--no-progress"] if argv[0] not in ("methods", "tasks", "report") and
                               "--help" not in argv else [])
        if "--help" in argv:
            with pytest.raises(SystemExit) as exit_info:
                run_cli(*argv)
            code = exit_info.value.code
        else:
            code = run_cli(*argv)
        captured = capsys.readouterr()
        assert code == 0, f"{command}\n  ran as: prunekit {' '.join(argv)}\n{captured.err[-2000:]}"
