"""Next-sentence-prediction pairs, following BERT's ``create_pretraining_data.py``.

A document is a list of sentences (token-id arrays, no special tokens). Sentences are accumulated
into a chunk up to a target length (with probability ``short_seq_prob`` a shorter random target);
A is the first 1..n-1 sentences of the chunk; with probability ``1 - not_next_prob`` B is the true
continuation (IsNext, label 0), otherwise a random span of a *different* document (NotNext,
label 1) drawn from a bounded buffer of recent documents (streaming: the corpus is never held in
memory). The longer side is truncated, randomly from the front or the back, to fit
``[CLS] A [SEP] B [SEP]``.

A chunk of one sentence has no true continuation, and IsNext is never invented inside a
sentence, so it can only be NotNext. BERT forces it to NotNext, which skews the labels on
corpora of short documents. Here it becomes a NotNext pair only while the labeled pairs so far
stay at or below ``not_next_prob``; otherwise it is an unlabeled row ``[CLS] A [SEP]``
(``nsp_label`` -100: ignored by the NSP loss, still used by MLM and contrastive). The labels keep
the configured balance on any corpus, and no text is dropped.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

IS_NEXT, NOT_NEXT = 0, 1     # Hugging Face's next_sentence_label convention
UNLABELED = -100             # a one-sentence chunk whose coin said IsNext


@dataclass
class NspBuilder:
    max_seq_len: int
    cls_id: int
    sep_id: int
    pad_id: int
    not_next_prob: float = 0.5
    short_seq_prob: float = 0.1
    buffer_docs: int = 256                     # other documents kept for NotNext partners
    _buffer: deque = field(default_factory=deque, repr=False)
    counts: dict = field(default_factory=lambda: {"is_next": 0, "not_next": 0, "unlabeled": 0,
                                                  "no_partner": 0})

    def remember(self, doc_key: int, sentences: list[np.ndarray]) -> None:
        if sentences:
            self._buffer.append((doc_key, sentences))
            while len(self._buffer) > self.buffer_docs:
                self._buffer.popleft()

    def _partner(self, doc_key: int, rng: np.random.Generator):
        others = [i for i, (k, _) in enumerate(self._buffer) if k != doc_key]
        if not others:
            return None
        return self._buffer[others[int(rng.integers(len(others)))]][1]

    def build(self, doc_key: int, sentences: list[np.ndarray], rng: np.random.Generator) -> list[dict]:
        """Instances of one document: dicts with input_ids, token_type_ids (T,), nsp_label."""
        max_tokens = self.max_seq_len - 3
        sentences = [np.asarray(s, dtype=np.int32) for s in sentences if len(s)]
        out: list[dict] = []
        target = max_tokens
        if rng.random() < self.short_seq_prob:
            target = int(rng.integers(2, max_tokens + 1))
        chunk: list[np.ndarray] = []
        length = 0
        i = 0
        while i < len(sentences):
            chunk.append(sentences[i])
            length += len(sentences[i])
            if i == len(sentences) - 1 or length >= target:
                a_end = int(rng.integers(1, len(chunk))) if len(chunk) >= 2 else 1
                a = np.concatenate(chunk[:a_end])
                # random with balance feedback: NotNext with probability (target - NotNext so far),
                # target = not_next_prob x labeled pairs; the running share stays at the rate
                labeled = self.counts["is_next"] + self.counts["not_next"]
                nn_target = self.not_next_prob * (labeled + 1)
                not_next = self.counts["not_next"] + rng.random() < nn_target
                if len(chunk) == 1:                     # no continuation: NotNext or unlabeled
                    not_next = self.counts["not_next"] + 1 <= nn_target + 1.0   # at most one ahead
                other = self._partner(doc_key, rng) if not_next else None
                if not_next and other is None:
                    self.counts["no_partner"] += 1       # no other document yet
                if (len(chunk) == 1 and not not_next) or (not_next and other is None):
                    out.append(self._row(a[:max_tokens], None, UNLABELED))
                    self.counts["unlabeled"] += 1
                    chunk, length = [], 0
                    i += 1
                    continue
                if not_next:
                    want = max(1, target - len(a))
                    start = int(rng.integers(len(other)))
                    b_parts, got = [], 0
                    for s in other[start:]:
                        b_parts.append(s)
                        got += len(s)
                        if got >= want:
                            break
                    b = np.concatenate(b_parts)
                    i -= len(chunk) - a_end               # unused sentences go back
                else:
                    b = np.concatenate(chunk[a_end:])
                a, b = _truncate_pair(a, b, max_tokens, rng)
                out.append(self._row(a, b, NOT_NEXT if not_next else IS_NEXT))
                self.counts["not_next" if not_next else "is_next"] += 1
                chunk, length = [], 0
            i += 1
        return out

    def _row(self, a: np.ndarray, b: np.ndarray | None, label: int) -> dict:
        T = self.max_seq_len
        ids = np.full(T, self.pad_id, dtype=np.int32)
        tt = np.zeros(T, dtype=np.int8)
        parts = [[self.cls_id], a, [self.sep_id]] + ([b, [self.sep_id]] if b is not None else [])
        seq = np.concatenate(parts).astype(np.int32)
        ids[:len(seq)] = seq
        if b is not None:
            tt[len(a) + 2:len(seq)] = 1
        return {"input_ids": ids, "token_type_ids": tt, "nsp_label": np.int16(label),
                "num_tokens": np.int32(len(seq))}


def _truncate_pair(a: np.ndarray, b: np.ndarray, max_tokens: int, rng: np.random.Generator):
    """BERT's truncate_seq_pair in closed form: the longer side loses tokens one at a time (ties:
    B), each from the front or the back at random."""
    la, lb = len(a), len(b)
    excess = la + lb - max_tokens
    if excess <= 0:
        return a, b
    cut_a = cut_b = 0
    d = abs(la - lb)
    first = min(excess, d)
    if la > lb:
        cut_a += first
    else:
        cut_b += first
    rest = excess - first
    cut_a += rest // 2
    cut_b += rest - rest // 2

    def cut(x, k):
        front = int(rng.binomial(k, 0.5)) if k else 0
        return x[front:len(x) - (k - front)]
    return cut(a, cut_a), cut(b, cut_b)
