"""Dense vs magnitude, Wanda, SparseGPT, RIA at 50% unstructured and 2:4: full-set perplexity.

Each state runs in its own process: load, reset the kernel's resident high-water mark, prune
(wall time and peak RSS of the prune are recorded), then evaluate WikiText-2 and PTB on the full
test sets. Results are stored after every state, and finished states are skipped on the next run,
so the table can be completed over several runs.

Run:  python benchmarks/unstructured.py [--nsamples 128] [--calib-seqlen 512] [--states wanda:50%,ria-row:50%,...]
Writes benchmarks/results/unstructured.json and unstructured.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import RESULTS, SHARED_MODELS, load_results, markdown_table, store_results

METHODS = ("dense", "magnitude", "wanda", "sparsegpt", "ria", "ria-row")
# Table rows that are a method with non-default options: RIA with Wanda's per-output-row comparison
# group, which separates RIA's score from its per-matrix threshold when RIA trails Wanda.
VARIANTS = {"ria-row": ("ria", {"group": "row"})}
TARGETS = {"50%": {"sparsity": 0.5}, "2:4": {"pattern": "2:4"}}
DATASETS = ("wikitext2", "ptb")


def _hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_state(model_dir: str, method: str, target: str, nsamples: int, calib_seqlen: int, datasets: list[str],
              calib_seed: int = 0, extra_options: dict | None = None, max_windows: int | None = None) -> dict:
    """Prune one state and evaluate it; ``calib_seed``/``extra_options`` let ``reproduce.py`` measure
    how far the figure moves under changes that should not matter (other windows, solver precision)."""
    import prunekit
    from prunekit.recipe import CalibrationSettings

    lm = prunekit.load(model_dir)
    out: dict = {"method": method, "target": target}
    if method != "dense":
        registered, options = VARIANTS.get(method, (method, {}))
        options = {**options, **(extra_options or {})}
        Path("/proc/self/clear_refs").write_text("5")
        started = time.perf_counter()
        # the table's mean recon error column needs the opt-in report (and its Gram matrices)
        record = prunekit.prune(lm, registered, calibration=CalibrationSettings(nsamples=nsamples, seqlen=calib_seqlen,
                                                                               seed=calib_seed),
                                progress=False, report_error=True, **TARGETS[target], **options)
        out.update({"prune_seconds": round(time.perf_counter() - started, 1), "prune_peak_rss_mb": round(_hwm_mb(), 1),
                    "sparsity": record["sparsity"]["overall"], "calibration": record["calibration"],
                    "mean_recon_error": _mean_error(record)})
        check = prunekit.check_sparsity(lm, ["2:4"])
        out["nm_valid"] = check["nm"]["2:4"]["valid"]
    evaluation = prunekit.evaluate_perplexity(lm, datasets, progress=False, max_windows=max_windows)
    out["ppl"] = evaluation["ppl"]
    out["eval"] = {d: {k: evaluation["eval"][d][k] for k in ("windows", "seqlen", "seconds")} for d in datasets}
    return out


def _mean_error(record: dict) -> float | None:
    errors = [m["recon_error"] for layer in record["layers"] for m in layer["modules"].values() if "recon_error" in m]
    return sum(errors) / len(errors) if errors else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nsamples", type=int, default=128)
    parser.add_argument("--calib-seqlen", type=int, default=512)
    parser.add_argument("--states", help="comma list of method:target (default: all)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        model_dir, method, target = args.child
        print(json.dumps(run_state(model_dir, method, target, args.nsamples, args.calib_seqlen, list(DATASETS))))
        return
    # the calibration-based states first: dense and magnitude usually come from foundation_ppl.json
    states = ([(m, t) for t in TARGETS for m in METHODS[2:] if m not in VARIANTS] + [("dense", "-")]
              + [("magnitude", t) for t in TARGETS] + [(m, "50%") for m in VARIANTS])  # N:M is per row already
    if args.states:
        wanted = set(args.states.split(","))
        states = [s for s in states if f"{s[0]}:{s[1]}" in wanted or s[0] in wanted]
    path = RESULTS / "unstructured.json"
    results = load_results(path)
    _adopt_foundation_rows(results)
    for name, model_dir in SHARED_MODELS.items():
        for method, target in states:
            key = f"{name}|{method}|{target}|calib{args.nsamples}x{args.calib_seqlen}"
            if method == "dense":
                key = f"{name}|dense|-"
            if key in results or (method == "magnitude" and f"{name}|{method}|{target}|any-calibration" in results):
                continue
            started = time.perf_counter()
            proc = subprocess.run([sys.executable, __file__, "--nsamples", str(args.nsamples), "--calib-seqlen",
                                   str(args.calib_seqlen), "--child", str(model_dir), method, target],
                                  capture_output=True, text=True)
            if proc.returncode:
                print(proc.stderr[-2000:], file=sys.stderr)
                raise SystemExit(f"{key} failed")
            results[key] = {"model": name, **json.loads(proc.stdout.strip().splitlines()[-1]),
                            "wall_seconds": round(time.perf_counter() - started, 1)}
            store_results(path, results)
            write_table(results)
            print(key, results[key]["ppl"], flush=True)
    write_table(results)


def _adopt_foundation_rows(results: dict) -> None:
    """Dense and magnitude need no calibration: take them from foundation_ppl.json when it holds
    the same full-set protocol, instead of spending an hour of CPU measuring them again."""
    foundation = load_results(RESULTS / "foundation_ppl.json")
    for name in SHARED_MODELS:
        for state, (method, target) in {"dense": ("dense", "-"), "magnitude 50%": ("magnitude", "50%"),
                                        "magnitude 2:4": ("magnitude", "2:4")}.items():
            rows = [foundation.get(f"{name}|{state}|{d}") for d in DATASETS]
            if not all(r and r["max_windows"] is None and r["windows"] == r["windows_available"] for r in rows):
                continue
            key = f"{name}|dense|-" if method == "dense" else f"{name}|{method}|{target}|any-calibration"
            if any(k.startswith(f"{name}|{method}|{target}") for k in results) and key not in results:
                continue
            entry = {"model": name, "method": method, "target": target, "source": "foundation_ppl.json",
                     "ppl": {d: r["ppl"] for d, r in zip(DATASETS, rows)},
                     "eval": {d: {"windows": r["windows"], "seqlen": r["seqlen"], "seconds": r["eval_seconds"]}
                              for d, r in zip(DATASETS, rows)}}
            if rows[0]["prune_seconds"] is not None:
                entry["prune_seconds"] = rows[0]["prune_seconds"]
            results[key] = entry


def write_table(results: dict) -> None:
    rows = []
    order = {(m, t): i for i, (m, t) in enumerate([("dense", "-")] + [(m, t) for m in METHODS[1:] for t in TARGETS])}
    for r in sorted(results.values(), key=lambda r: (r["model"], order[(r["method"], r["target"])])):
        rows.append([r["model"], r["method"], r["target"]] + [f"{r['ppl'][d]:.2f}" for d in DATASETS]
                    + [f"{r['prune_seconds']:.0f}" if "prune_seconds" in r else "–",
                       f"{r['prune_peak_rss_mb']:.0f}" if "prune_peak_rss_mb" in r else "–",
                       f"{r['mean_recon_error']:.4f}" if r.get("mean_recon_error") is not None else "–"])
    calib = {f"{r['calibration']['nsamples']}x{r['calibration']['seqlen']}" for r in results.values() if r.get("calibration")}
    adopted = any(r.get("source") for r in results.values())
    windows = {f"{d} {r['eval'][d]['windows']}x{r['eval'][d]['seqlen']}" for r in results.values() for d in DATASETS}
    table = markdown_table(["model", "method", "target", "wikitext2 ppl", "ptb ppl", "prune s", "prune peak RSS MB",
                            "mean recon error"], rows)
    note = (f"Calibration: C4 windows {', '.join(sorted(calib))} (seed 0). Evaluation windows: {', '.join(sorted(windows))}. "
            + ("Dense and magnitude rows are taken from `foundation_ppl.json` (same protocol; magnitude uses no "
               "calibration). " if adopted else "")
            + ("`ria-row`: RIA with `--group row` (Wanda's per-output-row comparison group). "
               if any(r["method"] in VARIANTS for r in results.values()) else "")
            + "Generated by `python benchmarks/unstructured.py`.\n")
    (RESULTS / "unstructured.md").write_text(table + "\n" + note)
    print(table + "\n" + note)


if __name__ == "__main__":
    main()
