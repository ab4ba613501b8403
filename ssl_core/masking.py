"""MLM masking as a pure, vectorized numpy function on a batch of token ids.

BERT's rule: select ``ratio`` of the non-special tokens for prediction; of those, ``mask_prob``
become ``[MASK]``, ``random_prob`` a random (non-special) token, the rest stay unchanged. Labels
hold the original id at selected positions and -100 everywhere else.

Two ways to draw the randomness, one masking rule:

* ``MlmMasker.__call__(ids, rng)``: from an explicit ``np.random.Generator``.
* ``MlmMasker.keyed(ids, seed, epoch)``: from a counter-based hash of (seed, epoch, row content,
  position). A row gets the same mask however the rows are batched or spread over workers, and a
  new one each epoch. The training loop masks every batch this way (at the step's ratio of the
  schedule), and validation rows are masked once this way at ``EVAL_RATIO`` with ``EVAL_SEED``.

Cost: one 16-bit draw per token, then work only on the ~``ratio`` selected positions
(``benchmarks/masking.py`` measures it against Hugging Face's collator).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE_INDEX = -100
EVAL_RATIO = 0.15      # MLM is always *evaluated* at 15% (token masking), whatever the training ratio
EVAL_SEED = 1234       # ... with the same masks every time, so runs and trials are comparable
_U16 = 1 << 16

# Counter-based hashing for the keyed path; every op wraps (mod 2**32 or 2**64).
_G32 = np.uint32(0x9E3779B9)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def mix32(z: np.ndarray) -> np.ndarray:
    """lowbias32 (C. Wellons' hash-prospector): a strong 32-bit integer mixer, in place."""
    z ^= z >> np.uint32(16)
    z *= np.uint32(0x7FEB352D)
    z ^= z >> np.uint32(15)
    z *= np.uint32(0x846CA68B)
    z ^= z >> np.uint32(16)
    return z


def splitmix64(z: np.ndarray) -> np.ndarray:
    """Finalizer of splitmix64 on a uint64 array."""
    with np.errstate(over="ignore"):
        z = np.asarray(z, dtype=np.uint64) ^ (np.asarray(z, dtype=np.uint64) >> np.uint64(30))
        z = z * _M1
        z ^= z >> np.uint64(27)
        z = z * _M2
        z ^= z >> np.uint64(31)
    return z


def row_keys(input_ids: np.ndarray, seed: int, epoch=0) -> np.ndarray:
    """A 32-bit key per row from its content, the seed and the epoch (an int, or one per row).
    # (B,) uint32"""
    ids = np.asarray(input_ids)
    T = ids.shape[1]
    coef = mix32(np.arange(1, T + 1, dtype=np.uint32) * _G32) | np.uint32(1)   # (T,) odd
    ep = np.asarray(epoch, dtype=np.uint64) & np.uint64(0xFFFFFFFF)
    with np.errstate(over="ignore"):
        salt = splitmix64((np.uint64(seed & 0xFFFFFFFF) << np.uint64(32) | ep) + _GOLDEN)
    with np.errstate(over="ignore"):
        h = (ids.astype(np.uint32) * coef).sum(axis=1, dtype=np.uint32)       # (B,)
        h ^= (salt & np.uint64(0xFFFFFFFF)).astype(np.uint32)
        return mix32(h)


STRATEGIES = ("token", "whole_word", "span")


class _Keyed:
    """Draws that are a function of (row key, position): invariant to batching."""

    def __init__(self, keys: np.ndarray):
        self.keys = np.asarray(keys).astype(np.uint32, copy=False)

    def tokens(self, B: int, T: int) -> np.ndarray:                       # (B*T,) uint32
        self.B = B
        pos = np.arange(1, T + 1, dtype=np.uint32) * _G32
        return mix32((self.keys[:, None] + pos[None, :]).reshape(-1))

    def rows(self, salt: int, M: int) -> np.ndarray:                      # (B, M) uint32
        j = (np.arange(M, dtype=np.uint32) + np.uint32(salt)) * _G32
        return mix32(mix32(self.keys[:, None] ^ np.uint32(0x5BD1E995)) + j[None, :])


class _FromGenerator:
    """Draws from an explicit ``np.random.Generator`` (raw 64-bit output viewed as 32-bit)."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def _u32(self, n: int) -> np.ndarray:
        return self.rng.bit_generator.random_raw((n + 1) // 2).view(np.uint32)[:n]

    def tokens(self, B: int, T: int) -> np.ndarray:
        self.B = B
        return self._u32(B * T)

    def rows(self, salt: int, M: int) -> np.ndarray:
        return self._u32(self.B * M).reshape(self.B, M)


@dataclass(frozen=True)
class MlmMasker:
    """Masking rule bound to a vocabulary: which ids are special, which id is [MASK].

    strategy: ``token`` (BERT), ``whole_word`` (every piece of a selected word; 80/10/10 per
    word), ``span`` (SpanBERT: spans of whole words, lengths ~ Geometric(``span_p``) clipped at
    ``span_max``, until ``ratio`` of the row's tokens; 80/10/10 per span). ``whole_word`` and
    ``span`` need ``word_start`` (B, T): True where a token begins a word."""

    vocab_size: int
    mask_id: int
    special_ids: tuple[int, ...]
    ratio: float = 0.15
    mask_prob: float = 0.8
    random_prob: float = 0.1
    strategy: str = "token"
    span_p: float = 0.2
    span_max: int = 10

    def __post_init__(self):
        if not 0.0 < self.ratio < 1.0:
            raise ValueError(f"ratio must be in (0, 1), got {self.ratio}")
        if self.mask_prob < 0 or self.random_prob < 0 or self.mask_prob + self.random_prob > 1 + 1e-9:
            raise ValueError("mask_prob and random_prob must be >= 0 and sum to <= 1")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        lut = np.zeros(self.vocab_size, dtype=bool)
        lut[list(self.special_ids)] = True
        object.__setattr__(self, "_special", lut)
        object.__setattr__(self, "_candidates", np.flatnonzero(~lut).astype(np.int64))

    @classmethod
    def from_tokenizer(cls, tokenizer, **kw) -> "MlmMasker":
        """From a HF tokenizer (``PreTrainedTokenizerFast``/``TokenizersBackend``)."""
        return cls(vocab_size=len(tokenizer), mask_id=tokenizer.mask_token_id,
                   special_ids=tuple(sorted(set(tokenizer.all_special_ids))), **kw)

    # ---------------------------------------------------------------- public
    def __call__(self, input_ids: np.ndarray, rng: np.random.Generator,
                 word_start: np.ndarray | None = None, ratio: float | None = None):
        """Mask a (B, T) integer batch with draws from ``rng``. Returns (masked ids, labels), same dtype."""
        return self._mask(np.ascontiguousarray(input_ids), _FromGenerator(rng), word_start, ratio)

    def keyed(self, input_ids: np.ndarray, seed: int, epoch: int = 0, keys: np.ndarray | None = None,
              word_start: np.ndarray | None = None, ratio: float | None = None):
        """Mask with draws that depend only on (seed, epoch, row key, position): batching-invariant.

        ``keys``: one uint32 per row; default = a hash of the row's content (``row_keys``)."""
        ids = np.ascontiguousarray(input_ids)
        if keys is None:
            keys = row_keys(ids, seed, epoch)
        return self._mask(ids, _Keyed(keys), word_start, ratio)

    # ---------------------------------------------------------------- core
    def _thresholds(self, ratio: float) -> tuple[int, int, int]:
        t_sel = min(max(int(round(ratio * _U16)), 1), _U16 - 1)
        return (t_sel, int(round(t_sel * self.mask_prob)),
                int(round(t_sel * (self.mask_prob + self.random_prob))))

    def _mask(self, ids: np.ndarray, rand, word_start, ratio):
        ratio = self.ratio if ratio is None else ratio
        if not 0.0 < ratio < 1.0:
            raise ValueError(f"ratio must be in (0, 1), got {ratio}")
        B, T = ids.shape
        z = rand.tokens(B, T)                                                # (B*T,) uint32
        if self.strategy == "token":
            t_sel, t_mask, t_rand = self._thresholds(ratio)
            idx = np.flatnonzero(z < np.uint32(t_sel << 16))                 # top 16 bits select
            zi = z[idx]
            return self._apply(ids, idx, (zi >> np.uint32(16)), t_mask, t_rand, zi)
        if word_start is None:
            raise ValueError(f"strategy {self.strategy!r} needs word_start (B, T)")
        special = self._special[ids]
        ws = np.asarray(word_start, dtype=bool) | special                   # specials are words,
        ws[:, 1:] |= special[:, :-1]                                         # and so is what follows
        ws[:, 0] = True
        pos = np.broadcast_to(np.arange(T), (B, T))
        start = np.maximum.accumulate(np.where(ws, pos, 0), axis=1)          # (B, T) word start
        flat_start = (start + (np.arange(B) * T)[:, None]).reshape(-1)
        if self.strategy == "whole_word":
            t_sel, t_mask, t_rand = self._thresholds(ratio)
            zw = z[flat_start]                                               # a word's draw, per token
            idx = np.flatnonzero(zw < np.uint32(t_sel << 16))
            return self._apply(ids, idx, zw[idx] >> np.uint32(16), t_mask, t_rand, z[idx])
        covered = self._spans(ids, ws, ratio, rand)                          # (B, T) bool
        idx = np.flatnonzero(covered)
        # 80/10/10 per span: a token follows the draw of the first token of its span
        run_start = covered & ~np.concatenate([np.zeros((B, 1), bool), covered[:, :-1]], axis=1)
        first = np.maximum.accumulate(np.where(run_start, pos, 0), axis=1)
        zs = z[(first + (np.arange(B) * T)[:, None]).reshape(-1)[idx]]
        return self._apply(ids, idx, zs >> np.uint32(16), int(round(self.mask_prob * _U16)),
                           int(round((self.mask_prob + self.random_prob) * _U16)), z[idx])

    def _spans(self, ids, ws, ratio, rand) -> np.ndarray:
        """SpanBERT span selection, vectorized over rows. Returns covered (B, T) bool."""
        B, T = ids.shape
        eligible = ~self._special[ids]                                       # (B, T)
        budget = np.round(eligible.sum(1) * ratio).astype(np.int64)         # (B,) tokens to cover
        wstart = ws & eligible
        n_words = wstart.sum(1)                                              # (B,)
        W = max(1, int(n_words.max()))
        # token position of each eligible word start, padded with T        # (B, W)
        order = np.argsort(~wstart, axis=1, kind="stable")[:, :W]
        wpos = np.where(np.arange(W)[None, :] < n_words[:, None], order, T)
        M = int(max(4, 2 * budget.max() + 4)) if B else 4                    # spans drawn per row
        u_len = (rand.rows(1, M).astype(np.float64) + 0.5) / 2.0**32        # (B, M) in (0, 1)
        lens = np.minimum(1 + np.floor(np.log(u_len) / np.log1p(-self.span_p)), self.span_max)
        lens = lens.astype(np.int64)
        s_word = (rand.rows(2, M).astype(np.uint64) * np.maximum(n_words, 1)[:, None].astype(np.uint64)
                  >> np.uint64(32)).astype(np.int64)                         # (B, M) start word
        e_word = np.minimum(s_word + lens, n_words[:, None])                # exclusive
        rows = np.arange(B)[:, None]
        tok_s = wpos[rows, s_word]                                           # (B, M)
        tok_e = np.where(e_word < n_words[:, None], wpos[rows, np.minimum(e_word, W - 1)], T)
        # take spans in order until the budget of tokens is used (the last one is cut to fit)
        span_len = np.maximum(tok_e - tok_s, 0) * (n_words[:, None] > 0)
        before = np.cumsum(span_len, axis=1) - span_len
        take = np.clip(budget[:, None] - before, 0, span_len)                # tokens kept per span
        diff = np.zeros((B, T + 1), np.int32)
        np.add.at(diff, (np.repeat(np.arange(B), M), tok_s.reshape(-1)), (take > 0).reshape(-1))
        np.add.at(diff, (np.repeat(np.arange(B), M), np.minimum(tok_s + take, T).reshape(-1)),
                  -(take > 0).reshape(-1).astype(np.int32))
        covered = np.cumsum(diff[:, :T], axis=1) > 0
        return covered & eligible

    def _apply(self, ids: np.ndarray, idx: np.ndarray, v: np.ndarray, t_mask: int, t_rand: int,
               pick: np.ndarray):
        """Mask ``ids`` at flat positions ``idx``: v < t_mask -> [MASK], v < t_rand -> random token,
        else unchanged. ``pick``: 32-bit draws at ``idx`` that choose the random tokens."""
        flat = ids.reshape(-1)
        keep = ~self._special[flat[idx]]                                     # special / pad never
        idx, v, pick = idx[keep], v[keep], pick[keep]
        labels = np.full(ids.shape, IGNORE_INDEX, dtype=ids.dtype)
        labels.reshape(-1)[idx] = flat[idx]
        out = ids.copy()
        o = out.reshape(-1)
        o[idx[v < t_mask]] = self.mask_id
        r = (v >= t_mask) & (v < t_rand)
        if r.any():
            n = len(self._candidates)
            # a second, independent 64-bit mix of the position's draw picks the token
            choice = (splitmix64(pick[r].astype(np.uint64) + _GOLDEN) % np.uint64(n)).astype(np.int64)
            o[idx[r]] = self._candidates[choice]
        return out, labels


def mask_rows(masker: MlmMasker, rows: dict, seed: int, ratio: float | None = None):
    """Training masks of data-stage rows (``input_ids``, ``word_start``, ``epoch``): keyed by
    (seed, epoch, row content), so a row gets a new mask each epoch and the same one whatever the
    batching or the number of workers. Returns (masked ids, labels)."""
    ids = rows["input_ids"]
    return masker.keyed(ids, seed=seed, keys=row_keys(ids, seed, rows["epoch"]),
                        word_start=np.asarray(rows["word_start"]).astype(bool), ratio=ratio)


def ratio_at(schedule: str, start: float, end: float, progress: float) -> float:
    """Mask-ratio schedule: ``constant`` (start) or ``linear`` from start to end over progress in [0, 1]."""
    if schedule == "constant":
        return start
    if schedule == "linear":
        p = min(max(progress, 0.0), 1.0)
        return start + (end - start) * p
    raise ValueError(f"unknown mask-ratio schedule {schedule!r} (constant | linear)")
