"""SPP: the closed-form layer loss, the Bregman path, path.json, materialisation, bad input."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import prunekit
from prunekit.capture.layerwise import layerwise
from prunekit.capture.unit_quadratics import UnitQuadraticCapture
from prunekit.cli import main
from prunekit.errors import ArgumentError, DataError
from prunekit.methods.lbi import LBISettings, largest_eigenvalue, linearized_bregman
from prunekit.methods.llm_pruner import member_scores
from prunekit.methods.ria import ria_scores
from prunekit.recipe import CalibrationSettings
from prunekit.methods.solution_path import read_path

from test_cli import only_error_line

FAST = CalibrationSettings(corpus="c4", nsamples=2, seqlen=16)
QUICK = {"lbi_iterations": 300}
IDS = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))


def _logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _scale_hook(scale):
    return lambda _m, _a, out: out * scale.to(out.dtype)


@pytest.mark.parametrize("family,grouping", [("llama", "kv"), ("llama", "query"), ("gpt_neox", "kv"), ("gpt2", "kv"),
                                             ("gpt_neo", "kv")])
def test_closed_form_loss_equals_the_masked_layer(tiny_model_dir, family, grouping):
    """cᵀQc equals ||Y_dense − Y(m)||² of the real layer for binary QK/VO/channel masks (incl. GPT-Neo's local attention)."""
    lm = prunekit.load(tiny_model_dir(family))
    ids = torch.randint(0, 1000, (3, 24), generator=torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(2)

    def sub_block_error(ctx, module, hooks) -> float:
        dense, masked = [], []
        handle = module.register_forward_hook(lambda _m, _a, out: dense.append(out))
        ctx.replay()
        handle.remove()
        handles = [module.register_forward_hook(lambda _m, _a, out: masked.append(out))] + [h() for h in hooks]
        ctx.replay()
        for handle in handles:
            handle.remove()
        return sum(float(((a - b).double() ** 2).sum()) for a, b in zip(dense, masked))

    def on_layer(ctx):
        groups = lm.adapter.unit_groups(ctx.index, grouping)
        quads = UnitQuadraticCapture(groups).run(ctx.replay, ctx.replay)
        heads, channels = groups["heads"], groups["channels"]
        vo, qk = (torch.rand(2, heads.units, generator=generator) > 0.5).double()
        mc = (torch.rand(channels.units, generator=generator) > 0.5).double()
        o = next(m for m in heads.members if m.role == "o")
        cols = torch.ones(o.view.in_features)
        cols[o.index.reshape(-1)] = vo.float().repeat_interleave(o.index.shape[1])
        hooks = [lambda: o.view.module.register_forward_pre_hook(lambda _m, a: (a[0] * cols,))]
        for member in (m for m in heads.members if m.role in ("q", "k")):
            rows = torch.ones(member.view.out_features)
            rows[member.index.reshape(-1)] = qk.float().repeat_interleave(member.index.shape[1])
            hooks.append(lambda member=member, rows=rows: member.view.module.register_forward_hook(_scale_hook(rows)))
        coefficients = torch.cat([vo * qk - 1, vo * (1 - qk)])
        expected = float(coefficients @ quads["heads"].q.double() @ coefficients)
        assert sub_block_error(ctx, o.view.module, hooks) == pytest.approx(expected, rel=1e-3, abs=1e-6)
        down = channels.members[-1]
        scale = torch.ones(down.view.in_features)
        scale[down.index[:, 0]] = mc.float()
        expected = float((mc - 1) @ quads["channels"].q.double() @ (mc - 1))
        error = sub_block_error(ctx, down.view.module, [lambda: down.view.module.register_forward_pre_hook(lambda _m, a: (a[0] * scale,))])
        assert error == pytest.approx(expected, rel=1e-3, abs=1e-6)
        assert quads["channels"].loss(torch.zeros(channels.units)) == 0.0  # c = 0: the dense layer

    layerwise(lm, on_layer, calib_ids=ids, collect_upfront=False, progress=False)


def test_bregman_path_enters_by_importance_and_threshold():
    """Decoupled units enter in order of their curvature; a lower threshold (higher RIA) enters earlier."""
    curvature = torch.tensor([1e-3, 4e-2, 5e-3, 1e-1, 2e-4], dtype=torch.float64)
    q = torch.diag(curvature)
    settings = LBISettings(iterations=400, horizon=1500.0)
    run = lambda tau: linearized_bregman(lambda m: 2 * q @ (m - 1), torch.ones(5, dtype=torch.float64), tau, settings,  # noqa: E731
                                         lipschitz=2 * largest_eigenvalue(q))
    plain = run(torch.ones(5))
    assert torch.argsort(plain.entry_time).tolist() == torch.argsort(curvature, descending=True).tolist()
    assert plain.entered[:4].all() and not plain.entered[4]  # the weakest unit is still outside the support...
    assert plain.end_time == pytest.approx(1500.0, rel=1e-2)  # the whole horizon was covered...
    assert plain.entry_time[4] > plain.end_time  # ...and the weakest ranks after every entered one
    weighted = run(torch.tensor([0.2, 1, 1, 1, 1], dtype=torch.float64))
    assert weighted.entry_time[0] < plain.entry_time[0]
    assert largest_eigenvalue(q) >= float(curvature.max())


def test_bregman_path_time_does_not_depend_on_the_step():
    """A layer whose curvature forces a 10× smaller step covers the same horizon in 10× the steps,
    entries land at the same times (interpolated within a step, so no ties), and the run stops once
    every unit has entered."""
    curvature = torch.tensor([1e-3, 4e-2, 5e-3, 1e-1, 2e-3, 3e-3], dtype=torch.float64)
    q = torch.diag(curvature)
    runs = [linearized_bregman(lambda m: 2 * q @ (m - 1), torch.ones(6, dtype=torch.float64), torch.ones(6),
                               LBISettings(iterations=200, horizon=3000.0, momentum=0.0, alpha=alpha), lipschitz=0.2)
            for alpha in (1.0, 0.1)]
    coarse, fine = runs
    assert coarse.entered.all() and fine.entered.all()
    assert fine.steps > 5 * coarse.steps and fine.end_time < 3000.0  # stopped early: all had entered
    assert torch.argsort(coarse.entry_time).tolist() == torch.argsort(fine.entry_time).tolist()
    assert torch.allclose(coarse.entry_time, fine.entry_time, rtol=0.02)
    assert len(set(coarse.entry_time.tolist())) == 6


def test_ria_group_score_sums_ria_over_the_unit(tiny_model_dir):
    lm = prunekit.load(tiny_model_dir("llama"))
    group = lm.adapter.unit_groups(0)["channels"]
    sqnorms = {m.view.input_group: torch.rand(m.view.in_features) + 0.1 for m in group.members}
    scores = member_scores(group, "ria", None, None, None, sqnorms)
    down = group.members[-1].view
    manual = ria_scores(down.weight.float(), sqnorms[down.input_group])[:, 7].sum()
    assert float(scores[-1, 7]) == pytest.approx(float(manual), rel=1e-5)


def test_one_search_materialises_every_sparsity(tiny_model_dir, tmp_path):
    """path.json lands with the model; cuts are nested, exact in count, and equal to the run's own cut."""
    model_dir = tiny_model_dir("llama")
    lm = prunekit.load(model_dir)
    step = prunekit.prune(lm, "spp", ratio=0.5, calibration=FAST, progress=False, layer_range="0:2", **QUICK)
    out = tmp_path / "spp50"
    prunekit.save(lm, out, record=prunekit.build_record(lm, [step]))
    assert (out / "path.json").is_file() and (out / "path.png").is_file()
    path = read_path(out)
    assert path["fingerprint"]["num_layers"] == 2 and set(path["layers"]) == {"0", "1"}
    assert path["head_score"] == "head"  # both of a head's thresholds from its whole-head RIA score
    plain = AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(_logits(plain), _logits(lm.model), rtol=0, atol=0)

    kept = {}
    for sparsity in (0.0, 0.25, 0.5, 0.7):
        cut, record = prunekit.materialize(out, sparsity, model=model_dir)
        for layer in record["width"]["layers"]:
            for kind in ("heads", "channels"):
                entry = layer[kind]
                assert entry["kept"] == entry["before"] - round(sparsity * entry["before"] + 1e-9)
                kept[sparsity, layer["index"], kind] = set(range(entry["before"])) - set(entry["removed"])
        if sparsity == 0.5:
            torch.testing.assert_close(_logits(cut.model), _logits(lm.model), rtol=0, atol=0)
    for (sparsity, index, kind), units in kept.items():
        for lower in (s for s in (0.0, 0.25, 0.5, 0.7) if s < sparsity):
            assert units <= kept[lower, index, kind], (sparsity, lower, index, kind)


def test_ria_weighting_applies_to_the_named_unit_kinds_only(tiny_model_dir):
    """--ria-units channels: heads follow the plain path, channels the RIA-weighted one, exactly."""
    model_dir = tiny_model_dir("llama")

    def path(**options):
        lm = prunekit.load(model_dir)
        prunekit.prune(lm, "spp", ratio=0.25, calibration=FAST, progress=False, layer_range="0:2", **QUICK, **options)
        return lm.artifacts["spp_path"].path["layers"]

    plain, weighted, channels_only = path(), path(ria_power=1.0), path(ria_power=1.0, ria_units="channels")
    for layer in plain:
        assert channels_only[layer]["heads"]["entry_time"] == plain[layer]["heads"]["entry_time"]
        assert channels_only[layer]["channels"]["entry_time"] == weighted[layer]["channels"]["entry_time"]
        assert weighted[layer]["channels"]["entry_time"] != plain[layer]["channels"]["entry_time"]
        assert weighted[layer]["heads"]["entry_time"] != plain[layer]["heads"]["entry_time"]


def test_cli_materialize_and_bad_input(tiny_model_dir, tmp_path, capsys):
    model_dir = tiny_model_dir("llama")
    run = tmp_path / "run"
    assert main(["prune", "--model", str(model_dir), "--method", "spp", "--ratio", "0.25", "--lbi-iterations", "200",
                 "--calib", "c4", "--nsamples", "2", "--seqlen", "16", "--out", str(run), "--no-progress"]) == 0
    assert "parameters" in capsys.readouterr().out
    assert "Solution path saved as `path.json`" in (run / "report" / "report.md").read_text()
    assert (run / "report" / "path_step1.png").is_file()
    out = tmp_path / "cut"
    assert main(["materialize", "--path", str(run / "path.json"), "--sparsity", "0.5", "--out", str(out)]) == 0
    record = json.loads((out / "prunekit.json").read_text())
    assert record["steps"][0]["width"]["importance"] == "spp" and (out / "report" / "report.html").is_file()

    other = prunekit.load(model_dir)  # same family and shapes, other weights
    with torch.no_grad():
        other.adapter.linears(0)[0].weight.mul_(1.01)
    other_dir = tmp_path / "other"
    prunekit.save(other, other_dir, record={}, report=False)
    bad = [
        (["--path", str(run), "--sparsity", "0.5", "--model", str(tiny_model_dir("gpt2"))], "another model"),
        (["--path", str(run), "--sparsity", "0.5", "--model", str(other_dir)], "another model"),
        (["--path", str(run), "--sparsity", "0.9"], "outside this path's range"),
        (["--path", str(run), "--sparsity", "-0.1"], "outside this path's range"),
        (["--path", str(tmp_path / "missing"), "--sparsity", "0.5"], "no SPP path"),
    ]
    for args, message in bad:
        target = tmp_path / "never"
        assert main(["materialize", *args, "--out", str(target)]) != 0
        assert message in only_error_line(capsys)
        assert not target.exists()
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(DataError, match="not an SPP path"):
        read_path(tmp_path / "junk.json")
    for options, message in [({}, "--ratio"), ({"ratio": 0.3, "lbi_nu": 0}, "--lbi-nu"),
                             ({"ratio": 0.3, "lbi_momentum": 1.0}, "--lbi-momentum"), ({"ratio": 0.3, "units": "rows"}, "--units"),
                             ({"ratio": 0.3, "ria_units": "rows"}, "--ria-units")]:
        with pytest.raises(ArgumentError, match=message):
            prunekit.prune(prunekit.load(model_dir), "spp", progress=False, **options)


def test_resumed_recipe_keeps_the_path(tiny_model_dir, data_root, tmp_path):
    """SPP, an interruption after the next step, then --resume: the final output still carries path.json."""
    from prunekit.recipe import parse_recipe
    from prunekit.runner import run_recipe

    text = ("calibration:\n  corpus: c4\n  nsamples: 2\n  seqlen: 16\nsteps:\n  - method: spp\n    ratio: 0.25\n"
            "    lbi_iterations: 100\n  - method: magnitude\n    sparsity: 0.3\n  - method: magnitude\n    sparsity: 0.5\n")
    recipe = parse_recipe(text, "r.yaml")
    model = str(tiny_model_dir("llama"))

    def interrupt(number, item, record):
        if number == 2:  # step 1 (SPP) is checkpointed by now
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_recipe(recipe, model, tmp_path / "out", data_root=data_root, progress=False, on_step=interrupt)
    out, record = run_recipe(recipe, model, tmp_path / "out", resume=True, data_root=data_root, progress=False)
    assert [s["step"]["method"] for s in record["steps"]] == ["spp", "magnitude", "magnitude"]
    assert read_path(out)["fingerprint"]["num_layers"] == 2


def test_a_path_cut_short_by_the_step_cap_says_so():
    """A stiff layer whose automatic α is tiny hits the step cap before the horizon: the result
    says so (SPP warns and records it), while an ordinary layer reaches the horizon or enters all."""
    from prunekit.methods.lbi import LBISettings, linearized_bregman

    ones = torch.ones(4, dtype=torch.float64)
    stiff = torch.eye(4, dtype=torch.float64) * 1e6
    short = linearized_bregman(lambda m: 2 * (stiff @ (m - 1)), ones, ones, LBISettings(iterations=10), lipschitz=2e6)
    assert short.steps == 500 and short.end_time < short.horizon and short.stopped_short
    easy = torch.eye(4, dtype=torch.float64)
    done = linearized_bregman(lambda m: 2 * (easy @ (m - 1)), ones, ones, LBISettings(iterations=10), lipschitz=2.0)
    assert not done.stopped_short
