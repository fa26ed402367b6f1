"""Few-shot in-context learning: k demonstrations, then the query; predict by log-likelihood.

A template is data: a format string with the example's fields and one ``{answer}`` slot, e.g.
``"Review: {sentence}\\nSentiment: {answer}"``. A demonstration is the template filled with the
gold answer; the query is the template cut at ``{answer}`` (whitespace before the slot moves to
the answer, as lm-evaluation-harness splits context and continuation). Label tasks (SST-2, RTE)
have one answer word per label; choice tasks (COPA) take the candidates from the example.

Demonstrations: ``shots`` examples from the task's pool, drawn once per evaluation with a seeded,
label-balanced sampler (labels as equal as ``shots`` allows, order shuffled). The same
demonstrations precede every query, so their KV cache is computed once and shared (see
:mod:`.loglik`). Prediction: the candidate with the highest summed log-likelihood (ties -> the
lower label). Metrics: accuracy, and macro-F1 over the labels for label tasks.
"""

from __future__ import annotations

import random
import string
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..data.tasks import TaskData, load_task_data, load_task_file, read_json_file
from ..errors import ArgumentError, DataError
from .loglik import Request, continuation_logliks

SEPARATOR = "\n\n"
DEFAULT_SHOTS = {"sst2": 10, "rte": 5, "copa": 5}  # the SVD-ICL reference's demonstrations per task; others 5


def shots_for(task: str, shots: int | None) -> int:
    """``shots`` if given, else the task's default."""
    return DEFAULT_SHOTS.get(task, 5) if shots is None else shots
SPLITS = ("validation", "test")


@dataclass
class Template:
    """How one example is written; ``answers`` for label tasks, ``choices`` (field names) for choice tasks."""

    text: str
    kind: str = "label"
    answers: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        fields = [name for _, name, _, _ in string.Formatter().parse(self.text) if name is not None]
        if fields.count("answer") != 1:
            raise ArgumentError(f"template {self.text!r} needs exactly one {{answer}} slot")
        if not self.text.rstrip().endswith("{answer}"):
            raise ArgumentError(f"template {self.text!r} must end with {{answer}}")
        if self.kind == "label" and len(self.answers) < 2:
            raise ArgumentError(f"a label template needs at least two answers (got {list(self.answers)})")
        if self.kind == "choice" and len(self.choices) < 2:
            raise ArgumentError(f"a choice template needs at least two choice fields (got {list(self.choices)})")
        if self.kind not in ("label", "choice"):
            raise ArgumentError(f"template kind must be 'label' or 'choice', got '{self.kind}'")
        self.answers, self.choices = tuple(self.answers), tuple(self.choices)

    def candidates(self, example: dict) -> list[str]:
        if self.kind == "label":
            return list(self.answers)
        return [example[name] for name in self.choices]

    def context(self, example: dict) -> tuple[str, str]:
        """(context text, whitespace that starts every answer)."""
        head = self.text[: self.text.index("{answer}")]
        stripped = head.rstrip(" ")
        return stripped.format(**example), head[len(stripped):]

    def demonstration(self, example: dict) -> str:
        context, space = self.context(example)
        return context + space + self.candidates(example)[example["label"]]


def _copa_fields(example: dict) -> dict:
    """COPA's ``{premise} because|so {choice}``: the premise without its full stop, choices lower-cased."""
    lower = lambda text: text[:1].lower() + text[1:]  # noqa: E731
    return {**example, "premise_clause": example["premise"].rstrip(".!? "),
            "connector": "because" if example["question"] == "cause" else "so",
            "choice1": lower(example["choice1"]), "choice2": lower(example["choice2"])}


TEMPLATES: dict[str, Template] = {
    "sst2": Template("Review: {sentence}\nSentiment: {answer}", answers=("negative", "positive")),
    # GLUE RTE: label 0 = entailment
    "rte": Template("{premise}\nQuestion: {hypothesis} True or False?\nAnswer: {answer}", answers=("True", "False")),
    "copa": Template("{premise_clause} {connector} {answer}", kind="choice", choices=("choice1", "choice2")),
}
PREPARE = {"copa": _copa_fields}


@dataclass
class IclTask:
    name: str
    template: Template
    data: TaskData

    def examples(self, split: str) -> list[dict]:
        prepare = PREPARE.get(self.name, lambda e: e)
        return [prepare(e) for e in self.data.splits[split]]


def load_icl_task(spec: str, root: Path | None, *, template: Template | None = None, validation_size: int = 256) -> IclTask:
    """A built-in task by name, or a user task from a ``.json`` spec file; checks labels fit the template."""
    if spec.endswith(".json"):
        raw, data = load_task_file(Path(spec), validation_size)
        chosen = template or Template(raw["template"], raw["kind"], tuple(raw.get("answers", ())), tuple(raw.get("choices", ())))
        task = IclTask(data.name, chosen, data)
    else:
        task = IclTask(spec, template or TEMPLATES[spec], load_task_data(spec, root, validation_size))
    _check_labels(task)
    return task


def _check_labels(task: IclTask) -> None:
    count = len(task.template.answers) if task.template.kind == "label" else len(task.template.choices)
    for split in task.data.splits:
        for number, example in enumerate(task.examples(split), 1):
            if not 0 <= example["label"] < count:
                raise DataError(f"{task.name} {split} example {number}: label {example['label']} does not match the "
                                f"template's {count} {'answers' if task.template.kind == 'label' else 'choices'}")
            try:
                task.template.context(example)
            except KeyError as exc:
                raise DataError(f"{task.name} {split} example {number}: the template needs field {exc}, which the "
                                f"example lacks (fields: {', '.join(sorted(example))})") from None
            if task.template.kind == "choice":
                missing = [c for c in task.template.choices if c not in example]
                if missing:
                    raise DataError(f"{task.name} {split} example {number}: no choice field '{missing[0]}'")


def sample_demonstrations(pool: list[dict], shots: int, seed: int) -> list[dict]:
    """``shots`` examples of ``pool``, labels as balanced as possible, in a seeded order."""
    if shots < 0:
        raise ArgumentError(f"--shots must be at least 0 (got {shots})")
    if shots > len(pool):
        raise ArgumentError(f"--shots {shots} is more than the {len(pool)} training examples available")
    rng = random.Random(seed)
    by_label: dict[int, list[int]] = {}
    for index, example in enumerate(pool):
        by_label.setdefault(example["label"], []).append(index)
    labels = sorted(by_label)
    wanted = {label: shots // len(labels) for label in labels}
    for label in rng.sample(labels, shots % len(labels)):
        wanted[label] += 1
    chosen: list[int] = []
    for label in labels:
        if wanted[label] > len(by_label[label]):
            raise ArgumentError(f"--shots {shots}: only {len(by_label[label])} training examples have label {label}")
        chosen.extend(rng.sample(by_label[label], wanted[label]))
    rng.shuffle(chosen)
    return [pool[i] for i in chosen]


def evaluate_icl(model, tokenizer, task: IclTask, *, shots: int, split: str = "test", seed: int = 0,
                 limit: int | None = None, progress: bool = False) -> dict:
    """Accuracy (and macro-F1 for label tasks) of ``model`` on ``task``'s ``split`` with ``shots`` demonstrations."""
    if split not in SPLITS:
        raise ArgumentError(f"--split must be one of {', '.join(SPLITS)}, got '{split}'")
    if limit is not None and limit < 1:
        raise ArgumentError(f"--icl-limit must be at least 1 (got {limit})")
    started = time.perf_counter()
    template = task.template
    demos = sample_demonstrations(task.examples("pool"), shots, seed)
    queries = task.examples(split)
    if limit is not None and limit < len(queries):
        keep = sorted(random.Random(seed).sample(range(len(queries)), limit))
        queries = [queries[i] for i in keep]
    prefix_text = "".join(template.demonstration(d) + SEPARATOR for d in demos)
    prefix = tokenizer(prefix_text)["input_ids"] if prefix_text else []
    requests: list[Request] = []
    spans = []
    for example in queries:
        context, space = template.context(example)
        # with no demonstrations the context opens the sequence (special tokens as the tokenizer adds them)
        context_ids = tokenizer(context, add_special_tokens=not prefix)["input_ids"]
        first = len(requests)
        for candidate in template.candidates(example):
            requests.append(Request(context_ids, tokenizer(space + candidate, add_special_tokens=False)["input_ids"]))
        spans.append((first, len(requests)))
    scores = continuation_logliks(model, prefix, requests, progress=progress, desc=f"icl {task.name}")
    predictions = []
    for first, stop in spans:
        values = [scores[i][0] for i in range(first, stop)]
        predictions.append(max(range(len(values)), key=lambda i: (values[i], -i)))
    gold = [e["label"] for e in queries]
    result = {
        "task": task.name, "split": split, "shots": shots, "seed": seed, "examples": len(queries),
        "accuracy": sum(p == g for p, g in zip(predictions, gold)) / len(gold),
        "predictions": predictions, "prefix_tokens": len(prefix),
        "template": asdict(template), "demonstrations": [{k: d[k] for k in d} for d in demos],
        "files": task.data.files, "seconds": round(time.perf_counter() - started, 3),
    }
    if template.kind == "label":
        result["macro_f1"] = macro_f1(predictions, gold, len(template.answers))
    return result


def macro_f1(predictions: list[int], gold: list[int], classes: int) -> float:
    scores = []
    for label in range(classes):
        tp = sum(p == label and g == label for p, g in zip(predictions, gold))
        fp = sum(p == label and g != label for p, g in zip(predictions, gold))
        fn = sum(p != label and g == label for p, g in zip(predictions, gold))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(scores) / classes


def read_template_overrides(path: str | None) -> dict[str, Template]:
    """``{task: {"text", "kind", "answers"|"choices"}}`` from a JSON file (``--icl-templates``)."""
    if not path:
        return {}
    raw = read_json_file(Path(path), "template file")
    out = {}
    for name, entry in raw.items():
        base = TEMPLATES.get(name)
        out[name] = Template(entry.get("text", base.text if base else ""), entry.get("kind", base.kind if base else "label"),
                             tuple(entry.get("answers", base.answers if base else ())),
                             tuple(entry.get("choices", base.choices if base else ())))
    return out
