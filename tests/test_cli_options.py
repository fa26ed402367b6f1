"""The prune command's options: per-method help, options a method would ignore, honest summaries."""

import pytest

from test_cli import only_error_line as error_line, run_cli


def test_method_help_shows_that_methods_options_on_one_screen(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli("prune", "--method", "wanda", "--help")
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert len(text.splitlines()) <= 64
    assert "wanda options:" in text and "--wanda-variant" in text and "--report-error" in text
    assert "--blocksize" not in text and "--lbi-kappa" not in text and "--heal-steps" not in text
    with pytest.raises(SystemExit):
        run_cli("prune", "--method", "sparsegpt", "--heal", "lora", "--help")
    text = capsys.readouterr().out
    assert "sparsegpt options:" in text and "--blocksize" in text and "--heal-steps" in text


def test_methods_lists_each_method_once_and_shared_help_once(capsys):
    assert run_cli("methods") == 0
    text = capsys.readouterr().out
    assert text.count("--workers:") == 1 and text.count("--report-error:") == 1
    assert "fista — FISTAPruner's L1 layer-wise model" in text and "Wanda warm start" in text
    for name in ("magnitude", "wanda", "sparsegpt", "ria", "fista", "llm-pruner", "spp", "shortgpt", "svd"):
        assert sum(line.startswith(f"{name} — ") for line in text.splitlines()) == 1, name


@pytest.mark.parametrize("extra,message", [
    (["--method", "wanda", "--sparsity", "0.5", "--blocksize", "64"], "method 'wanda' has no option blocksize"),
    (["--method", "magnitude", "--sparsity", "0.5", "--nsamples", "8"],
     "magnitude as configured uses no calibration data: --nsamples would have no effect (add --report-error"),
    (["--method", "magnitude", "--pattern", "2:4", "--calib-seed", "3"], "--calib-seed would have no effect"),
    (["--method", "shortgpt", "--metric", "random", "--remove-layers", "1", "--calib", "pg19"],
     "uses no calibration data: --calib"),
    (["--method", "llm-pruner", "--ratio", "0.25", "--calib-batch-size", "2"], "--calib-batch-size does not apply"),
    (["--method", "shortgpt", "--remove-layers", "1", "--sparsity", "0.5"], "not --sparsity/--pattern"),
])
def test_an_option_the_method_would_ignore_is_an_error(tiny_model_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "never"
    assert run_cli("prune", "--model", tiny_model_dir("llama"), "--out", out, "--no-progress", *extra) != 0
    assert message in error_line(capsys)
    assert not out.exists()


def test_summaries_of_partial_and_low_rank_runs(tiny_model_dir, data_root, tmp_path, capsys):
    model = tiny_model_dir("llama")
    assert run_cli("prune", "--model", model, "--method", "magnitude", "--sparsity", "0.5", "--layers", "0",
                   "--out", tmp_path / "half", "--no-progress") == 0
    line = capsys.readouterr().out
    assert "sparsity 0.5000 of the 7 pruned matrices, 0.2500 of all decoder linears" in line
    assert run_cli("prune", "--model", model, "--method", "svd", "--rate", "0.9", "--modules", "k,o", "--layers",
                   "last:2", "--out", tmp_path / "svd", "--no-progress") == 0
    line = capsys.readouterr().out
    assert "with svd (rate 0.9): 4 matrices, their parameters" in line and "(written back dense)" in line
    assert run_cli("prune", "--model", model, "--method", "svd", "--rate", "0.9", "--modules", "k,o", "--layers",
                   "last:2", "--factored", "--select", "top-k-condition", "--out", tmp_path / "svd-f",
                   "--no-progress") == 0
    assert "(stored as factors)" in capsys.readouterr().out
    assert run_cli("prune", "--model", model, "--method", "magnitude", "--sparsity", "0.5", "--report-error",
                   "--nsamples", "4", "--seqlen", "32", "--data-root", data_root, "--out", tmp_path / "err",
                   "--no-progress") == 0


def test_renamed_flags_and_keys_still_work_once_with_a_warning(tiny_model_dir, tmp_path, capsys):
    """Old spellings (--alpha-power, --seed, --heal-rank, recipe/API keys) act as the new ones and
    warn; giving both spellings of one option is an error."""
    from safetensors.torch import load_file
    from prunekit.errors import ArgumentError

    model = tiny_model_dir("llama")
    runs = {}
    for name, flags in (("new", ["--ria-activation-exponent", "0.3", "--calib-seed", "4"]),
                        ("old", ["--alpha-power", "0.3", "--seed", "4"])):
        runs[name] = tmp_path / name
        assert run_cli("prune", "--model", model, "--method", "ria", "--sparsity", "0.5", "--nsamples", "4",
                       "--seqlen", "32", "--out", runs[name], "--no-progress", *flags) == 0
        captured = capsys.readouterr()
        if name == "old":
            assert "--alpha-power is renamed --ria-activation-exponent" in captured.err
            assert "--seed is renamed --calib-seed" in captured.err
        else:
            assert "renamed" not in captured.err
    new, old = (load_file(runs[n] / "model.safetensors") for n in ("new", "old"))
    assert all(new[k].equal(old[k]) for k in new)
    assert run_cli("prune", "--model", model, "--method", "wanda", "--sparsity", "0.5", "--variant", "--nsamples", "4",
                   "--seqlen", "32", "--out", tmp_path / "variant", "--no-progress") == 0
    assert "--variant is renamed --wanda-variant" in capsys.readouterr().err
    from prunekit.cli import build_parser
    from prunekit.methods import available_methods

    args = build_parser().parse_args(["recover", "--model", "M", "--out", "O", "--rank", "4", "--alpha", "8"])
    assert (args.rank, args.alpha) == (4, 8.0) and "--rank is renamed --lora-rank" in capsys.readouterr().err
    args = build_parser(heal=True).parse_args(["prune", "--model", "M", "--method", "wanda", "--sparsity", "0.5",
                                               "--out", "O", "--heal", "lora", "--heal-lora-rank", "2",
                                               "--heal-dropout", "0.1"])
    assert (args.heal_rank, args.heal_dropout) == (2, 0.1)
    assert "--heal-dropout is renamed --heal-lora-dropout" in capsys.readouterr().err
    options = available_methods()["shortgpt"].parse_options({"random_seed": 3, "remove_layers": 1})
    assert options.random_baseline_seed == 3 and "random_seed is renamed random_baseline_seed" in capsys.readouterr().err
    with pytest.raises(ArgumentError, match="give it once"):
        available_methods()["fista"].parse_options({"iterations": 3, "fista_iterations": 4})
