"""Sequence packing: consecutive documents concatenated into fixed-length rows.

Row layout: ``[CLS] doc_a ... [SEP] doc_b ... [SEP]`` (RoBERTa's FULL-SENTENCES packing), so
padding only appears in the last row of a batch. Packing efficiency = real tokens / slots.
"""
from __future__ import annotations

import numpy as np


def pack_documents(docs: list[np.ndarray], max_seq_len: int, *, cls_id: int, sep_id: int,
                   pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Pack token-id arrays (no special tokens) into rows of ``max_seq_len``.

    Returns (ids (N, T) int32, real tokens per row (N,) int32); N = 0 when there is nothing."""
    T = max_seq_len
    body = T - 2
    docs = [d for d in docs if len(d)]
    if not docs:
        return np.zeros((0, T), np.int32), np.zeros(0, np.int32)
    parts: list[np.ndarray] = []
    sep = np.array([sep_id], dtype=np.int32)
    for d in docs:
        parts.append(np.asarray(d, dtype=np.int32))
        parts.append(sep)
    stream = np.concatenate(parts[:-1])                 # documents joined by [SEP]
    n = len(stream)
    rows = -(-n // body)
    flat = np.full(rows * body, pad_id, dtype=np.int32)
    flat[:n] = stream
    out = np.full((rows, T), pad_id, dtype=np.int32)    # (N, T)
    out[:, 0] = cls_id
    out[:, 1:body + 1] = flat.reshape(rows, body)
    last = n - (rows - 1) * body                        # real tokens in the last row's body
    out[:-1, T - 1] = sep_id
    out[-1, 1 + last] = sep_id
    n_real = np.full(rows, T, dtype=np.int32)
    n_real[-1] = last + 2
    return out, n_real


def packing_efficiency(num_tokens: np.ndarray, max_seq_len: int) -> float:
    """Real tokens / slots over a batch."""
    return float(np.sum(num_tokens)) / max(1, len(num_tokens) * max_seq_len)
