"""Peak memory of the layer-wise calibration pass vs calibration size and model depth.

Each configuration runs in its own process: load the model (optionally only its first half of
layers), reset the kernel's resident high-water mark, run the layer-wise pass over calibration
windows collecting the Gram matrix and activation norms of every linear in every layer, then read
the high-water mark. ``overhead`` = peak during calibration − resident after loading: the memory
the capture engine itself needs, which must not grow with depth. Weights are read once before
the reset (they are mmap-backed and would otherwise be paged in during the walk).

Run:  python benchmarks/calibration_memory.py [--seqlen 256]
Writes benchmarks/results/calibration_memory.json and .md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import RESULTS, SHARED_MODELS, markdown_table, store_results


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(field)


def measure(model_dir: str, nsamples: int, num_layers: int | None, seqlen: int) -> dict:
    import torch

    from prunekit.capture import layerwise
    from prunekit.data import calibration_windows, resolve_data_root
    from prunekit.models import load_model

    lm = load_model(model_dir, num_layers=num_layers)
    windows = calibration_windows(lm.tokenizer, "c4", nsamples=nsamples, seqlen=seqlen, seed=0, data_root=resolve_data_root())
    weights_mb = sum(p.numel() * p.element_size() for p in lm.model.parameters()) / 2**20
    # safetensors weights are mmap-backed and become resident only when first read: read them all
    # now, so pages brought in by the walk are not counted as the engine's overhead
    with torch.no_grad():
        for param in lm.model.parameters():
            param.sum()
    after_load = _status_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS (Linux >= 4.0)
    started = time.perf_counter()
    trace: list[float] = []  # high-water mark above after_load, read as each layer is reached

    def on_layer(_ctx) -> None:
        trace.append(round(_status_mb("VmHWM") - after_load, 1))

    layerwise(lm, on_layer, calib_ids=windows.ids, needs=frozenset({"gram", "sqnorm"}), batch_size=8, progress=False)
    seconds = time.perf_counter() - started
    peak = _status_mb("VmHWM")
    activations_mb = 2 * windows.ids.numel() * lm.adapter.hidden_size * 4 / 2**20
    return {"nsamples": nsamples, "seqlen": seqlen, "layers": lm.adapter.num_layers(), "weights_mb": round(weights_mb, 1),
            "rss_after_load_mb": round(after_load, 1), "peak_calibration_mb": round(peak, 1),
            "overhead_mb": round(peak - after_load, 1), "two_activation_buffers_mb": round(activations_mb, 1),
            "seconds": round(seconds, 1), "threads": torch.get_num_threads(), "overhead_by_layer_mb": trace}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "NSAMPLES", "LAYERS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        model, nsamples, layers = args.child
        print(json.dumps(measure(model, int(nsamples), int(layers) or None, args.seqlen)))
        return
    rows, results = [], {}
    for name, model_dir in SHARED_MODELS.items():
        from transformers import AutoConfig  # noqa: PLC0415 - only the parent needs it

        from prunekit.models.loading import _find_gguf, convert_gguf  # noqa: PLC0415

        float_dir = convert_gguf(model_dir, _find_gguf(model_dir)) if _find_gguf(model_dir) else model_dir
        depth = AutoConfig.from_pretrained(float_dir).num_hidden_layers
        for layers in (depth, depth // 2):
            for nsamples in (128, 32):
                out = subprocess.run([sys.executable, __file__, "--seqlen", str(args.seqlen), "--child", str(model_dir),
                                      str(nsamples), str(layers)], capture_output=True, text=True, check=True)
                result = json.loads(out.stdout.strip().splitlines()[-1])
                results[f"{name}|{layers}|{nsamples}"] = result
                store_results(RESULTS / "calibration_memory.json", results)
                print(name, result, flush=True)
                rows.append([name, str(result["layers"]), str(nsamples), str(args.seqlen), f"{result['weights_mb']:.0f}",
                             f"{result['rss_after_load_mb']:.0f}", f"{result['peak_calibration_mb']:.0f}",
                             f"{result['overhead_mb']:.0f}", f"{result['two_activation_buffers_mb']:.0f}", f"{result['seconds']:.0f}"])
    table = markdown_table(["model", "layers", "windows", "seqlen", "weights MB", "RSS after load MB",
                            "peak while calibrating MB", "calibration overhead MB", "2 activation buffers MB", "seconds"], rows)
    deepest = max(results.values(), key=lambda r: (r["layers"], r["nsamples"]))
    trace = deepest["overhead_by_layer_mb"]
    table += (f"\nOverhead high-water mark as each layer is reached ({deepest['layers']} layers, {deepest['nsamples']} windows): "
              + ", ".join(f"{v:.0f}" for v in trace) + " MB — it settles after the first layers and stays flat with depth.\n")
    note = ("Overhead = peak resident memory during the layer-wise pass (Gram + norms of every linear, every layer) "
            "minus resident memory after loading (weights already resident). Generated by `python benchmarks/calibration_memory.py`.\n")
    (RESULTS / "calibration_memory.md").write_text(table + "\n" + note)
    print(table + "\n" + note)


if __name__ == "__main__":
    main()
