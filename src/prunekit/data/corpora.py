"""Named corpora and local text files, resolved from prunekit's data root.

The data root is ``--data-root``, else ``$PRUNEKIT_DATA``, else ``../shared/data`` next to the
prunekit checkout (or next to the working directory) when it exists. Users with hub access can
have a named corpus that is absent from the data root fetched by ``datasets.load_dataset``;
without it the error names the file that was expected.
"""

from __future__ import annotations

import bz2
import gzip
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import DataError
from ..io.digest import sha256_files

PACKAGE_REPO = Path(__file__).resolve().parents[3]  # src/prunekit/data/corpora.py -> repo root


def default_data_root() -> Path | None:
    for candidate in (PACKAGE_REPO.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    return None


def resolve_data_root(explicit: str | os.PathLike | None = None) -> Path | None:
    """The data root in force: the argument, ``$PRUNEKIT_DATA``, or the default beside the repo."""
    chosen = explicit or os.environ.get("PRUNEKIT_DATA")
    if chosen:
        root = Path(chosen).expanduser()
        if not root.is_dir():
            raise DataError(f"data root not found: {root}")
        return root
    return default_data_root()


def open_text(path: Path):
    """Open a text file, transparently decompressing ``.gz`` and ``.bz2``."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    if path.suffix == ".bz2":
        return bz2.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def read_jsonl_field(path: Path, key: str = "text") -> list[str]:
    rows = []
    with open_text(path) as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
            if key not in record:
                raise DataError(f"{path}:{number}: no '{key}' field")
            rows.append(record[key])
    return rows


def read_lines(path: Path) -> list[str]:
    with open_text(path) as handle:
        return [line.strip() for line in handle if line.strip()]


def read_whole(path: Path) -> list[str]:
    with open_text(path) as handle:
        return [handle.read().replace("\r\n", "\n")]


@dataclass(frozen=True)
class SplitSource:
    """Where one split of a named corpus lives and how its documents are read."""

    pattern: str  # file or glob under the data root
    reader: Callable[[Path], list[str]]
    hub: tuple[str, str | None, str, str] | None = None  # (path, config, split, text field)


@dataclass(frozen=True)
class Corpus:
    name: str
    splits: dict[str, SplitSource]
    joiner: str  # how documents are joined into one stream (the reference protocols' choice)
    eval_split: str
    calib_split: str
    eval_docs: int | None = None  # C4 evaluates on the first 1100 validation documents
    eval_windows: int | None = None  # ... truncated to 256 windows


CORPORA: dict[str, Corpus] = {
    "wikitext2": Corpus(
        "wikitext2",
        {
            "test": SplitSource("wikitext-2-raw-v1/test.jsonl", read_jsonl_field, ("wikitext", "wikitext-2-raw-v1", "test", "text")),
            "validation": SplitSource("wikitext-2-raw-v1/validation.jsonl", read_jsonl_field, ("wikitext", "wikitext-2-raw-v1", "validation", "text")),
            "train": SplitSource("wikitext-2-raw-v1/train.jsonl", read_jsonl_field, ("wikitext", "wikitext-2-raw-v1", "train", "text")),
        },
        joiner="\n\n", eval_split="test", calib_split="train",
    ),
    "ptb": Corpus(
        "ptb",
        {
            "test": SplitSource("ptb_text_only/ptb.test.txt", read_lines, ("ptb_text_only", "penn_treebank", "test", "sentence")),
            "validation": SplitSource("ptb_text_only/ptb.valid.txt", read_lines, ("ptb_text_only", "penn_treebank", "validation", "sentence")),
            "train": SplitSource("ptb_text_only/ptb.train.txt", read_lines, ("ptb_text_only", "penn_treebank", "train", "sentence")),
        },
        joiner=" ", eval_split="test", calib_split="train",
    ),
    "c4": Corpus(
        "c4",
        {
            "train": SplitSource("c4/c4_sample.jsonl.gz", read_jsonl_field, ("allenai/c4", "en", "train", "text")),
            "validation": SplitSource("c4/c4_validation_2k.jsonl.gz", read_jsonl_field, ("allenai/c4", "en", "validation", "text")),
        },
        joiner="\n\n", eval_split="validation", calib_split="train", eval_docs=1100, eval_windows=256,
    ),
    "pg19": Corpus(
        "pg19",
        {"train": SplitSource("gutenberg_pg19_substitute/*.txt.gz", read_whole, ("pg19", None, "train", "text"))},
        joiner="\n\n", eval_split="train", calib_split="train",
    ),
}

# C4 is joined with " " for evaluation (the SparseGPT protocol) but "\n\n" for calibration windows.
EVAL_JOINERS = {"c4": " "}


@dataclass
class Documents:
    """Documents of one corpus split, with where they came from."""

    docs: list[str]
    provenance: dict = field(default_factory=dict)


def _from_hub(corpus: str, spec: SplitSource, expected: Path) -> Documents:
    try:
        import datasets  # noqa: PLC0415 - optional dependency
    except ImportError:
        raise DataError(
            f"{corpus}: expected {expected} (set --data-root or PRUNEKIT_DATA); "
            "install 'datasets' to fetch it from the Hugging Face Hub instead"
        ) from None
    path, config, split, key = spec.hub  # type: ignore[misc]
    try:
        dataset = datasets.load_dataset(path, config, split=split)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{corpus}: expected {expected}, and the hub fallback failed: {str(exc).splitlines()[0]}") from exc
    return Documents(list(dataset[key]), {"source": "hub", "hub": [path, config, split]})


def load_documents(corpus: str, split: str, data_root: str | os.PathLike | None) -> Documents:
    """The documents of ``corpus``'s ``split`` from the data root (or the hub as a fallback).

    ``data_root`` may be a string: the Python API takes what a user would type.
    """
    data_root = Path(data_root).expanduser() if data_root is not None else None
    if corpus not in CORPORA:
        raise DataError(f"unknown corpus '{corpus}': choose {', '.join(CORPORA)} or a .txt/.jsonl path")
    spec = CORPORA[corpus].splits.get(split)
    if spec is None:
        raise DataError(f"{corpus} has no split '{split}': choose {', '.join(CORPORA[corpus].splits)}")
    expected = (data_root / spec.pattern) if data_root else Path("<data root>") / spec.pattern
    files = sorted(data_root.glob(spec.pattern)) if data_root else []
    if not files:
        if spec.hub is not None:
            return _from_hub(corpus, spec, expected)
        raise DataError(f"{corpus}: expected {expected} (set --data-root or PRUNEKIT_DATA)")
    docs = [doc for path in files for doc in spec.reader(path)]
    provenance = {
        "source": "data_root",
        "files": [str(p) for p in files],
        "sha256": sha256_files(files),
    }
    return Documents(docs, provenance)


def load_local_documents(path: Path) -> Documents:
    """Documents of a local ``.txt``/``.jsonl`` file (optionally ``.gz``/``.bz2``)."""
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    suffixes = [s for s in path.suffixes if s not in (".gz", ".bz2")]
    kind = suffixes[-1] if suffixes else ""
    if kind == ".jsonl":
        docs = read_jsonl_field(path)
    elif kind in (".txt", ".raw", ".text", ""):
        docs = read_whole(path)
    else:
        raise DataError(f"{path}: unsupported data file type '{kind}' (use .txt or .jsonl, optionally .gz)")
    if not any(doc.strip() for doc in docs):
        raise DataError(f"{path}: the file holds no text")
    return Documents(docs, {"source": "file", "files": [str(path)], "sha256": sha256_files([path])})


def parse_corpus_name(spec: str) -> tuple[str, str | None]:
    """``"c4"`` -> ("c4", None); ``"wikitext2:test"`` -> ("wikitext2", "test")."""
    name, _, split = spec.partition(":")
    return name, (split or None)


def is_local_path(spec: str) -> bool:
    return spec not in CORPORA and parse_corpus_name(spec)[0] not in CORPORA
