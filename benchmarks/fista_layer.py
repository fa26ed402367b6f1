"""One real layer, one set of statistics: FISTA's reconstruction error against SparseGPT's.

Layers 3 and 20 of the shared SmolLM2 model, dense inputs (correction none, so every method solves
the same problem ``min ||W X − Ŵ X||²``), 32 × 512 C4 calibration tokens. For q, o, up and down at
50% and 2:4: SparseGPT's error, SparseGPT's mask re-fitted by least squares (the best that mask
allows), Wanda's mask re-fitted (FISTA's default warm start), then FISTA with the defaults, from a
SparseGPT warm start, with per-row projection, without the λ ladder, and with the L1 solution at
the target kept (no selection: the projected λ-at-target solution, as a plain reading of the
paper would do). Each FISTA cell gives the error and which candidate won.

Run:  python benchmarks/fista_layer.py   (~5 min on 2 cores)
Writes benchmarks/results/fista_layer.md.
"""

from __future__ import annotations

import time

import subprocess
from datetime import date

from common import REPO, RESULTS, SHARED, SHARED_MODELS, markdown_table


def main() -> None:
    import prunekit
    import prunekit.methods.fista as F
    from prunekit.capture.layerwise import dense_layer_inputs
    from prunekit.capture.paired import paired_statistics
    from prunekit.data import calibration_windows
    from prunekit.methods.sparsegpt import sparsegpt_prune
    from prunekit.sparsity import SparsityTarget

    lm = prunekit.load(SHARED_MODELS["smollm2-135m"])
    windows = calibration_windows(lm.tokenizer, "c4", nsamples=32, seqlen=512, seed=0, data_root=SHARED / "data")
    runs = {"default": F.FistaOptions(), "from sparsegpt": F.FistaOptions(warm_start="sparsegpt"),
            "row projection": F.FistaOptions(projection="row"), "no ladder": F.FistaOptions(lambda_ladder=0)}
    rows = []
    for index in (3, 20):
        inputs = dense_layer_inputs(lm, windows.ids, index, 8)
        layer = lm.adapter.decoder_layers()[index]
        for role in ("q", "o", "up", "down"):
            view = next(v for v in lm.adapter.linears(index) if v.roles[0] == role)
            stats = paired_statistics(layer, layer, view, inputs, inputs, 8)
            weight = view.weight.detach().float()
            problem = F.Problem.from_statistics(weight, stats)
            for name, target in (("50%", SparsityTarget(sparsity=0.5)), ("2:4", SparsityTarget(n=2, m=4))):
                pruned, _, _ = sparsegpt_prune(weight, stats.gram, stats.tokens, fraction=None if target.is_nm else 0.5,
                                               n=target.n, m=target.m, blocksize=128, percdamp=0.01, where=view.name)
                sparsegpt_refit, _ = F.refit(problem, pruned, pruned != 0, 500, 1e-10)
                wanda = F.warm_start("wanda", weight, stats, target)
                wanda_refit, _ = F.refit(problem, wanda, wanda != 0, 500, 1e-10)
                row = [f"{index}.{role}", name] + [f"{problem.relative_error(w):.4f}" for w in (pruned, sparsegpt_refit, wanda_refit)]
                reports = {}
                for key, options in runs.items():
                    started = time.perf_counter()
                    _, reports[key] = F.solve(weight, stats, target, options)
                    row.append(f"{reports[key]['recon_error']:.4f} ({reports[key]['selected']}, "
                               f"{time.perf_counter() - started:.0f} s)")
                # no selection: the L1 solution at the λ the default search found, projected and re-fitted
                at_target, _ = F.fista(problem, weight, reports["default"]["lambda"], 300, 1e-6)
                _, value = F._candidate(problem, at_target, target, runs["default"])
                row.append(f"{max(value, 0) / problem.const:.4f}")
                rows.append(row)
                print(" | ".join(row), flush=True)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    table = markdown_table(["operator", "target", "sparsegpt", "sparsegpt mask, refit", "wanda mask, refit"]
                           + [f"fista {k}" for k in runs] + ["L1 at target, projected"], rows)
    (RESULTS / "fista_layer.md").write_text(
        f"Written by `python benchmarks/fista_layer.py` ({date.today().isoformat()}, commit {commit}): relative "
        "layer-wise error ||WX − ŴX||²/||WX||², dense inputs, 32 × 512 C4 tokens; each FISTA cell names the "
        f"winning candidate and its seconds.\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
