"""Ray Data stage on a real local Ray and real text: all three objectives from one stream, every
record accounted for; bad corpora through the real CLI (`sslpipe data stats`)."""
import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from conftest import run_cli
from pipelines.configs import load_config
from ssl_core.pairs import UNLABELED
from ssl_core.text import resolve_corpus
from ssl_core.tokenizer import train_wordpiece
from ssl_core.text import sample_documents

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def corpus_and_tokenizer(tmp_path_factory, wikitext, shakespeare):
    corpus = f"{wikitext},{shakespeare}"
    tok = train_wordpiece(sample_documents(resolve_corpus(corpus), 3000, 20),
                          tmp_path_factory.mktemp("tok"), vocab_size=3000)
    return corpus, tok


def _groups(ds, cfg):
    from ssl_core.training.data import by_group
    return list(by_group(ds.iter_batches(batch_size=cfg.data.batch_rows, batch_format="numpy")))


def test_tokenized_once_counted_and_rebuilt_per_epoch(ray_session, corpus_and_tokenizer):
    """The corpus is read and tokenized once (every record accounted for); the rows and view pairs
    a worker builds from those documents are the ones the report counted, and the views change
    from one epoch to the next while the documents do not."""
    from pipelines.data import report, tokenized_corpus
    from ssl_core.examples import ExampleBuilder
    from ssl_core.training.data import VIEW_BUCKET, train_batches

    corpus, tok = corpus_and_tokenizer
    cfg = load_config("tiny", [f"data.corpus={corpus}", "data.max_documents=0", "objectives.contrastive=true",
                               "contrastive.view_b=crop:0.7,delete:0.1", "data.tokenize_actors=2",
                               "data.shuffle_buffer=0", "data.max_epochs=2", "contrastive.batch_size=32"])
    tc = tokenized_corpus(cfg, resolve_corpus(corpus), str(tok))
    c = tc.counts
    skipped = sum(v for k, v in c.items() if k.startswith("skipped:"))
    assert c["records_read"] == c["records_used"] + skipped > 8000
    assert c["train_documents"] + c["val_documents"] == c["documents"] == tc.train.count() + tc.val.count()
    b = ExampleBuilder(cfg, str(tok))
    groups = _groups(tc.train, cfg)
    assert sum(len(b.rows(g, 0)[0]["input_ids"]) for g in groups) == c["train_rows"]
    pairs0 = [b.views(g, 0)[0] for g in groups]
    assert sum(len(p["view_a"]) for p in pairs0) == c["train_examples_contrastive"]
    pairs1 = [b.views(g, 1)[0] for g in groups]
    assert any(not np.array_equal(p["view_b"], q["view_b"]) for p, q in zip(pairs0, pairs1))
    # a worker's batches: full rows of T tokens, view pairs cut to the batch's longest view
    T, L = cfg.data.max_seq_len, cfg.contrastive.max_tokens + 2
    epochs_seen, n_batches = set(), 0
    for batch in train_batches(cfg, b, lambda e: tc.train.iter_batches(batch_size=97, batch_format="numpy")):
        n_batches += 1
        assert batch["input_ids"].shape == (cfg.train.batch_size, T)
        P, width = batch["view_a"].shape
        assert P == cfg.contrastive.batch_size and width <= L and batch["view_b"].shape == (P, width)
        longest = int(max((batch["view_a"] != 0).sum(1).max(), (batch["view_b"] != 0).sum(1).max()))
        assert width == min(L, -(-longest // VIEW_BUCKET) * VIEW_BUCKET)   # a few widths, not one per batch
        assert np.all(batch["view_a"][:, 0] == 2) and np.all((batch["view_b"] != 0).sum(1) >= 3)
        epochs_seen.add(int(batch["epoch"].max()))
    assert epochs_seen == {0, 1} and n_batches >= 2 * (c["train_rows"] // cfg.train.batch_size) - 1
    text = report(c, T)
    assert "read = " in text and "(OK)" in text and "too_short" in text and "contrastive" in text


def test_nsp_pairs_balanced(ray_session, corpus_and_tokenizer):
    from pipelines.data import tokenized_corpus
    from ssl_core.examples import ExampleBuilder

    corpus, tok = corpus_and_tokenizer
    cfg = load_config("tiny", [f"data.corpus={corpus}", "data.max_documents=0", "objectives.nsp=true"])
    tc = tokenized_corpus(cfg, resolve_corpus(corpus), str(tok))
    b = ExampleBuilder(cfg, str(tok))
    labels = np.concatenate([b.rows(g, 0)[0]["nsp_label"] for g in _groups(tc.train, cfg)])
    labeled = labels[labels != UNLABELED]
    assert len(labeled) > 1000 and abs((labeled == 1).mean() - cfg.nsp.not_next_prob) < 0.02
    c = tc.counts
    assert abs(c["train_examples_nsp"] - len(labeled)) <= 0.02 * len(labeled)   # partners differ per actor


def _ngrams(ids, n: int, specials: set[int]) -> set[tuple]:
    """Token n-grams that cross no special token ([CLS], [SEP], [UNK], padding)."""
    out, run = set(), []
    for t in list(ids) + [next(iter(specials))]:
        if t in specials:
            out |= {tuple(run[i:i + n]) for i in range(len(run) - n + 1)}
            run = []
        else:
            run.append(int(t))
    return out


def test_validation_documents_never_reach_training_rows(ray_session, corpus_and_tokenizer):
    """No held-out document is in the training rows of the real Ray Data stream, while training
    documents are found there, so the check can see a leak. A document counts as present when
    most of its token 12-grams are in the rows (a shared phrase or number pattern is not)."""
    from pipelines.data import tokenized_corpus
    from ssl_core.examples import ExampleBuilder
    from ssl_core.text import document_batches, split_sentences
    from ssl_core.training.data import train_batches

    corpus, tok = corpus_and_tokenizer
    cfg = load_config("tiny", [f"data.corpus={corpus}", "data.max_documents=0", "data.val_fraction=0.05",
                               "data.max_epochs=1"])
    shards = resolve_corpus(corpus)
    tc = tokenized_corpus(cfg, shards, str(tok))
    b = ExampleBuilder(cfg, str(tok))
    specials = set(b.special_ids)
    seen: set[tuple] = set()
    for part in tc.parts(2):                     # what the two Train workers train on
        for batch in train_batches(cfg, b, lambda e: part.iter_batches(batch_size=256, batch_format="numpy")):
            for row in batch["input_ids"]:
                seen |= _ngrams(row, 12, specials)
    docs = {True: [], False: []}
    for shard in shards:
        for group in document_batches(shard, cfg.data):
            for text, val in zip(group["text"], group["val"]):
                docs[val].append(text)

    def share_in_rows(text: str) -> float | None:
        encs = b.tok.encode_batch_fast(split_sentences(text), add_special_tokens=False)
        grams = set().union(*(_ngrams(e.ids, 12, specials) for e in encs))
        return len(grams & seen) / len(grams) if len(grams) >= 5 else None

    train_texts = set(docs[False])
    held_out = [(t, share_in_rows(t)) for t in docs[True] if t not in train_texts]
    held_out = [(t, f) for t, f in held_out if f is not None]
    assert len(held_out) > 50
    print("largest share of a held-out document in the rows:", max(f for _, f in held_out))
    leaked = [(t[:60], f) for t, f in held_out if f > 0.5]
    assert not leaked, leaked[:3]
    trained = [f for f in map(share_in_rows, docs[False][:300]) if f is not None]
    assert sum(f > 0.5 for f in trained) > 0.9 * len(trained)   # training documents are there


def stats(tmp_path, corpus, *extra):
    return run_cli("data", "stats", "--config", "tiny", "--set", f"data.corpus={corpus}", *extra,
                   cwd=tmp_path, timeout=300)


def one_error_line(res, *needles):
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    err = [l for l in res.stderr.splitlines() if l.startswith("sslpipe: error:")]
    assert len(err) == 1, res.stderr[-2000:]
    for n in needles:
        assert n in err[0], err[0]


def test_bad_corpora_get_one_clear_line(tmp_path):
    (tmp_path / "t.parquet").write_bytes(b"")
    pq.write_table(pa.table({"body": ["some text here"]}), tmp_path / "t.parquet")
    one_error_line(stats(tmp_path, tmp_path / "t.parquet"), "t.parquet", "no column 'text'", "data.text_field")
    one_error_line(stats(tmp_path, tmp_path / "nothing-*.txt"), "matches no file")
    (tmp_path / "x.docx").write_bytes(b"PK\x03\x04")
    one_error_line(stats(tmp_path, tmp_path / "x.docx"), "unsupported extension")
    (tmp_path / "bin.txt").write_bytes(bytes(range(256)) * 100)
    one_error_line(stats(tmp_path, tmp_path / "bin.txt"), "bin.txt", "no document")
    noise = np.random.default_rng(1).integers(1, 256, 20_000, dtype=np.uint8).tobytes()   # no NUL
    (tmp_path / "noise.txt").write_bytes(noise)
    one_error_line(stats(tmp_path, tmp_path / "noise.txt"), "noise.txt", "no document")
    (tmp_path / "ws.txt").write_text("  \n\n\t\n")
    one_error_line(stats(tmp_path, tmp_path / "ws.txt"), "ws.txt", "no document")


def test_messy_corpus_is_read_with_counted_skips(tmp_path, wikitext):
    d = tmp_path / "corpus"
    d.mkdir()
    good = Path(wikitext).read_text(encoding="utf-8")[:200_000]
    (d / "a.txt").write_text(good)
    (d / "bad_utf8.txt").write_bytes("A caf\u00e9 sentence. Another one here.\n\n".encode() + b"broken \xff\xfe bytes here and more words.\n")
    (d / "huge_line.txt").write_bytes(b"word " * 2_500_000)             # 12.5 MB, no newline
    (d / "b.jsonl").write_text("\n".join([json.dumps({"text": "A fine jsonl document with words."}),
                                          "{not json", json.dumps({"text": None}), json.dumps({"text": 42}),
                                          json.dumps({"text": "Another good one, long enough."})]) + "\n")
    (d / "empty.txt").write_text("")
    (d / "binary.txt").write_bytes(b"\x00\x01\x02" * 1000)
    noise = np.random.default_rng(0).integers(1, 256, 20_000, dtype=np.uint8).tobytes()   # no NUL
    (d / "noise.txt").write_bytes(noise)
    with gzip.open(d / "c.txt.gz", "wt") as f:
        f.write("Compressed text is read too, through fsspec.\n")
    res = stats(tmp_path, d, "--set", "data.max_doc_chars=1000000", "--set", "data.min_chars=10")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = res.stdout
    assert "(OK)" in out and "MISMATCH" not in out
    assert "malformed_json: 1" in out and "text_missing_or_not_text: 2" in out
    assert "binary 2" in out and "long documents split: 1" in out
    assert "lines with invalid UTF-8 replaced: 1" in out
    assert "files       8 read" in out


def test_corpus_too_small_for_one_batch(tmp_path):
    f = tmp_path / "small.txt"
    f.write_text("Just one short document here, far too small for a training batch.\n")
    res = run_cli("pretrain", "--config", "tiny", "--set", f"data.corpus={f}", "--set", "data.val_fraction=0",
                  cwd=tmp_path, timeout=600)
    one_error_line(res, "too small", "train.batch_size")
