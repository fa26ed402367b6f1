"""Atomic output: everything is written to a temporary sibling directory and renamed on success.

An interrupted or failed run therefore never leaves a half-written model where the user asked
for one; a previous output is replaced only with ``overwrite`` and only once the new one is
complete.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from ..errors import OutputExistsError
from .shapes import needs_remote_code, write_remote_code

RECORD_NAME = "prunekit.json"


def check_output_path(out: str | os.PathLike, overwrite: bool) -> Path:
    """Fail early (before any work) when ``out`` exists and may not be replaced."""
    path = Path(out).expanduser()
    if path.exists() and not overwrite:
        raise OutputExistsError(f"output directory {path} exists; pass --overwrite to replace it")
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"output path {path} exists and is not a directory")
    return path


@contextmanager
def atomic_directory(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``out`` when the block completes."""
    target = check_output_path(out, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: Path, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=False)
        handle.write("\n")


def save_model(model, tokenizer, out: str | os.PathLike, record: dict, overwrite: bool = False,
               extras: Callable[[Path], None] | None = None) -> Path:
    """Write a plain Hugging Face directory (safetensors) plus ``prunekit.json``, atomically;
    ``extras(tmp)`` may add files (plots) that land with the model or not at all."""
    with atomic_directory(out, overwrite) as tmp:
        if extras is not None:
            extras(tmp)
        model.save_pretrained(tmp, safe_serialization=True)
        if needs_remote_code(model.config):
            write_remote_code(model, tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_json(tmp / RECORD_NAME, record)
    return Path(out).expanduser()
