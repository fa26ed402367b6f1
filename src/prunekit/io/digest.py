"""Content digests: what a run read (corpus files) or started from (a model directory)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_files(paths: list[Path], root: Path | None = None) -> str:
    """One sha256 over the files' bytes in order (with ``root``, each file's path relative to it
    goes in too, so a renamed or moved file changes the digest)."""
    digest = hashlib.sha256()
    for path in paths:
        if root is not None:
            digest.update(str(path.relative_to(root)).encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def directory_digest(path: Path) -> str:
    """sha256 of every file under ``path`` (hidden ones excepted), or of the one file ``path`` is."""
    if path.is_file():
        return sha256_files([path])
    files = sorted(p for p in path.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    return sha256_files(files, root=path)
