"""One real layer, one set of statistics: FISTA's reconstruction error against SparseGPT's.

Layer 3 of the shared SmolLM2 model, dense inputs (correction none, so both methods solve the same
problem ``min ||W X − Ŵ X||²``), 32 × 512 C4 calibration tokens. For q, up and down at 50% and 2:4:
SparseGPT's error, SparseGPT's mask re-fitted by least squares (the best that mask allows),
and FISTA's final error with the default settings, with 3–8× more iterations, and warm-started
from SparseGPT; ``l1`` is the error of FISTA's L1 solution before projection. A diagnostic for
whether FISTA's gap is convergence (long ≈ default means it is not) or the support it selects.

Run:  python benchmarks/fista_layer.py   (prints a markdown table; ~2 min on 2 cores)
"""

from __future__ import annotations

import time

from common import SHARED, SHARED_MODELS, markdown_table


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
    inputs = dense_layer_inputs(lm, windows.ids, 3, 8)
    layer = lm.adapter.decoder_layers()[3]
    runs = {"default": F.FistaOptions(), "long": F.FistaOptions(iterations=100, final_iterations=500, refit_iterations=500),
            "from sparsegpt": F.FistaOptions(warm_start="sparsegpt")}
    rows = []
    for role in ("q", "up", "down"):
        view = next(v for v in lm.adapter.linears(3) if v.roles[0] == role)
        stats = paired_statistics(layer, layer, view, inputs, inputs, 8)
        weight = view.weight.detach().float()
        problem = F.Problem.from_statistics(weight, stats)
        for name, target in (("50%", SparsityTarget(sparsity=0.5)), ("2:4", SparsityTarget(n=2, m=4))):
            pruned, _, _ = sparsegpt_prune(weight, stats.gram, stats.tokens, fraction=None if target.is_nm else 0.5,
                                           n=target.n, m=target.m, blocksize=128, percdamp=0.01, where=view.name)
            refitted, _ = F.refit(problem, pruned, pruned != 0, 500, 1e-10)
            row = [role, name, f"{problem.relative_error(pruned):.4f}", f"{problem.relative_error(refitted):.4f}"]
            for options in runs.values():
                started = time.perf_counter()
                _, report = F.solve(weight, stats, target, options)
                row.append(f"{report['recon_error']:.4f} (l1 {report['objective_l1_solution'] / problem.const:.3f}, "
                           f"{time.perf_counter() - started:.0f} s)")
            rows.append(row)
    print(markdown_table(["operator", "target", "sparsegpt", "sparsegpt mask, refit"] + [f"fista {k}" for k in runs], rows))


if __name__ == "__main__":
    main()
