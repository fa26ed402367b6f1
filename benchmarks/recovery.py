"""Recovery after pruning, side by side: none / LoRA / KD-LoRA / KD-full at equal training tokens.

States (SmolLM2-135M-Instruct): ShortGPT −8 layers (Block Influence, PG19 calibration), LLM-Pruner
20% of parameters (element1), SparseGPT 2:4 and Wanda 60% (C4 128 × 512 calibration). Each state is
pruned once and saved (with its ``prunekit.json``, so distillation finds the dense teacher and the
depth record through the lineage, as ``prunekit recover --objective kd`` does). Every arm then
trains that saved model on the same C4 windows (``--steps`` × ``--batch-size`` × ``--seqlen``
tokens, seed 0; default 50 × 4 × 256 = 51,200 — on 2 cores a step takes 12 s (LoRA) to 16 s (KD),
so 200 steps for all twelve arms would be ten hours of training; ``--steps 200`` where time allows):

- ``lora``: LoRA (r 8, α 16, lr 1e-4) on the next-token loss;
- ``kd-lora``: the same LoRA on the KL to the dense model's distribution (T = 1);
- ``kd-full``: every weight on that KL (lr ``--full-lr``), pruned zeros held by masked gradients.

Every unit runs in its own process so its peak RSS is its own. Then WikiText-2 and C4 perplexity
(``--eval-windows`` × 2048 tokens) and, in part ``zeroshot``, the mean accuracy of four zero-shot
tasks (PIQA, HellaSwag, WinoGrande, ARC-Easy; the first ``--zs-limit`` examples of each) on the
models each unit saved. Finished units are kept in the JSON and skipped on a re-run.

Run:  python benchmarks/recovery.py [--parts train,zeroshot] [--states ...] [--arms ...]
Writes benchmarks/results/recovery.json and recovery.md; models under benchmarks/out/recovery/.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import REPO, RESULTS, SHARED_MODELS, load_results, markdown_table, prune_and_save, slug, store_results

JSON = RESULTS / "recovery.json"
WORK = REPO / "benchmarks" / "out" / "recovery"
DATASETS = ("wikitext2", "c4")
ZERO_SHOT_TASKS = ("piqa", "hellaswag", "winogrande", "arc_easy")
STATES = {
    "shortgpt -8 layers": ("shortgpt", {"remove_layers": 8, "calibration": ("pg19", 32, 2048)}),
    "llm-pruner 20%": ("llm-pruner", {"param_ratio": 0.2, "importance": "element1"}),
    "sparsegpt 2:4": ("sparsegpt", {"pattern": "2:4", "calibration": ("c4", 128, 512)}),
    "wanda 60%": ("wanda", {"sparsity": 0.6, "calibration": ("c4", 128, 512)}),
}
ARMS = ("none", "lora", "kd-lora", "kd-full")


def model_dir(state: str, arm: str) -> Path:
    return SHARED_MODELS["smollm2-135m"] if state == "dense" else WORK / f"{slug(state)}__{arm}"


def _settings(arm: str, steps: int, batch_size: int, seqlen: int, full_lr: float):
    from prunekit.recovery import KdSettings, LoraSettings

    shared = {"steps": steps, "batch_size": batch_size, "seqlen": seqlen, "seed": 0, "data": "c4"}
    if arm == "lora":
        return LoraSettings(**shared)
    if arm == "kd-lora":
        return KdSettings(**shared)
    return KdSettings(**shared, kd_params="full", lr=full_lr)


def _perplexity(lm, eval_windows: int) -> dict:
    import prunekit

    return prunekit.evaluate_perplexity(lm, DATASETS, seqlen=2048, max_windows=eval_windows, progress=False)["ppl"]


def _prune_and_save(state: str):
    """Prune the dense model to ``state`` and save it (with its record: the teacher's lineage)."""
    method, options = STATES[state]
    return prune_and_save(method, options, model_dir(state, "none"))


def run_unit(state: str, arm: str, args: argparse.Namespace) -> dict:
    """One measurement in this process: the dense model, a state pruned and saved, or one arm."""
    import prunekit

    out = model_dir(state, arm)
    if state == "dense":
        lm = prunekit.load(out)
        return {"ppl": _perplexity(lm, args.eval_windows)}
    if arm == "none":
        lm, record, seconds = _prune_and_save(state)
        params = sum(p.numel() for p in lm.model.parameters())
        return {"ppl": _perplexity(lm, args.eval_windows), "prune_seconds": round(seconds, 1), "params": params,
                "sparsity": record["sparsity"].get("overall")}
    if not model_dir(state, "none").exists():  # measured in an earlier run whose saved models are gone
        _prune_and_save(state)  # pruning is deterministic: the same model again
    lm = prunekit.load(model_dir(state, "none"))
    record = prunekit.recover(lm, _settings(arm, args.steps, args.batch_size, args.seqlen, args.full_lr),
                              progress=False)
    report = record["recovery"]
    prunekit.save(lm, out, record=prunekit.build_record(lm, [record]), overwrite=True, report=False)
    losses = report["losses"]
    tail = losses[-max(1, len(losses) // 10):]
    return {"ppl": _perplexity(lm, args.eval_windows), "train_seconds": round(report["seconds"], 1),
            "peak_rss_mb": round(record["peak_rss_mb"], 0), "tokens": report.get("tokens"),
            "final_loss": sum(tail) / len(tail), "sparsity_before": report["sparsity_before"],
            "sparsity_after": report["sparsity_after"], "moved_before_remask": report.get("pruned_entries_moved_before_remask"),
            "trainable_params": report.get("trainable_params"),
            "heldout_loss": [report.get("heldout_loss_before"), report.get("heldout_loss_after")]}


def run_zero_shot(state: str, arm: str, limit: int) -> dict:
    import prunekit

    lm = prunekit.load(model_dir(state, arm))
    started = time.perf_counter()
    result = prunekit.evaluate_zero_shot(lm, ZERO_SHOT_TASKS, limit=limit, progress=False)
    accs = {t: result["tasks"][t]["acc"] for t in ZERO_SHOT_TASKS}
    return {"acc": accs, "mean": sum(accs.values()) / len(accs), "limit": limit,
            "seconds": round(time.perf_counter() - started, 1)}


def _units(states: list[str], arms: list[str]) -> list[tuple[str, str]]:
    return [("dense", "none")] + [(s, a) for s in states for a in arms]


def _spawn(args: argparse.Namespace, state: str, arm: str, part: str) -> None:
    command = [sys.executable, __file__, "--unit", f"{part}|{state}|{arm}", "--steps", str(args.steps),
               "--batch-size", str(args.batch_size), "--seqlen", str(args.seqlen), "--full-lr", str(args.full_lr),
               "--eval-windows", str(args.eval_windows), "--zs-limit", str(args.zs_limit)]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    print(f"{part} {state} / {arm}: {time.perf_counter() - started:.0f} s", flush=True)


def run(args: argparse.Namespace, parts: list[str], states: list[str], arms: list[str]) -> None:
    results = load_results(JSON)
    results["settings"] = {"steps": args.steps, "batch_size": args.batch_size, "seqlen": args.seqlen,
                           "full_lr": args.full_lr, "eval": f"{args.eval_windows} x 2048 tokens per dataset",
                           "zero_shot_tasks": list(ZERO_SHOT_TASKS)}
    store_results(JSON, results)
    for part in ("train", "zeroshot"):  # every perplexity first: it is the cheaper, more telling figure
        if part not in parts:
            continue
        for state, arm in _units(states, arms):
            key, results = f"{state}|{arm}", load_results(JSON)
            done = results.get("units", {})
            if part == "train" and key not in done and (arm == "none" or f"{state}|none" in done):
                _spawn(args, state, arm, part)
            elif part == "zeroshot" and key in done and key not in results.get("zero_shot", {}):
                _spawn(args, state, arm, part)
    write_table(load_results(JSON))


def _store(section: str, key: str, entry: dict) -> None:
    results = load_results(JSON)
    results.setdefault(section, {})[key] = entry
    store_results(JSON, results)


def _recovered_share(dense: float, pruned: float, value: float) -> str:
    lost = pruned - dense
    return f"{100 * (pruned - value) / lost:.0f}%" if lost > 0 else "-"


def write_table(results: dict) -> None:
    units, zero_shot, settings = results.get("units", {}), results.get("zero_shot", {}), results.get("settings", {})
    dense = units.get("dense|none")
    if dense is None:
        return
    rows = []
    for state in STATES:
        pruned = units.get(f"{state}|none")
        for arm in ARMS:
            entry = units.get(f"{state}|{arm}")
            if entry is None:
                continue
            zs = zero_shot.get(f"{state}|{arm}")
            ppl = entry["ppl"]
            shares = [_recovered_share(dense["ppl"][d], pruned["ppl"][d], ppl[d]) if arm != "none" else "-"
                      for d in DATASETS]
            rows.append([state, arm, *(f"{ppl[d]:.2f}" for d in DATASETS), *shares,
                         f"{zs['mean']:.3f}" if zs else "…",
                         (f"{entry['train_seconds']:.0f}" + ("*" if entry.get("contended") else "")
                          + ("†" if entry.get("beside_niced_jobs") else ""))
                         if "train_seconds" in entry else "-",
                         f"{entry['peak_rss_mb']:.0f}" if "peak_rss_mb" in entry else "-",
                         f"{entry['sparsity_after']:.4f}" if "sparsity_after" in entry else f"{entry.get('sparsity') or 0:.4f}"])
    zs_dense = zero_shot.get("dense|none")
    tokens = settings.get("steps", 0) * settings.get("batch_size", 0) * settings.get("seqlen", 0)
    lines = ["# Recovery after pruning: LoRA vs distillation from the dense model", "",
             f"SmolLM2-135M-Instruct, 2 CPU cores. Every arm trains the same saved pruned model on the same C4 "
             f"windows: {settings.get('steps')} steps × {settings.get('batch_size')} × {settings.get('seqlen')} "
             f"= {tokens:,} tokens, seed 0. `lora`: LoRA r 8 / α 16 / lr 1e-4 on next-token loss; `kd-lora`: "
             f"the same LoRA on KL(teacher ‖ student), T = 1, teacher = the dense model found through "
             f"`prunekit.json`; `kd-full`: all weights on that KL, lr {settings.get('full_lr')}, pruned zeros held "
             f"by masked gradients. Perplexity on {settings.get('eval')} (WikiText-2 test, C4 validation); "
             "'recovered' = share of the perplexity lost to pruning that training won back; zero-shot = mean acc of "
             f"{', '.join(settings.get('zero_shot_tasks', []))} on the first "
             + (f"{next(iter(zero_shot.values()))['limit']} examples each (lm-evaluation-harness). " if zero_shot else
                "examples of each task, not yet measured (`--parts zeroshot`). ") +
             "Peak RSS is the unit's own process (teacher included) at the end of training.", "",
             "Command: `python benchmarks/recovery.py` (writes this file from `recovery.json`).", "",
             f"Dense: WikiText-2 {dense['ppl']['wikitext2']:.2f}, C4 {dense['ppl']['c4']:.2f}"
             + (f", zero-shot mean {zs_dense['mean']:.3f}" if zs_dense else "") + ".", "",
             markdown_table(["state", "recovery", "WikiText-2", "C4", "recovered WT2", "recovered C4",
                             "zero-shot mean", "train s", "peak RSS MB", "sparsity"], rows)]
    if any(u.get("contended") for u in units.values()):
        lines += ["\\* measured while other work shared the two cores (tests, a CI run): the time and peak RSS of "
                  "these units are not clean and are to be measured again; perplexity is unaffected.", ""]
    if any(u.get("beside_niced_jobs") for u in units.values()):
        lines += ["† trained while low-priority (nice 19) development jobs ran on the same cores; the ShortGPT and "
                  "LLM-Pruner arms, re-run alone, took 183–285 s, so these times are high by up to about a third.", ""]
    verdicts = []
    for state in STATES:
        lora, kd = units.get(f"{state}|lora"), [units.get(f"{state}|kd-lora"), units.get(f"{state}|kd-full")]
        kd = [k for k in kd if k]
        if lora and kd:
            best = min(kd, key=lambda e: e["ppl"]["wikitext2"])
            wins = [d for d in DATASETS if best["ppl"][d] < lora["ppl"][d]]
            verdicts.append(f"- {state}: best KD arm {best['ppl']['wikitext2']:.2f} / {best['ppl']['c4']:.2f} vs LoRA "
                            f"{lora['ppl']['wikitext2']:.2f} / {lora['ppl']['c4']:.2f} (WikiText-2 / C4): KD lower on "
                            f"{', '.join(wins) if wins else 'neither'}")
    same_params = []
    for state in STATES:
        lora, kd_lora = units.get(f"{state}|lora"), units.get(f"{state}|kd-lora")
        if lora and kd_lora:
            deltas = ", ".join(f"{d} {kd_lora['ppl'][d] - lora['ppl'][d]:+.2f}" for d in DATASETS)
            same_params.append(f"- {state}: KD-LoRA − LoRA = {deltas}")
    if verdicts:
        lines += ["KD against LoRA at equal tokens:", "", *verdicts, ""]
    if same_params:
        lines += ["KD-LoRA against LoRA at equal tokens *and* equal trainable parameters (the same adapters; only "
                  "the objective differs) — negative is KD better:", "", *same_params, ""]
    if zero_shot:
        rows = [[key.replace("|", " / "), *(f"{z['acc'][t]:.3f}" for t in ZERO_SHOT_TASKS), f"{z['mean']:.3f}",
                 f"{z['seconds']:.0f}"] for key, z in zero_shot.items()]
        lines += ["Zero-shot accuracy per task:", "",
                  markdown_table(["model", *ZERO_SHOT_TASKS, "mean", "eval s"], rows), *_zero_shot_reading(zero_shot)]
    (RESULTS / "recovery.md").write_text("\n".join(lines))


def _zero_shot_reading(zero_shot: dict) -> list[str]:
    """How far the zero-shot means can be trusted: the sampling error of the examples scored, and
    per state the arms' order by mean accuracy."""
    limit = next(iter(zero_shot.values()))["limit"]
    one_task = (0.25 / limit) ** 0.5  # standard error of an accuracy near 0.5 on `limit` examples
    mean_of_tasks = one_task / len(ZERO_SHOT_TASKS) ** 0.5
    lines = [f"Sampling error: {limit} examples per task give a standard error of ±{100 * one_task:.1f} points "
             f"on one task and ±{100 * mean_of_tasks:.1f} on the mean of {len(ZERO_SHOT_TASKS)}; two arms' means "
             f"differ by ±{100 * mean_of_tasks * 2 ** 0.5:.1f} (one standard error) from sampling alone (less, as "
             "every arm scores the same examples), so the order below matters more than any one gap.", ""]
    for state in STATES:
        means = {arm: zero_shot[f"{state}|{arm}"]["mean"] for arm in ARMS if f"{state}|{arm}" in zero_shot}
        if len(means) > 1:
            order = sorted(means, key=means.get, reverse=True)
            lines.append(f"- {state}: " + " ≥ ".join(f"{arm} {100 * means[arm]:.1f}" for arm in order))
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="train,zeroshot", help="train, zeroshot (comma-separated)")
    parser.add_argument("--states", default=",".join(STATES), help="comma-separated state names")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--full-lr", type=float, default=2e-5)
    parser.add_argument("--eval-windows", type=int, default=16)
    parser.add_argument("--zs-limit", type=int, default=200)
    parser.add_argument("--table-only", action="store_true", help="rewrite recovery.md from recovery.json")
    parser.add_argument("--clean", action="store_true", help="delete the saved models under benchmarks/out/recovery")
    parser.add_argument("--unit", help=argparse.SUPPRESS)  # part|state|arm, run in this process
    args = parser.parse_args(argv)
    if args.unit:
        part, state, arm = args.unit.split("|")
        if part == "train":
            _store("units", f"{state}|{arm}", run_unit(state, arm, args))
        else:
            _store("zero_shot", f"{state}|{arm}", run_zero_shot(state, arm, args.zs_limit))
        return 0
    if args.table_only:
        write_table(load_results(JSON))
        return 0
    if args.clean:
        shutil.rmtree(WORK, ignore_errors=True)
        return 0
    states = [s.strip() for s in args.states.split(",") if s.strip()]
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [s for s in states if s not in STATES] + [a for a in arms if a not in ARMS]
    if unknown:
        parser.error(f"unknown state or arm: {', '.join(unknown)} (states: {', '.join(STATES)}; arms: {', '.join(ARMS)})")
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if set(parts) - {"train", "zeroshot"}:
        parser.error("--parts takes train and/or zeroshot")
    run(args, parts, states, [a for a in ARMS if a in arms])
    return 0


if __name__ == "__main__":
    sys.exit(main())
