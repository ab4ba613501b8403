"""Documents → training rows for every enabled objective, from one stream.

One row is one text unit, and carries the columns of every enabled objective:

* NSP on: the unit is a BERT NSP instance ``[CLS] A [SEP] B [SEP]`` (``token_type_ids``,
  ``nsp_label``); MLM (if on) masks that same input, as BERT did.
* NSP off, contrastive on: the unit is a segment of one document (sentences up to the length).
* MLM only: rows are packed from consecutive documents (``[SEP]`` between documents).
* contrastive on: ``view_a`` and ``view_b``, two augmented views of the unit's text (for NSP
  units, of segment A).

Every row has ``input_ids`` (T,), ``word_start`` (T,) (for whole-word / span masking),
``num_tokens`` and ``epoch``. Training masks are drawn later, per batch, by the MLM objective
(``MlmMasker.keyed`` from (seed, epoch, row)): new masks each epoch, the same whatever the number
of workers. Validation rows are masked here once, at ``EVAL_RATIO`` with ``EVAL_SEED``.

    b = ExampleBuilder(cfg, tokenizer_dir)
    rows, counts = b.build(doc_ids, texts, epoch=0)
    rows, counts = b.build_split(document_batch, "val")      # held-out documents, eval-masked
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
        if want and mask_val:
            rows = self.mask_for_eval(rows)
        return rows, c

    def word_start(self, ids: np.ndarray) -> np.ndarray:
        """(B, T) bool: the token begins a word (special tokens count as words)."""
        return ~self.cont[ids]

    # ---------------------------------------------------------------- build
    def build(self, doc_ids: list[str], texts: list[str], epoch: int = 0) -> tuple[dict, Counter]:
        c: Counter = Counter()
        cfg = self.cfg
        T = self.T
        sents_per_doc = [split_sentences(t) for t in texts]
        flat = [s for ss in sents_per_doc for s in ss]
        enc = self.tok.encode_batch_fast(flat, add_special_tokens=False) if flat else []
        it = iter(enc)
        docs: list[list[np.ndarray]] = []
        for ss in sents_per_doc:
            sents = [np.asarray(next(it).ids, dtype=np.int32) for _ in ss]
            docs.append([s for s in sents if len(s)])
        c["documents"] += len(texts)
        c["sentences"] += len(flat)
        c["tokens"] += sum(len(s) for d in docs for s in d)
        key0 = doc_hash(doc_ids[0]) if doc_ids else 0
        rng = np.random.default_rng([cfg.masking.seed, epoch, key0 & 0xFFFFFFFF, key0 >> 32])

        if self.nsp is not None:
            keys = [doc_hash(d) for d in doc_ids]
            for k, d in zip(keys, docs):
                self.nsp.remember(k, d)
            before = dict(self.nsp.counts)
            inst = [r for k, d in zip(keys, docs) if d for r in self.nsp.build(k, d, rng)]
            for name in ("is_next", "not_next", "unlabeled", "no_partner"):
                c[f"nsp_{name}"] += self.nsp.counts[name] - before[name]
            empty = {"input_ids": np.zeros((0, T), np.int32), "token_type_ids": np.zeros((0, T), np.int8),
                     "nsp_label": np.zeros(0, np.int16), "num_tokens": np.zeros(0, np.int32)}
            rows = {k: np.stack([r[k] for r in inst]) if inst else v for k, v in empty.items()}
        elif self.chain_a is not None:
            segs = [seg for d in docs for seg in _segments(d, T - 2)]
            ids = np.full((len(segs), T), self.sp["pad"], dtype=np.int32)
            n = np.zeros(len(segs), dtype=np.int32)
            for i, s in enumerate(segs):
                ids[i, 0] = self.sp["cls"]
                ids[i, 1:len(s) + 1] = s
                ids[i, len(s) + 1] = self.sp["sep"]
                n[i] = len(s) + 2
            rows = {"input_ids": ids, "num_tokens": n}
        else:
            ids, n = pack_documents([np.concatenate(d) if d else np.zeros(0, np.int32) for d in docs],
                                    T, cls_id=self.sp["cls"], sep_id=self.sp["sep"], pad_id=self.sp["pad"])
            rows = {"input_ids": ids, "num_tokens": n}

        B = len(rows["input_ids"])
        rows["word_start"] = self.word_start(rows["input_ids"]).astype(np.uint8)
        rows["epoch"] = np.full(B, epoch, dtype=np.int32)
        if self.chain_a is not None and B:
            rows["view_a"], rows["view_b"] = self._views(rows, rng)
        c["rows"] += B
        c["slots"] += B * T
        c["real_tokens"] += int(rows["num_tokens"].sum()) if B else 0
        for o in ("mlm", "nsp", "contrastive"):
            if getattr(cfg.objectives, o):
                c[f"examples_{o}"] += B
        if "nsp_label" in rows:
            c["examples_nsp"] = int((rows["nsp_label"] >= 0).sum())   # labeled pairs only
        return rows, c

    def _views(self, rows: dict, rng: np.random.Generator):
        ids = rows["input_ids"]
        body = ~np.isin(ids, self.special_ids)                   # text tokens
        if "token_type_ids" in rows:
            body &= rows["token_type_ids"] == 0                  # NSP unit: views of segment A
        B, T = ids.shape
        lengths = body.sum(1)
        pos = np.cumsum(body, axis=1) - 1
        tok = np.full((B, max(1, int(lengths.max()))), self.sp["pad"], dtype=np.int32)
        r = np.broadcast_to(np.arange(B)[:, None], (B, T))
        tok[r[body], pos[body]] = ids[body]
        ws = np.zeros(tok.shape, dtype=bool)
        ws[r[body], pos[body]] = self.word_start(ids)[body]
        empty = lengths == 0
        if empty.any():                                           # no text: view of [UNK]
            tok[empty, 0] = self.sp["unk"]
            lengths = np.maximum(lengths, 1)
        kw = dict(max_seq_len=self.T, cls_id=self.sp["cls"], sep_id=self.sp["sep"],
                  pad_id=self.sp["pad"], mask_id=self.sp["mask"], word_start=ws)
        a, _ = make_view(tok, lengths, self.chain_a, rng, **kw)
        b, _ = make_view(tok, lengths, self.chain_b, rng, **kw)
        return a, b


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
