"""SPP on every shared model: one solution path cut at 10–50% structured sparsity vs separate
per-sparsity runs of LLM-Pruner (element1) and of RIA group scoring; path stability; κ/ν sensitivity.

Parts (finished entries are kept in the JSON and skipped on the next run):
- ``compare``: one SPP search (default κ=1, ν=100, momentum 0.9, ``--iterations``), materialised at
  every level; LLM-Pruner ``--importance element1`` and ``--importance ria`` run once per level
  with the same ``--ratio``, layer range and head grouping. WikiText-2 perplexity of each model and
  the wall time of each approach (SPP's search counted once, plus each materialisation).
- ``stability``: a second SPP search with calibration seed 1; overlap of the kept units at 30%.
- ``mix``: at 30%, SPP's heads with RIA's channels and RIA's heads with SPP's channels (which part
  of the cut differs in quality), and the kept-set agreement of SPP and RIA per kind.
- ``close``: the level where SPP and RIA come closest (10%: channels only) on 4× the WikiText-2
  windows and on C4 validation windows, to tell a real gap from the noise of 8 windows.
- ``variants``: other couplings cut at every level (WikiText-2), and on C4 validation windows at
  10% and 30% (the numbers a choice between them may look at).
- ``timing``: prune-only seconds of each per-sparsity baseline run (the wall-time comparison).
- ``sensitivity``: perplexity at 30% for κ ∈ {0.5, 1, 2} (ν=100) and ν ∈ {30, 100, 300, 1000} (κ=1), the
  plain iteration (``--ria-power 0``) as an ablation of the RIA coupling, ``--ria-power 2`` and
  ``--head-score pair``. Each cut is also scored on C4 validation windows (the calibration corpus,
  not the WikiText-2 test the table reports), with RIA group scoring's 30% cut beside it, so a
  setting can be judged without looking at the test set.

Calibration: ``--nsamples`` × ``--calib-seqlen`` C4 tokens for SPP and RIA group scoring; LLM-Pruner
element1 keeps its reference setting (10 × 64 PG19 tokens, gradients of the whole model).
Perplexity on the first ``--eval-windows`` windows × ``--eval-seqlen`` tokens of WikiText-2 test.

Run:  python benchmarks/spp.py [--parts compare,stability,sensitivity] [--eval-windows 16]
Writes benchmarks/results/spp.json, spp.md, spp_levels.png and spp_path.png.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import prunekit
from prunekit.data import evaluation_windows, resolve_data_root
from prunekit.eval.perplexity import perplexity
from prunekit.models.loading import LoadedModel
from prunekit.report import line_plot
from prunekit.methods.solution_path import materialize, plot_path

from common import copy_model, RESULTS, SHARED_MODELS, load_results, markdown_table, store_results

LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5)
BASELINES = ("element1", "ria")
# 2: every layer covers the same path time (80 ν), entry times interpolated within a step
# 3: both of a head's thresholds from the whole head's RIA score (--head-score head)
# 4: the plain iteration by default (--ria-power 0): chosen on C4 validation windows, where the 30%
#    cut scored 96.6 against 153.6 with RIA-weighted thresholds (the v3 grid below)
LBI_VERSION = 4
DEFAULTS = {3: "κ=1, ν=100, RIA-weighted thresholds (ria_power=1, head_score=head)",
            4: "κ=1, ν=100, plain iteration (ria_power=0)"}
SENSITIVITY = {"kappa=0.5": {"lbi_kappa": 0.5}, "kappa=2": {"lbi_kappa": 2.0}, "nu=30": {"lbi_nu": 30.0},
               "nu=300": {"lbi_nu": 300.0}, "ria_power=0.5": {"ria_power": 0.5}, "ria_power=1": {"ria_power": 1.0}}
DEFAULT_LABEL = "default"
VARIANTS = {"RIA-weighted channels, plain heads": {"ria_power": 1.0, "ria_units": "channels"}}



def _search(dense: LoadedModel, calibration, iterations: int, **options) -> tuple[dict, float]:
    """One SPP search (its cut at 30% is discarded); the path and the search's wall seconds."""
    lm = copy_model(dense)
    started = time.perf_counter()
    step = prunekit.prune(lm, "spp", ratio=0.3, calibration=calibration, progress=False, lbi_iterations=iterations,
                          **options)
    seconds = time.perf_counter() - started - step["width"]["seconds"]["materialize"]
    return lm.artifacts["spp_path"].path, seconds


def _kept(path: dict, dense: LoadedModel, sparsity: float) -> set:
    lm = copy_model(dense)
    report = materialize(lm, path, sparsity)
    return {(layer["index"], kind, u) for layer in report["layers"] for kind in path["kinds"]
            for u in set(range(layer[kind]["before"])) - set(layer[kind]["removed"])}


def baseline_prune(dense: LoadedModel, level: float, importance: str, calibration) -> tuple[LoadedModel, dict, float]:
    """One per-sparsity LLM-Pruner run on a copy of ``dense``: the model, its step record, prune seconds.

    element1 runs with LLM-Pruner's own calibration (10 × 64 PG19 tokens): its backward pass over
    the SPP calibration would hold 16k × 49k logits; RIA scores on SPP's data."""
    lm = copy_model(dense)
    started = time.perf_counter()
    step = prunekit.prune(lm, "llm-pruner", ratio=level, importance=importance,
                          calibration=calibration if importance == "ria" else None, progress=False)
    return lm, step, time.perf_counter() - started


MIX_LEVELS = (0.3, 0.5)
CLOSE_LEVEL = 0.1


def mixed_cuts(dense: LoadedModel, path: dict, calibration, ppl) -> dict:
    """Cuts at MIX_LEVELS with one kind ranked by SPP and the other by the RIA group score: which kind
    a gap to RIA comes from."""
    import torch

    from prunekit.data.windows import calibration_windows
    from prunekit.methods.llm_pruner import input_sqnorms, member_scores
    from prunekit.methods.solution_path import unit_scores

    layers = [int(i) for i in path["layers"]]
    ids = calibration_windows(dense.tokenizer, calibration.corpus, nsamples=calibration.nsamples,
                              seqlen=calibration.seqlen, seed=calibration.seed, data_root=resolve_data_root()).ids
    norms = input_sqnorms(dense, ids, layers, False)
    ria = {(i, k): member_scores(dense.adapter.unit_groups(i, path["head_grouping"])[k], "ria", None, None, None,
                                 norms[i]).sum(0) for i in layers for k in path["kinds"]}
    agreement = {}
    for kind in path["kinds"]:
        same = total = 0
        for i in layers:
            ours, theirs = unit_scores(path["layers"][str(i)][kind]), ria[(i, kind)]
            keep = len(ours) - round(0.3 * len(ours) + 1e-9)
            same += len(set(torch.argsort(ours, descending=True)[:keep].tolist())
                        & set(torch.argsort(theirs, descending=True)[:keep].tolist()))
            total += keep
        agreement[kind] = same / total
    out: dict = {"kept_agreement_at_0.3": agreement}
    for label, replaced in (("spp heads + ria channels", "channels"), ("ria heads + spp channels", "heads")):
        mixed = copy.deepcopy(path)
        for i in layers:  # higher RIA score = earlier entry
            mixed["layers"][str(i)][replaced]["entry_time"] = (-ria[(i, replaced)]).tolist()
        for level in MIX_LEVELS:
            lm = copy_model(dense)
            materialize(lm, mixed, level)
            out.setdefault(f"{level}", {})[label] = ppl(lm)
            print(level, label, round(out[f"{level}"][label], 2), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--parts", default="compare,timing,stability,mix,close,variants,sensitivity")
    parser.add_argument("--eval-windows", type=int, default=16)
    parser.add_argument("--eval-seqlen", type=int, default=2048)
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--calib-seqlen", type=int, default=512)
    parser.add_argument("--iterations", type=int, default=2000)
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    results_file = RESULTS / "spp.json"
    results = load_results(results_file)
    root = resolve_data_root()
    settings = {"eval_windows": args.eval_windows, "eval_seqlen": args.eval_seqlen, "nsamples": args.nsamples,
                "calib_seqlen": args.calib_seqlen}
    # what the SPP search depends on: a change re-runs SPP's parts and keeps the per-sparsity baselines
    spp_settings = {"iterations": args.iterations, "lbi": LBI_VERSION}
    for name, model_dir in SHARED_MODELS.items():
        entry = results.setdefault(name, {})
        path_file = RESULTS / f"spp_path_{name}.json"
        if entry.get("settings") != settings:
            entry.clear()
            entry["settings"] = settings
        if entry.get("spp_settings") != spp_settings:
            if entry.get("sensitivity") and "spp_settings" in entry:  # kept: it is what chose the new default
                entry.setdefault("earlier_sensitivity", {})[str(entry["spp_settings"]["lbi"])] = entry.pop("sensitivity")
            for key in ("search_seconds", "stability", "mix", "sensitivity", "close_look", "variants"):
                entry.pop(key, None)
            for row in entry.get("levels", {}).values():
                row.pop("spp", None)
            path_file.unlink(missing_ok=True)
            entry["spp_settings"] = spp_settings
        dense = prunekit.load(model_dir)
        windows = evaluation_windows(dense.tokenizer, "wikitext2", seqlen=args.eval_seqlen, data_root=root,
                                     max_windows=args.eval_windows)
        ppl = lambda lm: perplexity(lm.model, windows, progress=False)["ppl"]  # noqa: E731
        c4_windows = evaluation_windows(dense.tokenizer, "c4", seqlen=args.eval_seqlen, data_root=root,
                                        max_windows=args.eval_windows)
        c4_ppl = lambda lm: perplexity(lm.model, c4_windows, progress=False)["ppl"]  # noqa: E731
        calibration = lambda seed=0: prunekit.CalibrationSettings(corpus="c4", nsamples=args.nsamples,  # noqa: E731
                                                                  seqlen=args.calib_seqlen, seed=seed)
        if "dense" not in entry:
            entry["dense"] = {"ppl": ppl(dense), "params": sum(p.numel() for p in dense.model.parameters())}
            store_results(results_file, results)

        if "compare" in parts:
            if "search_seconds" not in entry or not path_file.exists():
                path, seconds = _search(dense, calibration(), args.iterations)
                path_file.write_text(json.dumps(path) + "\n")
                entry["search_seconds"] = seconds
                store_results(results_file, results)
            path = json.loads(path_file.read_text())
            if "levels" not in entry:
                entry["timing"] = "prune only"  # older results timed each level with its perplexity run
            levels = entry.setdefault("levels", {})
            for level in LEVELS:
                row = levels.setdefault(f"{level}", {})
                if "spp" not in row:
                    lm = copy_model(dense)
                    started = time.perf_counter()
                    report = materialize(lm, path, level)
                    seconds = time.perf_counter() - started
                    row["spp"] = {"ppl": ppl(lm), "seconds": seconds, "params_removed": report["params_removed_fraction"]}
                    store_results(results_file, results)
                for importance in BASELINES:
                    if importance in row:
                        continue
                    lm, step, seconds = baseline_prune(dense, level, importance, calibration())
                    row[importance] = {"ppl": ppl(lm), "seconds": seconds,
                                       "params_removed": step["width"]["params_removed_fraction"]}
                    store_results(results_file, results)
                print(name, level, {k: round(v["ppl"], 2) for k, v in row.items()}, flush=True)

        if "timing" in parts:  # prune-only seconds of the baselines (early results timed prune + perplexity)
            timing = entry.setdefault("baseline_prune_seconds", {})
            for level in LEVELS:
                for importance in BASELINES:
                    if f"{importance}@{level}" not in timing:
                        timing[f"{importance}@{level}"] = baseline_prune(dense, level, importance, calibration())[2]
                        store_results(results_file, results)

        path = json.loads(path_file.read_text()) if path_file.exists() else None
        if "stability" in parts and "stability" not in entry and path is not None:
            other, seconds = _search(dense, calibration(seed=1), args.iterations)
            kept = [_kept(p, dense, 0.3) for p in (path, other)]
            by_kind = {}
            for kind in path["kinds"]:
                a = {u for u in kept[0] if u[1] == kind}
                b = {u for u in kept[1] if u[1] == kind}
                by_kind[kind] = len(a & b) / len(a)
            entry["stability"] = {"overlap_at_0.3": len(kept[0] & kept[1]) / len(kept[0]), "by_kind": by_kind,
                                  "search_seconds": seconds}
            store_results(results_file, results)

        if "mix" in parts and any(f"{lv}" not in entry.get("mix", {}) for lv in MIX_LEVELS) and path is not None:
            entry["mix"] = mixed_cuts(dense, path, calibration(), ppl)
            store_results(results_file, results)

        if "close" in parts and "close_look" not in entry and path is not None:
            more = evaluation_windows(dense.tokenizer, "wikitext2", seqlen=args.eval_seqlen, data_root=root,
                                      max_windows=4 * args.eval_windows)
            cut = copy_model(dense)
            materialize(cut, path, CLOSE_LEVEL)
            look = {"level": CLOSE_LEVEL, "wikitext2_windows": int(more.ids.shape[0])}
            for label, lm in (("spp", cut), ("ria", baseline_prune(dense, CLOSE_LEVEL, "ria", calibration())[0])):
                look[label] = {"wikitext2": perplexity(lm.model, more, progress=False)["ppl"], "c4": c4_ppl(lm)}
            entry["close_look"] = look
            store_results(results_file, results)

        if "variants" in parts:
            variants = entry.setdefault("variants", {})
            for label, options in VARIANTS.items():
                if label in variants:
                    continue
                other_path, seconds = _search(dense, calibration(), args.iterations, **options)
                row = {"options": options, "search_seconds": seconds, "levels": {}, "c4": {}}
                for level in LEVELS:
                    lm = copy_model(dense)
                    materialize(lm, other_path, level)
                    row["levels"][f"{level}"] = ppl(lm)
                    if level in (0.1, 0.3):
                        row["c4"][f"{level}"] = c4_ppl(lm)
                    print(name, label, level, round(row["levels"][f"{level}"], 2), flush=True)
                variants[label] = row
                store_results(results_file, results)
            if "ria_c4_ppl_at_0.1" not in entry:
                entry["ria_c4_ppl_at_0.1"] = entry.get("close_look", {}).get("ria", {}).get("c4") or \
                    c4_ppl(baseline_prune(dense, 0.1, "ria", calibration())[0])
                store_results(results_file, results)

        if "sensitivity" in parts:
            sens = entry.setdefault("sensitivity", {})
            if DEFAULT_LABEL not in sens and "levels" in entry and path is not None:
                lm = copy_model(dense)
                materialize(lm, path, 0.3)
                sens[DEFAULT_LABEL] = {"ppl": entry["levels"]["0.3"]["spp"]["ppl"], "c4_ppl": c4_ppl(lm)}
                store_results(results_file, results)
            if "ria_c4_ppl_at_0.3" not in entry:
                entry["ria_c4_ppl_at_0.3"] = c4_ppl(baseline_prune(dense, 0.3, "ria", calibration())[0])
                store_results(results_file, results)
            default_kept = _kept(path, dense, 0.3) if path is not None else None
            for label, options in SENSITIVITY.items():
                if label in sens:
                    continue
                other_path, seconds = _search(dense, calibration(), args.iterations, **options)
                lm = copy_model(dense)
                materialize(lm, other_path, 0.3)
                sens[label] = {"ppl": ppl(lm), "c4_ppl": c4_ppl(lm), "search_seconds": seconds,
                               "overlap_with_default": len(_kept(other_path, dense, 0.3) & default_kept) / len(default_kept)
                               if default_kept is not None else None}
                store_results(results_file, results)
                print(name, label, round(sens[label]["ppl"], 2), flush=True)
        del dense
    write_outputs(results)


def write_outputs(results: dict) -> None:
    lines = []
    for name, entry in results.items():
        s = entry["settings"]
        levels = entry.get("levels", {})
        header = ["sparsity (units/layer)", "params removed", "SPP (one path)", "LLM-Pruner element1", "RIA group score"]
        rows = [["0 (dense)", "0", f"{entry['dense']['ppl']:.2f}", "–", "–"]]
        for level in LEVELS:
            row = levels.get(f"{level}", {})
            if not row:
                continue
            cell = lambda k: f"{row[k]['ppl']:.2f}" if k in row else "–"  # noqa: E731
            rows.append([f"{level:.0%}", f"{row['spp']['params_removed']:.3f}", cell("spp"), cell("element1"), cell("ria")])
        lines.append(f"### {name}: SPP path vs per-sparsity runs — WikiText-2 perplexity\n")
        lines.append(markdown_table(header, rows))
        if levels:
            spp_total = entry["search_seconds"] + sum(levels[f"{lv}"]["spp"]["seconds"] for lv in LEVELS if f"{lv}" in levels)
            timing = entry.get("baseline_prune_seconds", {})
            if all(f"{k}@{lv}" in timing for k in BASELINES for lv in LEVELS):
                per = {k: sum(timing[f"{k}@{lv}"] for lv in LEVELS) for k in BASELINES}
                lines.append(f"Prune wall time for all {len(LEVELS)} levels (perplexity and model load excluded): SPP "
                             f"{spp_total:.0f} s (search {entry['search_seconds']:.0f} s once + materialisations), "
                             f"LLM-Pruner element1 {per['element1']:.0f} s, RIA group score {per['ria']:.0f} s (each "
                             "run from scratch per level).\n")
        lines.append(f"Perplexity on the first {s['eval_windows']} windows × {s['eval_seqlen']} tokens of WikiText-2 "
                     f"test; calibration {s['nsamples']} × {s['calib_seqlen']} C4 tokens for SPP and RIA, LLM-Pruner's "
                     "own 10 × 64 PG19 tokens for element1; layers "
                     "4–27 of 30 pruned, heads by KV group (3 per layer), the same number of heads and channels "
                     f"removed per layer by each approach; SPP "
                     f"{DEFAULTS.get(entry.get('spp_settings', {}).get('lbi'), '')}, momentum 0.9, "
                     f"at least {entry.get('spp_settings', s).get('iterations')} Bregman steps per layer over the "
                     "same path time (80 ν) in every layer.\n")
        if entry.get("variants"):
            header = ["coupling"] + [f"{lv:.0%}" for lv in LEVELS] + ["C4 at 10%", "C4 at 30%"]
            rows = [["default (" + DEFAULTS.get(entry["spp_settings"]["lbi"], "") + ")"]
                    + [f"{levels[f'{lv}']['spp']['ppl']:.2f}" for lv in LEVELS]
                    + [f"{entry['close_look']['spp']['c4']:.2f}" if "close_look" in entry else "–",
                       f"{entry['sensitivity'][DEFAULT_LABEL]['c4_ppl']:.2f}" if DEFAULT_LABEL in entry.get("sensitivity", {}) else "–"]]
            rows += [[label] + [f"{v['levels'][f'{lv}']:.2f}" for lv in LEVELS] + [f"{v['c4'].get('0.1', float('nan')):.2f}",
                                                                                   f"{v['c4'].get('0.3', float('nan')):.2f}"]
                     for label, v in entry["variants"].items()]
            rows.append(["RIA group score (per level)"] + [f"{levels[f'{lv}']['ria']['ppl']:.2f}" for lv in LEVELS]
                        + [f"{entry['ria_c4_ppl_at_0.1']:.2f}" if "ria_c4_ppl_at_0.1" in entry else "–",
                           f"{entry['ria_c4_ppl_at_0.3']:.2f}" if "ria_c4_ppl_at_0.3" in entry else "–"])
            lines.append("**Couplings** (`--parts variants`; WikiText-2 at every level, C4 validation at 10% and 30%):\n")
            lines.append(markdown_table(header, rows))
        if "close_look" in entry:
            look = entry["close_look"]
            lines.append(f"**A closer look at {look['level']:.0%}**: WikiText-2 on the first {look['wikitext2_windows']} "
                         f"windows: SPP {look['spp']['wikitext2']:.2f}, RIA {look['ria']['wikitext2']:.2f}; C4 "
                         f"validation ({s['eval_windows']} windows): SPP {look['spp']['c4']:.2f}, RIA {look['ria']['c4']:.2f}.\n")
        if "stability" in entry:
            st = entry["stability"]
            lines.append(f"**Path stability** (calibration seed 0 vs 1): {st['overlap_at_0.3']:.3f} of the units kept at "
                         f"30% are kept by both ({', '.join(f'{k} {v:.3f}' for k, v in st['by_kind'].items())}).\n")
        if "mix" in entry:
            mix = entry["mix"]
            cuts = "; ".join(f"at {float(lv):.0%}: SPP heads + RIA channels {mix[lv]['spp heads + ria channels']:.2f}, "
                             f"RIA heads + SPP channels {mix[lv]['ria heads + spp channels']:.2f}"
                             for lv in (f"{lv}" for lv in MIX_LEVELS) if lv in mix)
            lines.append(f"**Which part differs** {cuts}; kept-set agreement of SPP and RIA at 30%: "
                         + ", ".join(f"{k} {v:.3f}" for k, v in mix["kept_agreement_at_0.3"].items()) + ".\n")
        grids = [(int(v), g, "earlier default") for v, g in sorted(entry.get("earlier_sensitivity", {}).items())]
        for version, sens, role in grids + [(entry.get("spp_settings", {}).get("lbi"), entry.get("sensitivity"), "default")]:
            if not sens:
                continue
            rows = [[label, f"{v['ppl']:.2f}", f"{v['c4_ppl']:.2f}" if "c4_ppl" in v else "–",
                     f"{v['overlap_with_default']:.3f}" if v.get("overlap_with_default") is not None else "1"]
                    for label, v in sens.items()]
            if "ria_c4_ppl_at_0.3" in entry and "0.3" in levels:
                rows.append(["RIA group score (per-sparsity run)", f"{levels['0.3']['ria']['ppl']:.2f}",
                             f"{entry['ria_c4_ppl_at_0.3']:.2f}", "–"])
            lines.append(f"**Sensitivity** at 30%, around the {role} {DEFAULTS.get(version, f'of LBI v{version}')} "
                         f"(one search each; a label names what differs from it; C4: the first {s['eval_windows']} "
                         f"validation windows × {s['eval_seqlen']} tokens):\n")
            lines.append(markdown_table(["setting", "WikiText-2 ppl", "C4 ppl", "kept-set overlap with that default"], rows))
        if levels:
            series = {"SPP (one path)": [levels[f"{lv}"]["spp"]["ppl"] for lv in LEVELS if f"{lv}" in levels]}
            for k, label in (("element1", "LLM-Pruner element1"), ("ria", "RIA group score")):
                series[label] = [levels[f"{lv}"][k]["ppl"] for lv in LEVELS if k in levels.get(f"{lv}", {})]
            line_plot(series, RESULTS / "spp_levels.png", title=f"{name}: structured sparsity levels",
                      xlabel="fraction of heads and channels removed per layer", ylabel="WikiText-2 perplexity",
                      x=[lv for lv in LEVELS if f"{lv}" in levels], logy=True)
        path_file = RESULTS / f"spp_path_{name}.json"
        if path_file.exists():
            plot_path(json.loads(path_file.read_text()), RESULTS / "spp_path.png")
    text = "\n".join(lines)
    (RESULTS / "spp.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
