"""Token windows: seeded random calibration windows and the standard evaluation windows."""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ArgumentError, DataError
from .corpora import CORPORA, EVAL_JOINERS, Documents, is_local_path, load_documents, load_local_documents, parse_corpus_name

PROTOCOLS = ("standard", "llm-pruner")


@dataclass
class TokenWindows:
    """``ids`` is ``(windows, seqlen)``; ``provenance`` records how they were made."""

    ids: torch.Tensor
    provenance: dict = field(default_factory=dict)


_STREAMS: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()
_STREAMS_KEPT = 8


def tokenize_stream(tokenizer, text: str) -> torch.Tensor:
    """Tokenize a whole corpus once, the way the reference protocols do (tokenizer defaults).

    Streams are kept per process (a few corpora, keyed by the tokenizer's content and the text),
    so a recipe or a test session that draws windows from the same corpus again does not
    re-tokenize megabytes of text — also when the same tokenizer was saved beside another model.
    """
    key = (type(tokenizer).__name__, _tokenizer_fingerprint(tokenizer), len(tokenizer), len(text), hash(text))
    if key in _STREAMS:
        _STREAMS.move_to_end(key)
        return _STREAMS[key]
    stream = _tokenize(tokenizer, text)
    _STREAMS[key] = stream
    while len(_STREAMS) > _STREAMS_KEPT:
        _STREAMS.popitem(last=False)
    return stream


def _tokenizer_fingerprint(tokenizer) -> str:
    """What the tokenizer does (a fast tokenizer's full serialisation, hashed once per object),
    or where it came from for one without a serialisable backend."""
    cached = getattr(tokenizer, "_prunekit_fingerprint", None)
    if cached is None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        cached = str(hash(backend.to_str())) if backend is not None else getattr(tokenizer, "name_or_path", "")
        try:
            tokenizer._prunekit_fingerprint = cached
        except AttributeError:  # an object that takes no new attributes: computed again next time
            pass
    return cached


def _tokenize(tokenizer, text: str) -> torch.Tensor:
    saved = tokenizer.model_max_length
    tokenizer.model_max_length = int(1e30)  # silence the "sequence longer than the model" warning
    try:
        ids = tokenizer(text, return_attention_mask=False)["input_ids"]
    finally:
        tokenizer.model_max_length = saved
    return torch.tensor(ids, dtype=torch.long)


def _documents(spec: str, default_split: str | None, data_root: str | os.PathLike | None) -> tuple[str, Documents, str]:
    if is_local_path(spec):
        path = Path(spec).expanduser()
        if not path.suffix and not path.exists():
            raise DataError(f"unknown corpus '{spec}': choose {', '.join(CORPORA)} or a .txt/.jsonl path")
        return str(path), load_local_documents(path), "\n\n"
    name, split = parse_corpus_name(spec)
    corpus = CORPORA[name]
    split = split or default_split or corpus.calib_split
    docs = load_documents(name, split, data_root)
    docs.provenance["split"] = split
    return name, docs, corpus.joiner


def calibration_windows(
    tokenizer,
    spec: str,
    *,
    nsamples: int,
    seqlen: int,
    seed: int,
    data_root: str | os.PathLike | None,
) -> TokenWindows:
    """``nsamples`` windows of ``seqlen`` tokens at seeded random offsets of the corpus stream.

    The SparseGPT reference draws a random document longer than ``seqlen`` and a window inside
    it; the C4 sample here has few documents that long, so we draw windows from the documents
    joined into one stream. Same seed, same windows.
    """
    if nsamples < 1:
        raise ArgumentError(f"--nsamples must be at least 1 (got {nsamples})")
    if seqlen < 2:
        raise ArgumentError(f"--seqlen must be at least 2 (got {seqlen})")
    name, docs, joiner = _documents(spec, None, data_root)
    stream = tokenize_stream(tokenizer, joiner.join(docs.docs))
    if stream.numel() < seqlen + 1:
        raise DataError(
            f"calibration text '{name}' has {stream.numel()} tokens, shorter than one window of {seqlen} tokens"
        )
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, stream.numel() - seqlen, (nsamples,), generator=generator)
    ids = torch.stack([stream[s : s + seqlen] for s in starts.tolist()])
    provenance = {**docs.provenance, "corpus": name, "tokens": int(stream.numel()), "nsamples": nsamples,
                  "seqlen": seqlen, "seed": seed}
    return TokenWindows(ids, provenance)


def evaluation_windows(
    tokenizer,
    spec: str,
    *,
    seqlen: int,
    data_root: str | os.PathLike | None,
    protocol: str = "standard",
    max_windows: int | None = None,
) -> TokenWindows:
    """Non-overlapping ``seqlen`` windows of a test text, per the protocol in evaluation.md."""
    if protocol not in PROTOCOLS:
        raise ArgumentError(f"unknown protocol '{protocol}': choose {', '.join(PROTOCOLS)}")
    if seqlen < 2:
        raise ArgumentError(f"--seqlen must be at least 2 (got {seqlen})")
    if max_windows is not None and max_windows < 1:
        raise ArgumentError(f"--max-windows must be at least 1 (got {max_windows})")
    eval_windows = None
    if is_local_path(spec):
        name, docs, joiner = _documents(spec, None, data_root)
    else:
        name, split = parse_corpus_name(spec)
        if name not in CORPORA:
            raise DataError(f"unknown corpus '{spec}': choose {', '.join(CORPORA)} or a .txt/.jsonl path")
        corpus = CORPORA[name]
        default_split = "validation" if (protocol == "llm-pruner" and name == "ptb") else corpus.eval_split
        name, docs, joiner = _documents(f"{name}:{split or default_split}", None, data_root)
        joiner = EVAL_JOINERS.get(name, joiner)
        if protocol == "llm-pruner":
            joiner = "\n\n"
        if corpus.eval_docs:
            docs.docs = docs.docs[: corpus.eval_docs]
        eval_windows = corpus.eval_windows
    stream = tokenize_stream(tokenizer, joiner.join(docs.docs))
    count = stream.numel() // seqlen
    if eval_windows:
        count = min(count, eval_windows)
    if count == 0:
        raise DataError(f"evaluation text '{name}' has {stream.numel()} tokens, shorter than one window of {seqlen}")
    total = count
    if max_windows:
        count = min(count, max_windows)
    ids = stream[: count * seqlen].view(count, seqlen).clone()  # the stream is cached: never hand out a view
    provenance = {**docs.provenance, "corpus": name, "protocol": protocol, "seqlen": seqlen,
                  "windows": count, "windows_available": total, "tokens": int(stream.numel())}
    return TokenWindows(ids, provenance)
