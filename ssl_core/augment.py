"""Two augmented views of each text for contrastive learning, vectorized over a padded batch.

A view is a chain of augmentations, written ``name[:param],...`` (applied left to right):

    identity        no change: the two views differ only by dropout (SimCSE)
    delete:R        drop each token with probability R
    word_delete:R   drop each whole word with probability R (needs word starts)
    crop:F          keep one random contiguous span of a fraction F of the tokens
    repeat:R        duplicate each token with probability R (ESimCSE word repetition)
    shuffle:W       shuffle tokens locally: a token moves by less than W positions (W=2: adjacent swaps)
    mask:R          replace each token by [MASK] with probability R

Every view keeps at least one token and is wrapped as ``[CLS] ... [SEP]``: an empty view is impossible.

    chain = parse_chain("crop:0.8,delete:0.1")
    view, lengths = make_view(tokens, lengths, chain, rng, ...)
"""
from __future__ import annotations

import numpy as np

_PARAM_DEFAULTS = {"identity": None, "delete": 0.1, "word_delete": 0.1, "crop": 0.8, "repeat": 0.2,
                   "shuffle": 3, "mask": 0.15}


def parse_chain(spec: str) -> list[tuple[str, float | None]]:
    """``"crop:0.8,delete:0.1"`` -> [("crop", 0.8), ("delete", 0.1)]. Raises ValueError."""
    chain = []
    for part in [p.strip() for p in spec.split(",") if p.strip()] or ["identity"]:
        name, _, val = part.partition(":")
        name = name.strip()
        if name not in _PARAM_DEFAULTS:
            raise ValueError(f"unknown augmentation {name!r} (known: {', '.join(_PARAM_DEFAULTS)})")
        if name == "identity":
            chain.append((name, None))
            continue
        try:
            p = float(val) if val else float(_PARAM_DEFAULTS[name])
        except ValueError:
            raise ValueError(f"augmentation {part!r}: parameter must be a number") from None
        if name == "shuffle" and p < 1:
            raise ValueError(f"augmentation {part!r}: window must be >= 1")
        if name != "shuffle" and not 0.0 <= p <= 1.0:
            raise ValueError(f"augmentation {part!r}: parameter must be in [0, 1]")
        if name == "crop" and p == 0.0:
            raise ValueError(f"augmentation {part!r}: crop fraction must be > 0")
        chain.append((name, p))
    return chain


def _compact(tok: np.ndarray, keep: np.ndarray, pad_id: int):
    """Keep ``keep`` positions of each row, left-aligned. Rows keep >= 1 token (their first)."""
    B, L = tok.shape
    none = ~keep.any(1)
    if none.any():
        keep = keep.copy()
        keep[none, 0] = True                                      # never an empty view
    newpos = np.cumsum(keep, axis=1) - 1                          # (B, L)
    lengths = keep.sum(1)
    out = np.full((B, max(1, int(lengths.max()))), pad_id, dtype=tok.dtype)
    rows = np.broadcast_to(np.arange(B)[:, None], (B, L))
    out[rows[keep], newpos[keep]] = tok[keep]
    return out, lengths


def _valid(lengths: np.ndarray, L: int) -> np.ndarray:
    return np.arange(L)[None, :] < lengths[:, None]


def apply_chain(tok: np.ndarray, lengths: np.ndarray, chain, rng: np.random.Generator, *,
                pad_id: int, mask_id: int, word_start: np.ndarray | None = None):
    """Apply an augmentation chain to (B, L) token rows (no special tokens) of ``lengths``."""
    tok = np.asarray(tok)
    lengths = np.asarray(lengths).copy()
    ws = None if word_start is None else np.asarray(word_start, dtype=bool)
    for name, p in chain:
        B, L = tok.shape
        valid = _valid(lengths, L)
        if name == "identity":
            continue
        if name == "delete":
            keep = valid & (rng.random((B, L)) >= p)
            if ws is not None:
                ws, _ = _compact(ws.astype(tok.dtype), keep, 0)
                ws = ws.astype(bool)
            tok, lengths = _compact(tok, keep, pad_id)
        elif name == "word_delete":
            if ws is None:
                raise ValueError("word_delete needs word starts")
            w = ws.copy()
            w[:, 0] = True
            word_id = np.cumsum(w, axis=1) - 1                    # (B, L) word index in row
            drop_word = rng.random((B, L)) < p                    # a draw per word slot
            keep = valid & ~np.take_along_axis(drop_word, word_id, axis=1)
            ws2, _ = _compact(w.astype(tok.dtype), keep, 0)
            tok, lengths = _compact(tok, keep, pad_id)
            ws = ws2.astype(bool)
        elif name == "crop":
            k = np.maximum(1, np.round(lengths * p)).astype(np.int64)
            start = (rng.random(B) * (lengths - k + 1)).astype(np.int64)
            pos = np.arange(L)[None, :]
            keep = (pos >= start[:, None]) & (pos < (start + k)[:, None]) & valid
            if ws is not None:
                ws, _ = _compact(ws.astype(tok.dtype), keep, 0)
                ws = ws.astype(bool)
            tok, lengths = _compact(tok, keep, pad_id)
        elif name == "repeat":
            dup = valid & (rng.random((B, L)) < p)
            counts = valid.astype(np.int64) + dup                 # 0 (pad), 1 or 2 copies
            lengths = counts.sum(1)
            out = np.full((B, max(1, int(lengths.max()))), pad_id, dtype=tok.dtype)
            newpos = np.cumsum(counts, axis=1) - counts           # first slot of each token
            rows = np.broadcast_to(np.arange(B)[:, None], (B, L))
            out[rows[valid], newpos[valid]] = tok[valid]
            out[rows[dup], newpos[dup] + 1] = tok[dup]
            if ws is not None:
                w2 = np.zeros(out.shape, dtype=bool)
                w2[rows[valid], newpos[valid]] = ws[valid]
                w2[rows[dup], newpos[dup] + 1] = True             # a repeated piece starts a word
                ws = w2
            tok = out
        elif name == "shuffle":
            key = np.arange(L)[None, :] + rng.random((B, L)) * p
            key = np.where(valid, key, np.inf)
            order = np.argsort(key, axis=1, kind="stable")
            tok = np.take_along_axis(tok, order, axis=1)
            ws = None if ws is None else np.take_along_axis(ws, order, axis=1)
        elif name == "mask":
            m = valid & (rng.random((B, L)) < p)
            tok = np.where(m, mask_id, tok).astype(tok.dtype)
        else:  # parse_chain rejects these
            raise ValueError(name)
    return tok, lengths


def wrap(tok: np.ndarray, lengths: np.ndarray, max_seq_len: int, *, cls_id: int, sep_id: int,
         pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """``[CLS] tokens [SEP]`` padded to ``max_seq_len`` (tokens cut to fit). -> (ids (B, T), lengths)."""
    B, L = tok.shape
    T = max_seq_len
    n = np.minimum(lengths, T - 2)
    out = np.full((B, T), pad_id, dtype=np.int32)
    out[:, 0] = cls_id
    w = min(L, T - 2)
    body = np.where(_valid(n, w), tok[:, :w], pad_id)
    out[:, 1:w + 1] = body
    out[np.arange(B), n + 1] = sep_id
    return out, (n + 2).astype(np.int32)


def make_view(tok, lengths, chain, rng, *, max_seq_len, cls_id, sep_id, pad_id, mask_id,
              word_start=None):
    """One view per row: the chain applied, then wrapped with [CLS]/[SEP]. -> (ids (B, T), lengths)."""
    t, n = apply_chain(tok, lengths, chain, rng, pad_id=pad_id, mask_id=mask_id, word_start=word_start)
    return wrap(t, n, max_seq_len, cls_id=cls_id, sep_id=sep_id, pad_id=pad_id)
