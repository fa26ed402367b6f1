"""Labelled task data for few-shot in-context learning, from the data root (or a task file).

Every task has three disjoint splits:
- ``pool``: where demonstrations are drawn from;
- ``validation``: what any search (e.g. of the SVD clipping rate) may look at;
- ``test``: what is reported.

SST-2 and RTE ship a train file and the GLUE dev set; the dev set is our test split and a seeded
``validation_size`` examples of train are held out as validation (removed from the pool). COPA
ships SuperGLUE train as train (350) + dev (50) and the SuperGLUE validation set as test: the 50
are validation, the 350 the pool. Held-out examples are chosen by a fixed seed (0), independent of
the demonstration seed, so validation is the same set whatever seed a run samples demos with.

A user task is a JSON file: ``{"name", "kind": "label"|"choice", "template", "answers" (label
tasks), "choices" (choice tasks: the fields holding the candidates), "label_field", "train",
"test", optional "validation"}`` with jsonl paths relative to the file.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import ArgumentError, DataError
from .corpora import open_text

VALIDATION_SEED = 0


@dataclass
class TaskData:
    """A task's examples by split, each example a dict of fields plus an integer ``label``."""

    name: str
    splits: dict[str, list[dict]]
    files: list[str] = field(default_factory=list)


def _read_tsv(path: Path) -> list[dict]:
    with open_text(path) as handle:
        return list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open_text(path) as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
    return rows


def require_file(root: Path | None, relative: str) -> Path:
    if root is None:
        raise DataError(f"no data root: expected <data root>/{relative} (set --data-root or PRUNEKIT_DATA)")
    path = root / relative
    if not path.is_file():
        raise DataError(f"expected {path} (set --data-root or PRUNEKIT_DATA)")
    return path


def _labelled(rows: list[dict], path: Path, text_fields: dict[str, str]) -> list[dict]:
    """Rename ``text_fields`` (file column -> our field), strip them, and read ``label`` as int."""
    out = []
    for number, row in enumerate(rows, 1):
        try:
            example = {ours: str(row[theirs]).strip() for theirs, ours in text_fields.items()}
            example["label"] = int(row["label"])
        except (KeyError, ValueError) as exc:
            raise DataError(f"{path}: row {number} lacks a readable {exc} field") from exc
        out.append(example)
    if not out:
        raise DataError(f"{path}: no examples")
    return out


def content_key(example: dict) -> tuple:
    """An example's text fields (not its label): equal keys are the same example."""
    return tuple(sorted((k, str(v)) for k, v in example.items() if k != "label"))


def hold_out(train: list[dict], size: int) -> tuple[list[dict], list[dict]]:
    """Split ``train`` into (pool, validation) with ``size`` validation examples chosen by a fixed seed.

    SST-2's train set repeats short phrases, so every copy of a held-out text leaves the pool too:
    a validation query can never appear among the demonstrations.
    """
    if size >= len(train):
        raise DataError(f"cannot hold out {size} validation examples from {len(train)} training examples")
    order = list(range(len(train)))
    random.Random(VALIDATION_SEED).shuffle(order)
    held = set(order[:size])
    held_keys = {content_key(train[i]) for i in held}
    pool = [e for i, e in enumerate(train) if i not in held and content_key(e) not in held_keys]
    return pool, [train[i] for i in sorted(held)]


def _sst2(root: Path | None, validation_size: int) -> TaskData:
    train_path, test_path = require_file(root, "sst2_glue/train.tsv"), require_file(root, "sst2_glue/dev.tsv")
    train_rows, test_rows = _read_tsv(train_path), _read_tsv(test_path)
    # the staged train file names its text column "text", the GLUE dev file "sentence"
    train = _labelled(train_rows, train_path, {"text" if "text" in train_rows[0] else "sentence": "sentence"})
    test = _labelled(test_rows, test_path, {"sentence" if "sentence" in test_rows[0] else "text": "sentence"})
    pool, validation = hold_out(train, validation_size)
    return TaskData("sst2", {"pool": pool, "validation": validation, "test": test}, [str(train_path), str(test_path)])


def _rte(root: Path | None, validation_size: int) -> TaskData:
    train_path, test_path = require_file(root, "glue_rte/train.tsv"), require_file(root, "glue_rte/dev.tsv")
    columns = {"sentence1": "premise", "sentence2": "hypothesis"}
    train = _labelled(_read_tsv(train_path), train_path, columns)
    test = _labelled(_read_tsv(test_path), test_path, columns)
    pool, validation = hold_out(train, validation_size)
    return TaskData("rte", {"pool": pool, "validation": validation, "test": test}, [str(train_path), str(test_path)])


def _copa(root: Path | None, validation_size: int) -> TaskData:
    paths = {split: require_file(root, f"super_glue_copa/{name}.jsonl")
             for split, name in (("pool", "train"), ("validation", "dev"), ("test", "test"))}
    columns = {"premise": "premise", "choice1": "choice1", "choice2": "choice2", "question": "question"}
    splits = {split: _labelled(read_jsonl(path), path, columns) for split, path in paths.items()}
    return TaskData("copa", splits, [str(p) for p in paths.values()])


BUILTIN: dict[str, Callable[[Path | None, int], TaskData]] = {"sst2": _sst2, "rte": _rte, "copa": _copa}


def require_known_task(spec: str) -> None:
    """A task is a built-in name or a ``.json`` spec file; anything else fails with the choices."""
    if not spec.endswith(".json") and spec not in BUILTIN:
        raise ArgumentError(f"unknown ICL task '{spec}': choose {', '.join(BUILTIN)} or a task .json file")


def load_task_data(name: str, root: Path | None, validation_size: int = 256) -> TaskData:
    """The splits of a built-in task (``sst2``, ``rte``, ``copa``)."""
    require_known_task(name)
    return BUILTIN[name](root, validation_size)


def read_json_file(path: Path, what: str, error: type[Exception] = DataError, object_only: bool = True):
    """The JSON value in ``path`` (an object unless ``object_only`` is off); a missing file or bad
    JSON is one clear ``error`` (a :class:`DataError` for data, an argument error for a flag's file)."""
    if not path.is_file():
        raise error(f"{what} not found: {path}")
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON ({exc.msg})") from exc
    if object_only and not isinstance(value, dict):
        raise error(f"{path}: expected a JSON object")
    return value


def load_task_file(path: Path, validation_size: int = 256) -> tuple[dict, TaskData]:
    """A user task: its spec (template, answers/choices) and its splits from jsonl files."""
    spec = read_json_file(path, "task file")
    for key in ("name", "kind", "template", "train", "test"):
        if key not in spec:
            raise DataError(f"{path}: the task spec needs '{key}'")
    label_field = spec.get("label_field", "label")
    splits = {}
    files = []
    for split, key in (("pool", "train"), ("validation", "validation"), ("test", "test")):
        if key not in spec:
            continue
        file = (path.parent / spec[key]).resolve()
        if not file.is_file():
            raise DataError(f"{path}: {key} file not found: {file}")
        rows = read_jsonl(file)
        if not rows:
            raise DataError(f"{file}: no examples")
        for number, row in enumerate(rows, 1):
            if label_field not in row:
                raise DataError(f"{file}: row {number} has no '{label_field}' field")
            try:
                row["label"] = int(row[label_field])
            except (TypeError, ValueError) as exc:
                raise DataError(f"{file}: row {number}: label '{row[label_field]}' is not an integer") from exc
        splits[split] = rows
        files.append(str(file))
    if "validation" not in splits:
        splits["pool"], splits["validation"] = hold_out(splits["pool"], min(validation_size, len(splits["pool"]) // 2))
    return spec, TaskData(spec["name"], splits, files)
