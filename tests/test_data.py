"""Corpora resolve from the data root by the protocol; windows are seeded; bad data fails clearly."""

import gzip
import json

import pytest
import torch

from prunekit.data import calibration_windows, evaluation_windows, resolve_data_root
from prunekit.data.corpora import load_documents
from prunekit.data.windows import tokenize_stream
from prunekit.errors import DataError


def test_default_data_root_is_shared(data_root):
    assert resolve_data_root(None).resolve() == data_root.resolve()


def test_data_root_env(monkeypatch, tmp_path, data_root):
    monkeypatch.setenv("PRUNEKIT_DATA", str(tmp_path))
    assert resolve_data_root(None) == tmp_path
    with pytest.raises(DataError, match="expected .*wikitext-2-raw-v1/test.jsonl"):
        load_documents("wikitext2", "test", resolve_data_root(None))
    monkeypatch.setenv("PRUNEKIT_DATA", str(tmp_path / "missing"))
    with pytest.raises(DataError, match="data root not found"):
        resolve_data_root(None)


def test_wikitext2_protocol(tokenizer, data_root):
    rows = [json.loads(line)["text"] for line in open(data_root / "wikitext-2-raw-v1/test.jsonl")]
    expected = tokenize_stream(tokenizer, "\n\n".join(rows))
    windows = evaluation_windows(tokenizer, "wikitext2", seqlen=2048, data_root=data_root)
    assert windows.ids.shape == (expected.numel() // 2048, 2048)
    assert torch.equal(windows.ids.reshape(-1), expected[: windows.ids.numel()])
    assert windows.provenance["windows_available"] == windows.ids.shape[0]
    short = evaluation_windows(tokenizer, "wikitext2", seqlen=2048, data_root=data_root, max_windows=3)
    assert torch.equal(short.ids, windows.ids[:3])


def test_ptb_joins_sentences_with_space(tokenizer, data_root):
    lines = [l.strip() for l in open(data_root / "ptb_text_only/ptb.test.txt") if l.strip()]
    windows = evaluation_windows(tokenizer, "ptb", seqlen=512, data_root=data_root, max_windows=2)
    assert torch.equal(windows.ids.reshape(-1), tokenize_stream(tokenizer, " ".join(lines))[:1024])
    llm_pruner = evaluation_windows(tokenizer, "ptb", seqlen=128, data_root=data_root, protocol="llm-pruner", max_windows=1)
    assert llm_pruner.provenance["split"] == "validation"


def test_c4_eval_uses_first_1100_docs_and_256_windows(tokenizer, data_root):
    windows = evaluation_windows(tokenizer, "c4", seqlen=32, data_root=data_root)
    assert windows.ids.shape == (256, 32)
    with gzip.open(data_root / "c4/c4_validation_2k.jsonl.gz", "rt") as handle:
        first = json.loads(handle.readline())["text"]
    assert torch.equal(windows.ids[0], tokenize_stream(tokenizer, first)[:32])


def test_calibration_windows_are_seeded(tokenizer, data_root):
    a = calibration_windows(tokenizer, "c4", nsamples=6, seqlen=64, seed=0, data_root=data_root)
    b = calibration_windows(tokenizer, "c4", nsamples=6, seqlen=64, seed=0, data_root=str(data_root))  # API takes a string
    c = calibration_windows(tokenizer, "c4", nsamples=6, seqlen=64, seed=1, data_root=data_root)
    assert a.ids.shape == (6, 64) and torch.equal(a.ids, b.ids) and not torch.equal(a.ids, c.ids)
    assert a.provenance["corpus"] == "c4" and a.provenance["split"] == "train" and len(a.provenance["sha256"]) == 64


def test_pg19_and_split_syntax(tokenizer, data_root):
    pg = calibration_windows(tokenizer, "pg19", nsamples=2, seqlen=32, seed=0, data_root=data_root)
    assert len(pg.provenance["files"]) == 10
    wt = calibration_windows(tokenizer, "wikitext2:test", nsamples=2, seqlen=32, seed=0, data_root=data_root)
    assert wt.provenance["split"] == "test"


def test_missing_named_split_names_expected_file(tokenizer, data_root):
    with pytest.raises(DataError, match="wikitext-2-raw-v1/train.jsonl"):
        calibration_windows(tokenizer, "wikitext2", nsamples=2, seqlen=32, seed=0, data_root=data_root)


def test_local_files(tokenizer, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("the quick brown fox jumps over the lazy dog " * 40)
    windows = calibration_windows(tokenizer, str(text), nsamples=3, seqlen=16, seed=0, data_root=None)
    assert windows.ids.shape == (3, 16)
    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps({"text": f"row {i} " * 20}) for i in range(5)))
    assert evaluation_windows(tokenizer, str(rows), seqlen=16, data_root=None).ids.shape[1] == 16


@pytest.mark.parametrize("content,message", [("short text", "shorter than one window"), ("", "holds no text")])
def test_short_or_empty_calibration_text(tokenizer, tmp_path, content, message):
    path = tmp_path / "tiny.txt"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        calibration_windows(tokenizer, str(path), nsamples=1, seqlen=512, seed=0, data_root=None)


def test_missing_and_unknown(tokenizer, tmp_path):
    with pytest.raises(DataError, match="data file not found"):
        calibration_windows(tokenizer, str(tmp_path / "nope.txt"), nsamples=1, seqlen=8, seed=0, data_root=None)
    with pytest.raises(DataError, match="unknown corpus"):
        evaluation_windows(tokenizer, "wikitext3", seqlen=8, data_root=None)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": "x"}\n')
    with pytest.raises(DataError, match="no 'text' field"):
        evaluation_windows(tokenizer, str(bad), seqlen=8, data_root=None)


def test_hub_fallback_uses_datasets(monkeypatch, tmp_path):
    """A corpus missing from the data root is fetched with datasets.load_dataset when installed."""
    import sys
    import types

    calls = []
    fake = types.ModuleType("datasets")

    def load_dataset(path, config, split):
        calls.append((path, config, split))
        return {"text": ["first row", "second row"]}

    fake.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", fake)
    docs = load_documents("wikitext2", "train", tmp_path)
    assert calls == [("wikitext", "wikitext-2-raw-v1", "train")]
    assert docs.docs == ["first row", "second row"] and docs.provenance["source"] == "hub"

    def offline(path, config, split):
        raise ConnectionError("no route to the hub\nmore detail")

    fake.load_dataset = offline
    with pytest.raises(DataError, match="expected .*train.jsonl, and the hub fallback failed: no route to the hub"):
        load_documents("wikitext2", "train", tmp_path)
