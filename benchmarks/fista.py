"""FISTAPruner vs SparseGPT vs Wanda at 50% and 2:4, and FISTA's error-correction ablation at 5/20/50%.

The paper's layout (reference-numbers.md): one row per method/setting, WikiText-2 / PTB / C4
perplexity, plus the wall time of each prune on this machine (FISTA relative to SparseGPT is the
cost claim). Each state runs in its own process (load → prune → evaluate) and is stored as soon as
it finishes; a re-run skips finished states.

Evaluation: ``--eval-windows K`` windows of ``--eval-seqlen`` tokens per dataset (0 = the full
test sets; C4 is capped at 256 windows by the protocol). Full sets cost ~1.5 CPU-hours per state
here, so the default is a fixed subset, stated in the table.

Run:  python benchmarks/fista.py [--states fista:50%,sparsegpt:2:4,...] [--eval-windows 16] [--nsamples 128]
Writes benchmarks/results/fista.json and fista.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import RESULTS, SHARED_MODELS, load_results, markdown_table, store_results

DATASETS = ("wikitext2", "ptb", "c4")
TARGETS = {"5%": {"sparsity": 0.05}, "20%": {"sparsity": 0.2}, "50%": {"sparsity": 0.5}, "2:4": {"pattern": "2:4"}}
STATES = ([(m, t, {}) for t in ("50%", "2:4") for m in ("wanda", "sparsegpt", "fista")]
          + [("fista", t, {"correction": c}) for t in ("5%", "20%", "50%") for c in ("none", "intra+inter")]
          + [("fista", t, {}) for t in ("5%", "20%")] + [("fista", "2:4", {"correction": "none"})])


def _label(method: str, options: dict) -> str:
    return method + (f" ({options['correction']})" if "correction" in options else (" (intra)" if method == "fista" else ""))


def run_state(model_dir: str, method: str, target: str, options: dict, args) -> dict:
    import prunekit
    from prunekit.recipe import CalibrationSettings

    lm = prunekit.load(model_dir)
    Path("/proc/self/clear_refs").write_text("5")
    started = time.perf_counter()
    record = prunekit.prune(lm, method, calibration=CalibrationSettings(nsamples=args.nsamples, seqlen=args.calib_seqlen),
                            progress=False, **TARGETS[target], **options)
    out = {"method": method, "target": target, "options": options, "prune_seconds": round(time.perf_counter() - started, 1),
           "sparsity": record["sparsity"]["overall"], "calibration": record["calibration"]}
    evaluation = prunekit.evaluate_perplexity(lm, DATASETS, seqlen=args.eval_seqlen or None,
                                              max_windows=args.eval_windows or None, progress=False)
    out["ppl"] = evaluation["ppl"]
    out["eval"] = {d: {k: evaluation["eval"][d][k] for k in ("windows", "seqlen")} for d in DATASETS}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nsamples", type=int, default=128)
    parser.add_argument("--calib-seqlen", type=int, default=512)
    parser.add_argument("--eval-windows", type=int, default=16)
    parser.add_argument("--eval-seqlen", type=int, default=2048)
    parser.add_argument("--states", help="comma list of method:target[:correction] (default: all)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        model_dir, method, target, options = json.loads(args.child)
        print(json.dumps(run_state(model_dir, method, target, options, args)))
        return
    states = STATES
    if args.states:
        wanted = set(args.states.split(","))
        states = [s for s in STATES if f"{s[0]}:{s[1]}" + (f":{s[2]['correction']}" if s[2] else "") in wanted]
    path = RESULTS / "fista.json"
    results = load_results(path)
    suffix = f"calib{args.nsamples}x{args.calib_seqlen}|eval{args.eval_windows}x{args.eval_seqlen}"
    for name, model_dir in SHARED_MODELS.items():
        for method, target, options in states:
            key = f"{name}|{_label(method, options)}|{target}|{suffix}"
            if key in results:
                continue
            child = json.dumps([str(model_dir), method, target, options])
            proc = subprocess.run([sys.executable, __file__, "--nsamples", str(args.nsamples), "--calib-seqlen",
                                   str(args.calib_seqlen), "--eval-windows", str(args.eval_windows), "--eval-seqlen",
                                   str(args.eval_seqlen), "--child", child], capture_output=True, text=True)
            if proc.returncode:
                print(proc.stderr[-2000:], file=sys.stderr)
                raise SystemExit(f"{key} failed")
            results[key] = {"model": name, "label": _label(method, options), **json.loads(proc.stdout.strip().splitlines()[-1])}
            store_results(path, results)
            write_table(results)
            print(key, results[key]["ppl"], results[key]["prune_seconds"], flush=True)
    write_table(results)


def write_table(results: dict) -> None:
    rows = [[r["model"], r["label"], r["target"]] + [f"{r['ppl'][d]:.2f}" for d in DATASETS] + [f"{r['prune_seconds']:.0f}"]
            for r in sorted(results.values(), key=lambda r: (r["model"], list(TARGETS).index(r["target"]), r["label"]))]
    windows = sorted({f"{d} {r['eval'][d]['windows']}x{r['eval'][d]['seqlen']}" for r in results.values() for d in DATASETS})
    calib = sorted({f"{r['calibration']['nsamples']}x{r['calibration']['seqlen']}" for r in results.values()})
    table = markdown_table(["model", "method (correction)", "target"] + [f"{d} ppl" for d in DATASETS] + ["prune s"], rows)
    note = (f"Calibration: C4 windows {', '.join(calib)} (seed 0). Evaluation windows: {', '.join(windows)}. "
            "Generated by `python benchmarks/fista.py`.\n")
    (RESULTS / "fista.md").write_text(table + "\n" + note)


if __name__ == "__main__":
    main()
