"""Pruning beyond memory: peak RSS of in-memory vs streamed pruning as depth grows, and a run
under a memory cap that the in-memory run cannot fit in.

Part ``streaming``: the shared model is cut to its first 10, 20 and 30 decoder layers (saved as
safetensors checkpoints), and each is pruned with Wanda 50% in a fresh process twice — loaded
whole (``prunekit prune``) and streamed layer by layer (``prunekit prune --stream``) — recording
the kernel's resident high-water mark (VmHWM) of the process. Part ``cap``: both runs of the full
model again inside a cgroup-v1 memory cap set below the dense model's size plus activations
(when this machine lets us create one); the streamed output is compared tensor by tensor with
the uncapped in-memory output. Part ``parallel``: wall time of layer-parallel pruning with 1 and 2
workers (spawned processes, and Ray tasks on a local runtime) on the full shared model — Wanda 50%
on dense inputs, and FISTA 50% (``--correction intra``) on layers 0–3 — with the check that every
weight equals the one-worker run's.

Run:  python benchmarks/scale.py [--parts streaming,cap,parallel] [--cap-mb 650]
Writes benchmarks/results/scale.json and scale.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import RESULTS, SHARED_MODELS, load_results, markdown_table, store_results

CGROUP = Path("/sys/fs/cgroup/memory")
PRUNE_ARGS = ["--method", "wanda", "--sparsity", "0.5", "--nsamples", "16", "--seqlen", "256", "--no-progress"]
CHILD = """
import sys
from prunekit.cli import main
rc = main(sys.argv[1:])
status = open('/proc/self/status').read()
hwm = [int(l.split()[1]) for l in status.splitlines() if l.startswith('VmHWM:')][0]
print('VMHWM_KB', hwm, flush=True)
sys.exit(rc)
"""


def run_prune(model: Path, out: Path, stream: bool, cgroup: Path | None = None) -> dict:
    """One prune in a fresh interpreter (optionally inside ``cgroup``); its exit code and VmHWM."""
    def enter_cgroup() -> None:
        if cgroup is not None:
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))

    args = ["prune", "--model", str(model), "--out", str(out), "--overwrite", *PRUNE_ARGS] + (["--stream"] if stream else [])
    proc = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, preexec_fn=enter_cgroup,
                          env={**os.environ, "OMP_NUM_THREADS": "2"})
    lines = [l for l in proc.stdout.splitlines() if l.startswith("VMHWM_KB")]
    return {"rc": proc.returncode, "peak_rss_mb": int(lines[0].split()[1]) / 1024 if lines else None,
            "stderr_tail": proc.stderr.strip().splitlines()[-1:] if proc.returncode else []}


def truncated_checkpoints(model_dir: Path, depths: list[int], root: Path) -> dict[int, Path]:
    import prunekit

    paths = {}
    for depth in depths:
        lm = prunekit.load(model_dir)
        layers = lm.adapter.decoder_layers()
        del layers[depth:]
        lm.model.config.num_hidden_layers = depth
        path = root / f"layers{depth}"
        lm.model.save_pretrained(path)
        lm.tokenizer.save_pretrained(path)
        paths[depth] = path
    return paths


def same_weights(a: Path, b: Path) -> bool:
    import torch
    from transformers import AutoModelForCausalLM

    first, second = (AutoModelForCausalLM.from_pretrained(p).state_dict() for p in (a, b))
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def make_cgroup(limit_mb: int) -> Path | None:
    group = CGROUP / "prunekit-bench"
    try:
        group.mkdir(exist_ok=True)
        (group / "memory.limit_in_bytes").write_text(str(limit_mb * 2**20))
        if (group / "memory.memsw.limit_in_bytes").exists():  # no escape into swap
            (group / "memory.memsw.limit_in_bytes").write_text(str(limit_mb * 2**20))
        return group
    except OSError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--parts", default="streaming,cap,parallel")
    parser.add_argument("--cap-mb", type=int, default=650)
    parser.add_argument("--depths", default="10,20,30")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    path = RESULTS / "scale.json"
    results = load_results(path)
    for name, model_dir in SHARED_MODELS.items():
        entry = results.setdefault(name, {})
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            depths = [int(d) for d in args.depths.split(",")]
            checkpoints = truncated_checkpoints(model_dir, depths, tmp)
            if "streaming" in parts:
                rows = entry.setdefault("streaming", {})
                for depth, checkpoint in checkpoints.items():
                    weights_mb = sum(p.stat().st_size for p in checkpoint.glob("*.safetensors")) / 2**20
                    rows[str(depth)] = {"weights_mb": weights_mb,
                                        "in_memory": run_prune(checkpoint, tmp / "mem", stream=False),
                                        "streamed": run_prune(checkpoint, tmp / "stream", stream=True)}
                    print(depth, rows[str(depth)], flush=True)
                    store_results(path, results)
            if "cap" in parts:
                full = checkpoints[max(depths)]
                group = make_cgroup(args.cap_mb)
                if group is None:
                    entry["cap"] = {"skipped": "cannot create a cgroup-v1 memory group here"}
                else:
                    reference = run_prune(full, tmp / "reference", stream=False)
                    capped_memory = run_prune(full, tmp / "capped-mem", stream=False, cgroup=group)
                    capped_stream = run_prune(full, tmp / "capped-stream", stream=True, cgroup=group)
                    entry["cap"] = {"cap_mb": args.cap_mb, "reference_uncapped": reference,
                                    "in_memory_capped": capped_memory, "streamed_capped": capped_stream,
                                    "streamed_equals_in_memory": capped_stream["rc"] == 0 and
                                    same_weights(tmp / "reference", tmp / "capped-stream")}
                    group.rmdir()
                print(entry["cap"], flush=True)
                store_results(path, results)
        if "parallel" in parts:
            done = entry.setdefault("parallel", {})
            for label in PARALLEL_RUNS:
                if label not in done:
                    done[label] = parallel_timings(model_dir, label)
                    store_results(path, results)
    write_table(results)


PARALLEL_RUNS = {
    "wanda 50% (dense inputs)": ("wanda", {"sparsity": 0.5, "inputs": "dense"}, None),
    "fista 50% (intra), layers 0-3": ("fista", {"sparsity": 0.5, "correction": "intra"}, "0-3"),
    "svd clip 50%, every matrix": ("svd", {"rate": 0.5}, None),
    "shortgpt BI, 25% of layers (windows split)": ("shortgpt", {"remove_fraction": 0.25}, None),
}


def parallel_timings(model_dir: Path, label: str) -> dict:
    """Prune-step seconds with 1 worker, 2 processes and 2 Ray tasks; weights (and BI) compared with 1 worker's."""
    import time

    import torch

    import prunekit

    method, options, layers = PARALLEL_RUNS[label]
    calibration = prunekit.CalibrationSettings(corpus="c4", nsamples=16, seqlen=256)
    runs, reference = {}, None
    for workers, executor in ((1, "process"), (2, "process"), (2, "ray")):
        lm = prunekit.load(model_dir)
        started = time.perf_counter()
        step = prunekit.prune(lm, method, calibration=calibration, progress=False, workers=workers,
                              executor=executor, **options, **({"layers": layers} if layers else {}))
        seconds = time.perf_counter() - started
        weights = {v.name: v.weight.clone() for i in range(lm.adapter.num_layers()) for v in lm.adapter.linears(i)}
        weights["block influence"] = torch.tensor(step.get("depth", {}).get("bi", []))
        reference = reference or weights
        runs[f"{workers} {executor}"] = {"seconds": seconds, "prune_seconds": step["timings"]["prune"],
                                         "identical": reference.keys() == weights.keys() and
                                         all(torch.equal(reference[k], w) for k, w in weights.items())}
        print(label, workers, executor, runs[f"{workers} {executor}"], flush=True)
    return runs


def write_table(results: dict) -> None:
    lines = []
    for name, entry in results.items():
        rows = [[name, depth, f"{r['weights_mb']:.0f}", f"{r['in_memory']['peak_rss_mb']:.0f}",
                 f"{r['streamed']['peak_rss_mb']:.0f}"] for depth, r in entry.get("streaming", {}).items()]
        if rows:
            lines.append(markdown_table(["model", "layers", "weights MB (fp32)", "peak RSS in memory MB",
                                         "peak RSS streamed MB"], rows))
        cap = entry.get("cap")
        if cap and "cap_mb" in cap:
            verdict = lambda r: "finished" if r["rc"] == 0 else f"failed (exit {r['rc']})"  # noqa: E731
            lines.append(f"Under a {cap['cap_mb']} MB cgroup memory cap: in-memory prune "
                         f"{verdict(cap['in_memory_capped'])}; streamed prune {verdict(cap['streamed_capped'])} "
                         f"(peak {cap['streamed_capped']['peak_rss_mb'] or float('nan'):.0f} MB); streamed weights "
                         f"identical to the uncapped in-memory run: {cap['streamed_equals_in_memory']}.\n")
    lines.append("Wanda 50%, 16 C4 windows × 256 tokens; VmHWM of a fresh process (Python + torch included). "
                 "Generated by `python benchmarks/scale.py`.\n")
    for name, entry in results.items():
        if entry.get("parallel"):
            rows = [[label, *(f"{runs[k]['prune_seconds']:.1f}" + ("" if runs[k]["identical"] else " (differs!)")
                              for k in ("1 process", "2 process", "2 ray"))]
                    for label, runs in entry["parallel"].items()]
            lines.append(f"Layer-parallel pruning of {name}: prune-step seconds (16 C4 windows × 256 tokens; each "
                         f"worker gets cpu_count / workers threads on this {os.cpu_count()}-core machine); every run's "
                         "weights (and, for ShortGPT, the BI values) equal the one-worker run's unless marked. SVD is "
                         "data-free (layers split over workers); ShortGPT's BI splits the calibration windows.\n")
            lines.append(markdown_table(["run", "1 worker", "2 processes", "2 Ray tasks"], rows))
    (RESULTS / "scale.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
