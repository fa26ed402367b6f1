"""Zero-shot multiple-choice task data from the data root, in the field layout of the Hugging Face
datasets that lm-evaluation-harness's own task configs read.

The harness's configs name hub datasets (``allenai/ai2_arc``, ``baber/piqa`` ...); here the same
examples come from the local files listed in the data README, renamed to the hub layout so the
harness's prompt, choice and target definitions apply unchanged. Each reader returns one split
(the one the literature reports: validation where the test labels are hidden, test otherwise).

HellaSwag is the exception: only the llama.cpp text export exists here (context already joined
and cleaned, ``ctx_a``/``ctx_b`` lost), so its docs carry the harness's *processed* fields
(``query``, ``choices``, ``label``) and the harness's ``process_docs`` is skipped.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import DataError
from .corpora import open_text
from .tasks import read_jsonl, require_file


@dataclass(frozen=True)
class ChoiceSplit:
    """The docs of one task split and the files they came from."""

    split: str  # "validation" or "test"
    docs: list[dict]
    files: tuple[str, ...]


def _labels(path: Path, expected: int) -> list[str]:
    labels = [line.strip() for line in open_text(path) if line.strip()]
    if len(labels) != expected:
        raise DataError(f"{path}: {len(labels)} labels for {expected} examples")
    return labels


def _nonempty(docs: list[dict], path: Path) -> list[dict]:
    if not docs:
        raise DataError(f"{path}: no examples")
    return docs


def _boolq(root: Path | None) -> ChoiceSplit:
    path = require_file(root, "super_glue_boolq/val.reconstructed.jsonl")
    docs = [{"question": r["question"], "passage": r["passage"], "idx": r.get("idx", i), "label": int(r["label"])}
            for i, r in enumerate(read_jsonl(path))]
    return ChoiceSplit("validation", _nonempty(docs, path), (str(path),))


def _piqa(root: Path | None) -> ChoiceSplit:
    path, label_path = require_file(root, "piqa/valid.jsonl"), require_file(root, "piqa/valid-labels.lst")
    rows = read_jsonl(path)
    docs = [{"goal": r["goal"], "sol1": r["sol1"], "sol2": r["sol2"], "label": int(label)}
            for r, label in zip(rows, _labels(label_path, len(rows)))]
    return ChoiceSplit("validation", _nonempty(docs, path), (str(path), str(label_path)))


def _hellaswag(root: Path | None) -> ChoiceSplit:
    path = require_file(root, "hellaswag/hellaswag_val_full.txt.bz2")
    lines = [line.rstrip("\n") for line in open_text(path)]
    if len(lines) % 6:
        raise DataError(f"{path}: {len(lines)} lines is not a whole number of 6-line items")
    docs = []
    for start in range(0, len(lines), 6):
        context, label, *endings = lines[start: start + 6]
        try:
            docs.append({"query": context, "choices": endings, "label": int(label)})
        except ValueError as exc:
            raise DataError(f"{path}:{start + 2}: label '{label}' is not an integer") from exc
    return ChoiceSplit("validation", _nonempty(docs, path), (str(path),))


def _winogrande(root: Path | None) -> ChoiceSplit:
    path, label_path = require_file(root, "winogrande_1.1/dev.jsonl"), require_file(root, "winogrande_1.1/dev-labels.lst")
    rows = read_jsonl(path)
    docs = [{"sentence": r["sentence"], "option1": r["option1"], "option2": r["option2"], "answer": label}
            for r, label in zip(rows, _labels(label_path, len(rows)))]
    return ChoiceSplit("validation", _nonempty(docs, path), (str(path), str(label_path)))


def _official_choices(question: dict) -> dict:
    """The AI2 layout's ``[{text, label}]`` as the hub layout's ``{text: [...], label: [...]}``."""
    return {"text": [c["text"] for c in question["choices"]], "label": [c["label"] for c in question["choices"]]}


def _arc(subset: str) -> Callable[[Path | None], ChoiceSplit]:
    def read(root: Path | None) -> ChoiceSplit:
        path = require_file(root, f"ai2_arc/{subset}/{subset}-Test.jsonl")
        docs = [{"id": r["id"], "question": r["question"]["stem"], "choices": _official_choices(r["question"]),
                 "answerKey": r["answerKey"]} for r in read_jsonl(path)]
        return ChoiceSplit("test", _nonempty(docs, path), (str(path),))

    return read


def _openbookqa(root: Path | None) -> ChoiceSplit:
    path = require_file(root, "openbookqa/test.jsonl")
    docs = [{"id": r["id"], "question_stem": r["question"]["stem"], "choices": _official_choices(r["question"]),
             "answerKey": r["answerKey"]} for r in read_jsonl(path)]
    return ChoiceSplit("test", _nonempty(docs, path), (str(path),))


def mmlu_subjects(root: Path | None) -> list[str]:
    """The subjects with a test file (``mmlu/test/<subject>_test.csv``)."""
    folder = require_file(root, "mmlu/test/abstract_algebra_test.csv").parent
    return sorted(p.name[: -len("_test.csv")] for p in folder.glob("*_test.csv"))


def mmlu_subject(root: Path | None, subject: str) -> ChoiceSplit:
    """One MMLU subject's test rows (the staged CSVs: question, choice0..3, answer index)."""
    path = require_file(root, f"mmlu/test/{subject}_test.csv")
    with open_text(path) as handle:
        rows = list(csv.DictReader(handle))
    try:
        docs = [{"question": r["question"], "subject": subject, "choices": [r[f"choice{i}"] for i in range(4)],
                 "answer": int(r["answer"])} for r in rows]
    except (KeyError, ValueError) as exc:
        raise DataError(f"{path}: expected columns question,choice0..choice3,answer (0-3): {exc}") from exc
    return ChoiceSplit("test", _nonempty(docs, path), (str(path),))


READERS: dict[str, Callable[[Path | None], ChoiceSplit]] = {
    "boolq": _boolq, "piqa": _piqa, "hellaswag": _hellaswag, "winogrande": _winogrande,
    "arc_easy": _arc("ARC-Easy"), "arc_challenge": _arc("ARC-Challenge"), "openbookqa": _openbookqa,
}
