"""Documents → tokens (once per run) → training rows and view pairs (every epoch).

    b = ExampleBuilder(cfg, tokenizer_dir)
    docs, c = b.tokenize(doc_ids, texts)           # sentences → token ids, once per run
    rows, c = b.rows(docs, epoch)                  # MLM / NSP rows of one document group
    pairs, c = b.views(docs, epoch)                # contrastive view pairs of the same group
    batch, c = b.build(doc_ids, texts, epoch)      # all three in one call (tests, preview)

Tokenized documents (``docs``): ``id`` (str), ``tokens`` (int32 ids of all sentences, no special
tokens) and ``sent_lens`` (tokens per sentence), one entry per document.

Rows (``input_ids`` (N, T), ``word_start``, ``num_tokens``, ``epoch``):

* NSP on: a BERT NSP instance ``[CLS] A [SEP] B [SEP]`` (``token_type_ids``, ``nsp_label``); MLM
  (if on) masks that same input, as BERT did. Partners and lengths are drawn anew every epoch.
* MLM only: packed from consecutive documents (``[SEP]`` between documents).

View pairs (``view_a``, ``view_b`` (P, L), L = ``contrastive.max_tokens`` + 2): two augmented views
of one text unit, a sentence (consecutive short sentences joined, long ones cut) of at least
``contrastive.min_tokens`` tokens, as SimCSE trains on; each epoch draws the augmentations anew.
Their count is independent of the rows': a step takes ``contrastive.batch_size`` pairs.

Training masks are drawn later, per batch, by the MLM objective (``MlmMasker.keyed`` from (seed,
epoch, row)): new masks each epoch, the same whatever the number of workers. Validation rows are
masked once, at ``EVAL_RATIO`` with ``EVAL_SEED`` (``mask_for_eval``).
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from ssl_core.augment import make_view, parse_chain
from ssl_core.config import Config
from ssl_core.masking import EVAL_RATIO, EVAL_SEED, MlmMasker
from ssl_core.packing import pack_documents
from ssl_core.pairs import NspBuilder
from ssl_core.text import doc_hash, split_sentences
from ssl_core.tokenizer import load_fast, special_ids


def continuation_lut(tok) -> np.ndarray:
    """vocab-sized bool: True for pieces that continue a word (WordPiece ``##``; for
    SentencePiece/BPE vocabularies, pieces without the word-start marker ``▁``/``Ġ``)."""
    vocab = tok.get_vocab()
    lut = np.zeros(max(vocab.values()) + 1, dtype=bool)
    pieces = list(vocab)
    wordpiece = any(p.startswith("##") for p in pieces)
    for p, i in vocab.items():
        if wordpiece:
            lut[i] = p.startswith("##")
        else:
            lut[i] = not (p.startswith("\u2581") or p.startswith("\u0120"))
    return lut


class ExampleBuilder:
    def __init__(self, cfg: Config, tokenizer_dir: str):
        self.cfg = cfg
        self.T = cfg.data.max_seq_len
        self.tok = load_fast(tokenizer_dir)
        self.sp = special_ids(self.tok)
        self.vocab_size = self.tok.get_vocab_size()
        self.cont = continuation_lut(self.tok)
        self.special_ids = tuple(sorted(set(self.sp.values())))
        o = cfg.objectives
        self.nsp = NspBuilder(self.T, self.sp["cls"], self.sp["sep"], self.sp["pad"],
                              cfg.nsp.not_next_prob, cfg.nsp.short_seq_prob,
                              cfg.nsp.buffer_docs) if o.nsp else None
        self.chain_a = parse_chain(cfg.contrastive.view_a) if o.contrastive else None
        self.chain_b = parse_chain(cfg.contrastive.view_b) if o.contrastive else None

    def masker(self, ratio: float | None = None, strategy: str | None = None) -> MlmMasker:
        m = self.cfg.masking
        return MlmMasker(self.vocab_size, self.sp["mask"], self.special_ids,
                         ratio=ratio or m.ratio, mask_prob=m.mask_prob, random_prob=m.random_prob,
                         strategy=strategy or m.strategy, span_p=m.span_p, span_max=m.span_max)

    def mask_for_eval(self, rows: dict) -> dict:
        """``rows`` with ``input_ids`` masked and ``labels`` at the fixed evaluation ratio and seed
        (token masking, 80/10/10): the same masks in every run, trial and evaluation."""
        rows = dict(rows)
        rows["input_ids"], rows["labels"] = self.masker(ratio=EVAL_RATIO, strategy="token").keyed(
            rows["input_ids"], seed=EVAL_SEED, epoch=0)
        return rows

    def build_split(self, docs: dict, split: str, epoch: int = 0,
                    mask_val: bool = True) -> tuple[dict, Counter]:
        """Rows of the documents of one ``split`` ("train" or "val") in a document batch
        (``{"id", "text", "val"}``, as ``ssl_core.text.document_batches`` yields them);
        validation rows are eval-masked unless ``mask_val`` is False."""
        want = split == "val"
        keep = [bool(v) == want for v in docs["val"]]
        rows, c = self.build([str(i) for i, k in zip(docs["id"], keep) if k],
                             [str(t) for t, k in zip(docs["text"], keep) if k], epoch)
        if want and mask_val and "input_ids" in rows:
            rows = self.mask_for_eval(rows)
        return rows, c

    def word_start(self, ids: np.ndarray) -> np.ndarray:
        """(B, T) bool: the token begins a word (special tokens count as words)."""
        return ~self.cont[ids]

    @property
    def makes_rows(self) -> bool:
        """Rows are needed by the objectives of the token stream (MLM, NSP)."""
        return bool(self.cfg.objectives.mlm or self.cfg.objectives.nsp)

    # ---------------------------------------------------------------- tokenize (once per run)
    def tokenize(self, doc_ids: list[str], texts: list[str]) -> tuple[dict, Counter]:
        """Split each text into sentences and tokenize them (one fast batch call)."""
        sents_per_doc = [split_sentences(t) for t in texts]
        flat = [s for ss in sents_per_doc for s in ss]
        enc = self.tok.encode_batch_fast(flat, add_special_tokens=False) if flat else []
        tokens, lens, it = [], [], iter(enc)
        for ss in sents_per_doc:
            sents = [np.asarray(next(it).ids, dtype=np.int32) for _ in ss]
            sents = [x for x in sents if len(x)]
            tokens.append(np.concatenate(sents) if sents else np.zeros(0, np.int32))
            lens.append(np.array([len(x) for x in sents], dtype=np.int32))
        c = Counter(documents=len(texts), sentences=len(flat), tokens=int(sum(len(t) for t in tokens)))
        return {"id": _objects([str(i) for i in doc_ids]), "tokens": _objects(tokens),
                "sent_lens": _objects(lens)}, c

    def _sentences(self, docs: dict) -> list[list[np.ndarray]]:
        out = []
        for tok, lens in zip(docs["tokens"], docs["sent_lens"]):
            tok, lens = np.asarray(tok, dtype=np.int32), np.asarray(lens, dtype=np.int64)
            out.append(np.split(tok, np.cumsum(lens)[:-1]) if len(lens) else [])
        return out

    def _rng(self, docs: dict, epoch: int, salt: int) -> np.random.Generator:
        key0 = doc_hash(str(docs["id"][0])) if len(docs["id"]) else 0
        return np.random.default_rng([self.cfg.masking.seed, epoch, salt, key0 & 0xFFFFFFFF, key0 >> 32])

    # ---------------------------------------------------------------- rows (every epoch)
    def rows(self, docs: dict, epoch: int = 0) -> tuple[dict, Counter]:
        """MLM / NSP rows of one group of tokenized documents (see the module docstring)."""
        c: Counter = Counter()
        T = self.T
        sents = self._sentences(docs)
        rng = self._rng(docs, epoch, 0)
        if self.nsp is not None:
            keys = [doc_hash(str(d)) for d in docs["id"]]
            for k, d in zip(keys, sents):
                self.nsp.remember(k, d)
            before = dict(self.nsp.counts)
            inst = [r for k, d in zip(keys, sents) if d for r in self.nsp.build(k, d, rng)]
            for name in ("is_next", "not_next", "unlabeled", "no_partner"):
                c[f"nsp_{name}"] += self.nsp.counts[name] - before[name]
            empty = {"input_ids": np.zeros((0, T), np.int32), "token_type_ids": np.zeros((0, T), np.int8),
                     "nsp_label": np.zeros(0, np.int16), "num_tokens": np.zeros(0, np.int32)}
            rows = {k: np.stack([r[k] for r in inst]) if inst else v for k, v in empty.items()}
        else:
            ids, n = pack_documents([np.asarray(t, dtype=np.int32) for t in docs["tokens"]], T,
                                    cls_id=self.sp["cls"], sep_id=self.sp["sep"], pad_id=self.sp["pad"])
            rows = {"input_ids": ids, "num_tokens": n}
        B = len(rows["input_ids"])
        rows["word_start"] = self.word_start(rows["input_ids"]).astype(np.uint8)
        rows["epoch"] = np.full(B, epoch, dtype=np.int32)
        c["rows"] += B
        c["slots"] += B * T
        c["real_tokens"] += int(rows["num_tokens"].sum()) if B else 0
        if self.cfg.objectives.mlm:
            c["examples_mlm"] += B
        if "nsp_label" in rows:
            c["examples_nsp"] += int((rows["nsp_label"] >= 0).sum())   # labeled pairs only
        return rows, c

    # ---------------------------------------------------------------- views (every epoch)
    def views(self, docs: dict, epoch: int = 0) -> tuple[dict, Counter]:
        """Contrastive view pairs of one group of tokenized documents: ``view_a``, ``view_b``
        (P, max_tokens + 2), ``view_epoch`` (P,)."""
        cc = self.cfg.contrastive
        L = cc.max_tokens + 2
        units = [u for d in self._sentences(docs) for u in _segments(d, cc.max_tokens)
                 if len(u) >= cc.min_tokens]
        P = len(units)
        c = Counter(examples_contrastive=P)
        if not P:
            empty = np.zeros((0, L), np.int32)
            return {"view_a": empty, "view_b": empty.copy(), "view_epoch": np.zeros(0, np.int32)}, c
        lengths = np.array([len(u) for u in units], dtype=np.int64)
        tok = np.full((P, int(lengths.max())), self.sp["pad"], dtype=np.int32)
        for i, u in enumerate(units):
            tok[i, :len(u)] = u
        rng = self._rng(docs, epoch, 1)
        kw = dict(max_seq_len=L, cls_id=self.sp["cls"], sep_id=self.sp["sep"], pad_id=self.sp["pad"],
                  mask_id=self.sp["mask"], word_start=~self.cont[tok])
        a, _ = make_view(tok, lengths, self.chain_a, rng, **kw)
        b, _ = make_view(tok, lengths, self.chain_b, rng, **kw)
        c["view_tokens"] += int((a != self.sp["pad"]).sum() + (b != self.sp["pad"]).sum())
        return {"view_a": a, "view_b": b, "view_epoch": np.full(P, epoch, np.int32)}, c

    # ---------------------------------------------------------------- all of it
    def build(self, doc_ids: list[str], texts: list[str], epoch: int = 0) -> tuple[dict, Counter]:
        """Tokenize and build the rows and view pairs of the enabled objectives."""
        docs, c = self.tokenize(doc_ids, texts)
        out: dict = {}
        if self.makes_rows or self.chain_a is None:
            out, rc = self.rows(docs, epoch)
            c += rc
        if self.chain_a is not None:
            pairs, vc = self.views(docs, epoch)
            out.update(pairs)
            c += vc
        return out, c


def _objects(items: list) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def _segments(sentences: list[np.ndarray], max_len: int) -> list[np.ndarray]:
    """Greedy: consecutive sentences joined up to ``max_len`` tokens; long sentences are cut."""
    out, cur, n = [], [], 0
    for s in sentences:
        while len(s) > max_len:
            if cur:
                out.append(np.concatenate(cur))
                cur, n = [], 0
            out.append(s[:max_len])
            s = s[max_len:]
        if n + len(s) > max_len and cur:
            out.append(np.concatenate(cur))
            cur, n = [], 0
        if len(s):
            cur.append(s)
            n += len(s)
    if cur:
        out.append(np.concatenate(cur))
    return out
