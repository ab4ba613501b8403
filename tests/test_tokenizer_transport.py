"""The tokenizer travels by value (``TokenizerFiles``): a worker on a node that cannot read the
driver's disk builds the same rows and exports the same tokenizer."""
from __future__ import annotations

import pickle
import shutil

from pipelines.configs import load_config
from ssl_core.examples import ExampleBuilder
from ssl_core.text import resolve_corpus, sample_documents
from ssl_core.tokenizer import TokenizerFiles, load_fast, train_wordpiece


def test_tokenizer_files_rebuild_the_directory_elsewhere(tmp_path, monkeypatch, wikitext):
    cfg = load_config("tiny", [f"data.corpus={wikitext}"])
    texts = sample_documents(resolve_corpus(str(wikitext)), 300, 20)
    src = train_wordpiece(texts, tmp_path / "driver" / "tokenizer", vocab_size=500)
    carried = pickle.loads(pickle.dumps(TokenizerFiles.from_dir(src)))     # what Ray ships
    want = ExampleBuilder(cfg, str(src)).tokenize(["d0"], [texts[0]])[0]["tokens"][0]
    shutil.rmtree(tmp_path / "driver")                                     # the driver's disk is elsewhere
    monkeypatch.setenv("TMPDIR", str(tmp_path / "node"))
    (tmp_path / "node").mkdir()
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)                        # re-read TMPDIR
    got = ExampleBuilder(cfg, carried).tokenize(["d0"], [texts[0]])[0]["tokens"][0]
    assert list(got) == list(want)
    local = carried.local_dir()
    assert local.parent == tmp_path / "node" and (local / "vocab.txt").is_file()
    assert carried.local_dir() == local                                   # written once per node
    assert load_fast(carried).get_vocab() == load_fast(local).get_vocab()
    other = TokenizerFiles(tuple((n, d + b" ") if n == "vocab.txt" else (n, d) for n, d in carried.files))
    assert other.digest() != carried.digest()                             # content-addressed
