"""Zero-shot multiple-choice accuracy through lm-evaluation-harness, on local data.

The numbers are the harness's own: its task configs (prompt, choices, target, metrics) are loaded
from the installed ``lm_eval`` package, only the dataset is swapped for the local files of the
data root (:mod:`prunekit.data.choice_tasks`), and the in-memory model is scored by the harness's
``HFLM`` wrapper. ``acc`` picks the choice with the highest summed log-likelihood; ``acc_norm``
divides it by the choice's length (the harness counts characters; for the English tasks here that
is the byte length evaluation.md names), reported where the harness config asks for it.

MMLU is scored as the harness's 57 per-subject tasks; its ``acc`` is the size-weighted mean over
subjects (the harness's group aggregation), and ``--limit`` applies per subject.

:func:`score_with_prunekit` scores the same requests with prunekit's own scorer
(:func:`prunekit.eval.loglik.continuation_logliks`, the one the ICL evaluator uses): the context is
the shared prefix and every choice continues from it. A test holds the two to the same accuracy.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

from ..data.choice_tasks import READERS, ChoiceSplit, mmlu_subject, mmlu_subjects
from ..errors import ArgumentError
from .loglik import Request, continuation_logliks

# task name -> the harness config it uses (relative to the lm_eval/tasks folder)
HARNESS_CONFIGS = {
    "boolq": "super_glue/boolq/default.yaml",
    "piqa": "piqa/piqa.yaml",
    "hellaswag": "hellaswag/hellaswag.yaml",
    "winogrande": "winogrande/default.yaml",
    "arc_easy": "arc/arc_easy.yaml",
    "arc_challenge": "arc/arc_challenge.yaml",
    "openbookqa": "openbookqa/openbookqa.yaml",
    "mmlu": "mmlu/default/mmlu_{subject}.yaml",
}
ZERO_SHOT_TASKS = tuple(HARNESS_CONFIGS)
# the LLM-Pruner / Wanda table
DEFAULT_TASKS = ("boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")


def require_known_tasks(names: Sequence[str]) -> None:
    """Unknown task names fail before any model is loaded, listing the available ones."""
    unknown = [n for n in names if n not in HARNESS_CONFIGS]
    if unknown:
        raise ArgumentError(f"unknown zero-shot task(s) {', '.join(unknown)}: choose from {', '.join(ZERO_SHOT_TASKS)}")
    if not names:
        raise ArgumentError("no zero-shot task given")


def check_task_data(names: Sequence[str], data_root: Path | None) -> None:
    """Unknown names and missing or unreadable task files fail here, naming what was expected,
    before a model is loaded."""
    require_known_tasks(names)
    for name in names:
        if name == "mmlu":
            mmlu_subject(data_root, mmlu_subjects(data_root)[0])
        else:
            READERS[name](data_root)


def _harness_config(relative: str) -> dict:
    """The harness's YAML for a task, with its ``include`` and ``!function`` entries resolved."""
    import lm_eval.tasks

    path = Path(lm_eval.tasks.__file__).parent / relative
    try:
        from lm_eval.tasks._yaml_loader import load_yaml
    except ImportError:  # releases before the loader module
        from lm_eval.utils import load_yaml_config

        return load_yaml_config(str(path))
    return load_yaml(path)


def build_task(name: str, data_root: Path | None, subject: str | None = None):
    """The harness's ``ConfigurableTask`` for ``name`` (an MMLU ``subject``), reading local docs."""
    import datasets
    from lm_eval.api.task import ConfigurableTask

    data: ChoiceSplit = mmlu_subject(data_root, subject) if name == "mmlu" else READERS[name](data_root)
    config = _harness_config(HARNESS_CONFIGS[name].format(subject=subject))
    config.update({
        "dataset_path": "prunekit-data-root", "dataset_name": subject,
        "custom_dataset": lambda **_: {data.split: datasets.Dataset.from_list(data.docs)},
        "training_split": None, "fewshot_split": None,
        "validation_split": data.split if data.split == "validation" else None,
        "test_split": data.split if data.split == "test" else None,
    })
    config.pop("tag", None)
    if name == "hellaswag":
        config["process_docs"] = None  # the local export already holds the processed query/choices
    task = ConfigurableTask(config=config)
    task.prunekit_files = data.files
    return task


def _tasks_for(names: Sequence[str], data_root: Path | None) -> dict[str, list]:
    return {name: ([build_task(name, data_root, s) for s in mmlu_subjects(data_root)] if name == "mmlu"
                   else [build_task(name, data_root)]) for name in names}


def evaluate_zero_shot(model, tokenizer, names: Sequence[str], *, data_root: Path | None, limit: int | None = None,
                       batch_size: int = 16, progress: bool = True) -> dict:
    """acc / acc_norm per task (the harness's numbers), their means, examples scored and seconds."""
    from lm_eval import evaluator

    require_known_tasks(names)
    if limit is not None and limit < 1:
        raise ArgumentError(f"--limit must be at least 1 (got {limit})")
    started = time.perf_counter()
    # the harness warns once per task that a custom dataset loader is in use: that is by design here
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    tasks = _tasks_for(names, data_root)
    harness_lm = _harness_lm(model, tokenizer, batch_size, progress)
    task_dict = {task.config.task: task for group in tasks.values() for task in group}
    with _harness_bars(progress):
        output = evaluator.evaluate(lm=harness_lm, task_dict=task_dict, limit=limit, bootstrap_iters=0,
                                    log_samples=False, verbosity="INFO" if progress else "ERROR")
    results: dict[str, dict] = {}
    for name, group in tasks.items():
        per_task = [(output["results"][t.config.task], output["n-samples"][t.config.task]["effective"]) for t in group]
        examples = sum(n for _, n in per_task)
        entry = {"split": group[0].config.test_split or group[0].config.validation_split, "examples": examples,
                 "files": [f for t in group for f in t.prunekit_files][:3] + (["…"] if len(group) > 1 else [])}
        for metric in ("acc", "acc_norm"):
            if all(f"{metric},none" in r for r, _ in per_task):
                entry[metric] = sum(r[f"{metric},none"] * n for r, n in per_task) / examples
        if name == "mmlu":
            entry["subjects"] = len(group)
        results[name] = entry
    accs = [r["acc"] for r in results.values()]
    # the LLM-Pruner table's average: acc_norm where the task reports it, acc otherwise
    norms = [r.get("acc_norm", r["acc"]) for r in results.values()]
    import lm_eval

    return {"tasks": results, "zero_shot": {
        "mean_acc": sum(accs) / len(accs), "mean_acc_norm_or_acc": sum(norms) / len(norms), "limit": limit,
        "scorer": f"lm-eval {lm_eval.__version__} HFLM", "batch_size": batch_size,
        "seconds": round(time.perf_counter() - started, 1)}}


@contextmanager
def _harness_bars(shown: bool):
    """The harness's progress bars follow ``progress``: its request-building bar takes no switch
    (so its module's ``tqdm`` is swapped for a disabled one for the duration), and its scoring
    bars take ``disable_tqdm``, which the evaluator never passes (see :func:`_harness_lm`)."""
    if shown:
        yield
        return
    import functools

    import lm_eval.api.task as task_module

    original = task_module.tqdm
    task_module.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        task_module.tqdm = original


def _harness_lm(model, tokenizer, batch_size: int, progress: bool):
    from lm_eval.models.huggingface import HFLM

    class QuietHFLM(HFLM):
        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm or not progress)

    device = str(next(model.parameters()).device)
    return QuietHFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context and continuation tokens as causal-LM scoring conventionally splits them: trailing
    spaces of the context move to the continuation, the pair is encoded whole, and the
    continuation is what follows the context's own encoding."""
    stripped = context.rstrip()
    continuation, context = context[len(stripped):] + continuation, stripped
    whole = tokenizer(context + continuation)["input_ids"]
    context_ids = tokenizer(context)["input_ids"]
    return context_ids, whole[len(context_ids):]


def score_with_prunekit(model, tokenizer, task, *, limit: int | None = None) -> dict:
    """The task's harness requests scored by prunekit's shared-prefix scorer: per-doc predictions
    (acc and byte-normalised acc_norm), per-request log-likelihoods in harness order."""
    task.build_all_requests(limit=limit, rank=0, world_size=1)
    by_doc: dict[int, list] = {}
    for instance in task.instances:
        by_doc.setdefault(instance.doc_id, []).append(instance)
    logliks, correct, correct_norm = [], [], []
    for doc_id, instances in sorted(by_doc.items()):
        instances.sort(key=lambda i: i.idx)
        encoded = [encode_pair(tokenizer, *i.arguments) for i in instances]
        contexts = {tuple(c) for c, _ in encoded}
        if len(contexts) == 1:  # every choice continues one context: share it as the prefix
            scores = continuation_logliks(model, encoded[0][0], [Request([], cont) for _, cont in encoded])
        else:  # partial scoring (WinoGrande): the choices are in the contexts
            scores = continuation_logliks(model, [], [Request(ctx, cont) for ctx, cont in encoded])
        values = [s for s, _ in scores]
        doc = instances[0].doc
        choices = task.doc_to_choice(doc)
        # the harness's conventions: the gold of a multiple-input task (WinoGrande) is the context
        # index; acc_norm divides by the choice's length in characters
        gold = task.doc_to_text(doc) if task.multiple_input else task.doc_to_target(doc)
        gold = gold if isinstance(gold, int) else choices.index(gold)
        lengths = [len(c) for c in choices]
        correct.append(int(max(range(len(values)), key=values.__getitem__) == gold))
        correct_norm.append(int(max(range(len(values)), key=lambda j: values[j] / lengths[j]) == gold))
        logliks.extend(values)
    return {"acc": sum(correct) / len(correct), "acc_norm": sum(correct_norm) / len(correct_norm),
            "correct": correct, "logliks": logliks}
