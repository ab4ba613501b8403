"""Corpus resolution and reading on real files: every record is counted, bad sources are named."""
import gzip
import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ssl_core.text import (CorpusError, clean_text, is_validation, iter_documents, resolve_corpus,
                           sample_documents)


def read_all(corpus, field="text"):
    c = Counter()
    docs = [d for s in resolve_corpus(corpus, field) for d in iter_documents(s, c, min_chars=1)]
    return docs, c


def test_clean_text_normalizes():
    assert clean_text("a\x00b\u200b  c\t\td\r\n\r\n\r\n e ") == "ab c d\n\ne"
    assert clean_text("e\u0301") == "\u00e9"          # NFC


def test_builtin_python_docs_is_a_real_corpus():
    shards = resolve_corpus("builtin:python-docs")
    docs = sample_documents(shards, 500, min_chars=20)
    assert len(docs) == 500
    assert sum(len(d) for d in docs) > 50_000
    assert any("Return" in d for d in docs)


def test_wikitext_documents_are_blank_line_separated(wikitext):
    docs, c = read_all(str(wikitext))
    assert c["records_read"] == c["documents"] + sum(v for k, v in c.items() if k.startswith("skipped:"))
    assert len(docs) > 500
    assert all("\n\n" not in d["text"] for d in docs)
    assert len({d["id"] for d in docs}) == len(docs)


def test_jsonl_parquet_and_gzip(tmp_path):
    (tmp_path / "a.jsonl").write_text(
        json.dumps({"text": "first document here"}) + "\n{broken\n" + json.dumps({"text": None}) + "\n"
        + json.dumps({"body": "x"}) + "\n" + json.dumps({"text": "second one"}) + "\n")
    docs, c = read_all(str(tmp_path / "a.jsonl"))
    assert [d["text"] for d in docs] == ["first document here", "second one"]
    assert c["records_read"] == 5 and c["skipped:malformed_json"] == 1
    assert c["skipped:text_missing_or_not_text"] == 2

    pq.write_table(pa.table({"body": ["alpha beta", "gamma", None]}), tmp_path / "b.parquet")
    docs, c = read_all(str(tmp_path / "b.parquet"), field="body")
    assert [d["text"] for d in docs] == ["alpha beta", "gamma"] and c["records_read"] == 3
    with pytest.raises(CorpusError, match="no column 'text'.*data.text_field"):
        read_all(str(tmp_path / "b.parquet"))

    with gzip.open(tmp_path / "c.txt.gz", "wt") as f:
        f.write("one\ntwo\n\nthree\n")
    docs, _ = read_all(str(tmp_path / "c.txt.gz"))
    assert [d["text"] for d in docs] == ["one\ntwo", "three"]

    import zstandard
    (tmp_path / "d.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(
        (json.dumps({"text": "zstd compressed"}) + "\n").encode()))
    docs, c = read_all(str(tmp_path / "d.jsonl.zst"))
    assert [d["text"] for d in docs] == ["zstd compressed"] and c["records_read"] == 1


def test_lines_longer_than_the_limit_come_in_bounded_pieces(tmp_path):
    (tmp_path / "big.txt").write_bytes(b"first doc.\n\n" + b"w " * 600_000 + b"\n\nlast doc.\n")
    c = Counter()
    docs = [d for s in resolve_corpus(str(tmp_path / "big.txt"))
            for d in iter_documents(s, c, min_chars=1, max_doc_chars=100_000)]
    assert docs[0]["text"] == "first doc." and docs[-1]["text"] == "last doc."
    assert all(len(d["text"]) <= 100_000 for d in docs)
    assert sum(len(d["text"].split()) for d in docs[1:-1]) == 600_000     # nothing lost
    assert c["long_documents_split"] == 1 and c["records_read"] == c["records_used"] == 3


def test_bad_sources_are_named(tmp_path):
    with pytest.raises(CorpusError, match="/no/such/path.*does not exist"):
        resolve_corpus("/no/such/path")
    with pytest.raises(CorpusError, match="matches no file"):
        resolve_corpus(str(tmp_path / "*.txt"))
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(CorpusError, match="x.csv.*unsupported extension"):
        resolve_corpus(str(tmp_path / "x.csv"))
    with pytest.raises(CorpusError, match="builtin:nope"):
        resolve_corpus("builtin:nope")


def test_validation_split_is_stable_and_about_the_right_size():
    ids = [f"doc-{i}" for i in range(20000)]
    val = [i for i in ids if is_validation(i, 0.05)]
    assert abs(len(val) / len(ids) - 0.05) < 0.01
    assert val == [i for i in ids if is_validation(i, 0.05)]


def test_binary_files_are_recognised_by_their_first_bytes(tmp_path):
    """Random bytes without a single NUL are not a document; text with stray bytes still is."""
    from ssl_core.text import looks_binary

    rng = np.random.default_rng(0)
    noise = rng.integers(1, 256, 20_000, dtype=np.uint8).tobytes()
    assert b"\x00" not in noise and looks_binary(noise[:8192])
    latin1 = "Le café était fermé; nous sommes allés à la gare. ".encode("latin-1") * 200
    assert not looks_binary(latin1[:8192])                       # accents as undecodable bytes
    assert not looks_binary("Plain English text.\n\n".encode() * 500)
    (tmp_path / "noise.txt").write_bytes(noise)
    c = Counter()
    assert list(iter_documents(resolve_corpus(str(tmp_path / "noise.txt"))[0], c)) == []
    assert c["files_skipped:binary"] == 1 and c["records_read"] == 0
