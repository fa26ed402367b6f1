"""A recipe that composes three pruning methods and LoRA on every shared model, with its report.

Runs ``benchmarks/recipes/composed.yaml`` (ShortGPT 20% of layers → LLM-Pruner 1/8 of the MLP channels
→ FISTA 2:4 → eval → LoRA 100 steps → eval) through the same runner as ``prunekit run``, and the
dense model through the same evaluation. Copies the run's report (markdown and plots) to
``benchmarks/results/recipe_<model>/`` and writes a per-step table to ``benchmarks/results/recipe.md``.

Run:  python benchmarks/recipe_showcase.py
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import prunekit
from prunekit.runner import load_recipe_file, run_recipe

from common import RESULTS, SHARED_MODELS, load_results, markdown_table, store_results

RECIPE = Path(__file__).parent / "recipes" / "composed.yaml"


def step_row(number: int, record: dict) -> list[str]:
    step = record["step"]
    method = step["method"]
    options = {k: v for k, v in (step.get("options") or {}).items() if v not in (None, False) and k in (
        "remove_fraction", "ratio", "param_ratio", "pattern", "ppl", "tasks")}
    options.update({k: step[k] for k in ("sparsity", "pattern") if step.get(k)})  # an unstructured step's target
    what = ", ".join(f"{k}={v}" for k, v in options.items())
    if "depth" in record:
        after = f"{record['depth']['layers_after']} layers, {record['depth']['params_after']:,} params"
    elif "width" in record:
        after = f"{record['width']['params_after']:,} params"
    elif record.get("sparsity", {}).get("overall"):
        after = f"{record['sparsity']['overall']:.3f} of the pruned linears zero"
    elif "recovery" in record:
        lora = record["recovery"]
        loss = (f"held-out loss {lora['heldout_loss_before']:.3f} → {lora['heldout_loss_after']:.3f}"
                if lora.get("heldout_loss_before") is not None else  # records from before held-out windows
                f"training loss {lora['loss_first']:.3f} → {lora['loss_last']:.3f}")
        after = f"{loss}; zero fraction {lora['sparsity_before']:.3f} → {lora['sparsity_after']:.3f}"
    else:
        evaluation = record.get("evaluation", {})
        parts = [f"WikiText-2 ppl {evaluation['ppl']['wikitext2']:.2f}"] if "ppl" in evaluation else []
        if "zero_shot" in evaluation:
            parts.append(f"zero-shot mean acc {evaluation['zero_shot']['mean_acc']:.3f}")
        after = "; ".join(parts)
    seconds = sum(v for v in record.get("timings", {}).values() if isinstance(v, (int, float)))
    return [str(number), method, what, after, f"{seconds:.0f}"]


def main() -> None:
    results_file = RESULTS / "recipe.json"
    results = load_results(results_file)
    recipe = load_recipe_file(RECIPE)
    evaluation = next(s.evaluation for s in reversed(recipe.steps) if s.evaluation)
    for name, model_dir in SHARED_MODELS.items():
        if name not in results:
            dense = prunekit.load(model_dir)
            dense_eval = {**prunekit.evaluate_perplexity(dense, evaluation["ppl"], max_windows=evaluation["max_windows"],
                                                         progress=False),
                          **prunekit.evaluate_zero_shot(dense, evaluation["tasks"], limit=evaluation["limit"],
                                                        progress=False)}
            with tempfile.TemporaryDirectory() as tmp:
                out, record = run_recipe(recipe, str(model_dir), Path(tmp) / "run", progress=True)
                target = RESULTS / f"recipe_{name}"
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(out / "report", target, ignore=shutil.ignore_patterns("*.html"))
                shutil.copy(out / "prunekit.json", target / "prunekit.json")
            results[name] = {"dense": {"params": sum(p.numel() for p in dense.model.parameters()),
                                       "ppl": dense_eval["ppl"], "zero_shot": dense_eval["zero_shot"]},
                             "steps": record["steps"]}
            store_results(results_file, results)
    write_outputs(results)


def write_outputs(results: dict) -> None:
    lines = ["Recipe `benchmarks/recipes/composed.yaml`, run by `python benchmarks/recipe_showcase.py` "
             "(the same runner as `prunekit run`). Seconds: the step's recorded timings.\n"]
    for name, entry in results.items():
        dense = entry["dense"]
        lines.append(f"### {name}\n")
        lines.append(f"Dense: {dense['params']:,} params, WikiText-2 ppl {dense['ppl']['wikitext2']:.2f}, zero-shot "
                     f"mean acc {dense['zero_shot']['mean_acc']:.3f}.\n")
        rows = [step_row(i, record) for i, record in enumerate(entry["steps"], 1)]
        lines.append(markdown_table(["step", "method", "options", "after the step", "seconds"], rows))
        lines.append(f"Report: [`recipe_{name}/report.md`](recipe_{name}/report.md).\n")
    (RESULTS / "recipe.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
