"""Property tests of the example builders: whole-word / span masking, schedule, NSP, views."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from ssl_core.augment import make_view, parse_chain
from ssl_core.masking import IGNORE_INDEX, MlmMasker, ratio_at
from ssl_core.pairs import NOT_NEXT, UNLABELED, NspBuilder

VOCAB, MASK, SPECIALS = 1000, 4, (0, 1, 2, 3, 4)
CLS, SEP, PAD = 2, 3, 0


def words_batch(rng, B=64, T=128):
    """Rows of words of 1-4 pieces; returns ids and word_start."""
    ids = rng.integers(5, VOCAB, size=(B, T)).astype(np.int32)
    ws = rng.random((B, T)) < 0.45
    ids[:, 0], ws[:, 0] = CLS, True
    ids[:, -1], ws[:, -1] = SEP, True
    return ids, ws


def word_of(ws):
    return np.cumsum(ws, axis=1)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), ratio=st.floats(0.1, 0.5))
def test_whole_word_masks_every_piece_of_a_word_together(seed, ratio):
    ids, ws = words_batch(np.random.default_rng(seed))
    m = MlmMasker(VOCAB, MASK, SPECIALS, ratio=ratio, strategy="whole_word")
    for out, labels in (m.keyed(ids, seed=seed, word_start=ws), m(ids, np.random.default_rng(seed), word_start=ws)):
        sel = labels != IGNORE_INDEX
        w = word_of(ws)
        eligible = ~np.isin(ids, SPECIALS)
        for b in range(len(ids)):
            for word in np.unique(w[b][sel[b]]):
                piece = (w[b] == word) & eligible[b]
                assert sel[b][piece].all()                       # all pieces selected together
                kinds = set(np.where(out[b][piece] == MASK, "m", np.where(out[b][piece] == ids[b][piece], "k", "r")))
                assert len(kinds - {"k"}) <= 1 or kinds == {"r", "k"}   # one decision per word
        eligible = ~np.isin(ids, SPECIALS)
        rate = sel.sum() / eligible.sum()
        assert abs(rate - ratio) < 0.06                          # words are selected at ~ratio
        assert not sel[~eligible].any()


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), ratio=st.floats(0.1, 0.4))
def test_span_masking_covers_whole_words_near_the_budget(seed, ratio):
    ids, ws = words_batch(np.random.default_rng(seed), B=32)
    m = MlmMasker(VOCAB, MASK, SPECIALS, ratio=ratio, strategy="span")
    out, labels = m.keyed(ids, seed=seed, word_start=ws)
    sel = labels != IGNORE_INDEX
    eligible = ~np.isin(ids, SPECIALS)
    budget = np.round(eligible.sum(1) * ratio)
    assert np.all(sel.sum(1) <= budget)                          # never over the budget
    assert sel.sum() >= 0.75 * budget.sum()                      # overlaps cost a little coverage
    assert not sel[~eligible].any()
    # spans are contiguous runs: the mean run is longer than 1 token (geometric lengths in words)
    starts = sel & ~np.concatenate([np.zeros((len(sel), 1), bool), sel[:, :-1]], axis=1)
    assert sel.sum() / max(1, starts.sum()) > 1.5
    assert np.array_equal(m.keyed(ids, seed=seed, word_start=ws)[1], labels)    # deterministic


def test_span_lengths_follow_the_clipped_geometric():
    rng = np.random.default_rng(0)
    ids = rng.integers(5, VOCAB, size=(400, 256)).astype(np.int32)
    ws = np.ones_like(ids, dtype=bool)                           # one piece per word
    m = MlmMasker(VOCAB, MASK, SPECIALS, ratio=0.05, strategy="span", span_max=10)
    _, labels = m.keyed(ids, seed=1, word_start=ws)
    sel = labels != IGNORE_INDEX
    runs = []
    for row in sel:
        r = np.diff(np.flatnonzero(np.diff(np.concatenate([[0], row.astype(int), [0]]))))[::2]
        runs += list(r)
    assert max(runs) <= 20                                       # two adjacent spans at most
    assert 2.5 < np.mean(runs) < 6.0                             # E[min(Geom(0.2), 10)] ~ 3.9


def test_ratio_schedule():
    assert ratio_at("constant", 0.15, 0.3, 0.7) == 0.15
    assert ratio_at("linear", 0.30, 0.15, 0.0) == pytest.approx(0.30)
    assert ratio_at("linear", 0.30, 0.15, 1.0) == pytest.approx(0.15)
    assert ratio_at("linear", 0.30, 0.15, 0.5) == pytest.approx(0.225)
    ids, ws = words_batch(np.random.default_rng(0), B=256)
    m = MlmMasker(VOCAB, MASK, SPECIALS)
    hi = (m.keyed(ids, 0, ratio=0.4)[1] != IGNORE_INDEX).mean()
    lo = (m.keyed(ids, 0, ratio=0.1)[1] != IGNORE_INDEX).mean()
    assert hi > 3 * lo


def _docs(rng, n_docs, max_sents):
    return [[rng.integers(5, 100, size=rng.integers(3, 40)).astype(np.int32)
             for _ in range(rng.integers(1, max_sents + 1))] for _ in range(n_docs)]


@pytest.mark.parametrize("max_sents,rate", [(8, 0.5), (3, 0.5), (8, 0.3)])
def test_nsp_label_balance_and_layout(max_sents, rate):
    rng = np.random.default_rng(max_sents)
    b = NspBuilder(64, CLS, SEP, PAD, not_next_prob=rate)
    rows = []
    for k, d in enumerate(_docs(rng, 3000, max_sents)):
        b.remember(k, d)
        rows += b.build(k, d, rng)
    labels = np.array([r["nsp_label"] for r in rows])
    labeled = labels[labels != UNLABELED]
    assert len(labeled) > 2000
    assert abs((labeled == NOT_NEXT).mean() - rate) < 0.02
    for r in rows:
        ids, tt, n = r["input_ids"], r["token_type_ids"], int(r["num_tokens"])
        assert ids[0] == CLS and ids[n - 1] == SEP and np.all(ids[n:] == PAD) and n <= 64
        seps = np.flatnonzero(ids[:n] == SEP)
        if r["nsp_label"] == UNLABELED:
            assert len(seps) == 1 and not tt.any()
        else:
            assert len(seps) == 2 and seps[0] > 1 and seps[1] > seps[0] + 1   # A and B not empty
            assert np.all(tt[seps[0] + 1:n] == 1) and not tt[:seps[0] + 1].any()


def test_nsp_is_next_is_the_true_continuation_and_not_next_another_document():
    rng = np.random.default_rng(5)
    docs = [[np.full(6, 10 + 100 * k + j, np.int32) for j in range(5)] for k in range(50)]
    b = NspBuilder(40, CLS, SEP, PAD, short_seq_prob=0.0)
    for k, d in enumerate(docs):
        b.remember(k, d)
    for k, d in enumerate(docs):
        for r in b.build(k, d, rng):
            n = int(r["num_tokens"])
            ids = r["input_ids"][:n]
            sep = np.flatnonzero(ids == SEP)[0]
            a_doc = {(t - 10) // 100 for t in ids[1:sep]}
            b_doc = {(t - 10) // 100 for t in ids[sep + 1:n - 1]}
            assert a_doc == {k}
            if r["nsp_label"] == NOT_NEXT:
                assert k not in b_doc
            elif r["nsp_label"] == 0:
                assert b_doc == {k}
                assert ids[sep + 1] > ids[sep - 1] or ids[sep + 1] == ids[sep - 1]   # B follows A


def test_one_sentence_document_gets_no_invented_is_next():
    rng = np.random.default_rng(0)
    b = NspBuilder(64, CLS, SEP, PAD)
    b.remember(1, [np.arange(5, 30, dtype=np.int32)])
    other = [np.arange(40 + 10 * j, 50 + 10 * j, dtype=np.int32) for j in range(6)]
    b.remember(2, other)
    out = []
    for _ in range(200):
        out += b.build(1, [np.arange(5, 30, dtype=np.int32)], rng)
        b.build(2, other, rng)                                       # a corpus with other documents
    assert {int(r["nsp_label"]) for r in out} <= {NOT_NEXT, UNLABELED}
    assert any(r["nsp_label"] == NOT_NEXT for r in out)
    for r in out:
        if r["nsp_label"] == NOT_NEXT:
            sep = np.flatnonzero(r["input_ids"] == SEP)[0]
            assert r["input_ids"][sep + 1] >= 40                      # partner is document 2


CHAINS = ["identity", "delete:0.3", "word_delete:0.5", "crop:0.5", "repeat:0.5", "shuffle:3",
          "mask:0.5", "crop:0.8,delete:0.2,shuffle:2", "delete:1.0", "crop:0.01,delete:0.9"]


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), chain=st.sampled_from(CHAINS),
       lengths=st.lists(st.integers(1, 70), min_size=1, max_size=12))
def test_views_are_never_empty_and_keep_cls_sep(seed, chain, lengths):
    rng = np.random.default_rng(seed)
    L = max(lengths)
    tok = np.full((len(lengths), L), PAD, np.int32)
    for i, n in enumerate(lengths):
        tok[i, :n] = rng.integers(5, 100, size=n)
    ws = rng.random(tok.shape) < 0.6
    n = np.array(lengths)
    view, vlen = make_view(tok, n, parse_chain(chain), rng, max_seq_len=64, cls_id=CLS, sep_id=SEP,
                           pad_id=PAD, mask_id=MASK, word_start=ws)
    assert view.shape == (len(lengths), 64) and view.dtype == np.int32
    for i in range(len(lengths)):
        k = int(vlen[i])
        assert k >= 3                                            # [CLS] + >= 1 token + [SEP]
        assert view[i, 0] == CLS and view[i, k - 1] == SEP and np.all(view[i, k:] == PAD)
        body = view[i, 1:k - 1]
        assert not np.isin(body, [CLS, SEP, PAD]).any()
        src = set(tok[i, :lengths[i]].tolist()) | {MASK}
        assert set(body.tolist()) <= src                         # views only reuse the text
    if chain == "identity":
        assert all(np.array_equal(view[i, 1:1 + min(n[i], 62)], tok[i, :min(n[i], 62)]) for i in range(len(n)))


def test_parse_chain_errors():
    assert parse_chain("crop:0.8, delete") == [("crop", 0.8), ("delete", 0.1)]
    for bad in ("zap:1", "delete:2", "delete:x", "shuffle:0"):
        with pytest.raises(ValueError):
            parse_chain(bad)


def test_nsp_instances_fill_the_target_length():
    """Chunks accumulate sentences up to max_seq_len - 3 (BERT), so long documents give long pairs."""
    rng = np.random.default_rng(3)
    b = NspBuilder(64, CLS, SEP, PAD, short_seq_prob=0.0)
    rows = []
    for k in range(200):
        d = [rng.integers(5, 100, size=10).astype(np.int32) for _ in range(30)]
        b.remember(k, d)
        rows += b.build(k, d, rng)
    n = np.array([int(r["num_tokens"]) for r in rows])
    assert np.mean(n) > 0.8 * 64 and (n <= 64).all()
    assert (np.array([r["nsp_label"] for r in rows]) == UNLABELED).mean() < 0.1
