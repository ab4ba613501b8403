"""MLM masking as a pure, vectorized numpy function on a batch of token ids.

BERT's rule: select ``ratio`` of the non-special tokens for prediction; of those, ``mask_prob``
become ``[MASK]``, ``random_prob`` a random (non-special) token, the rest stay unchanged. Labels
hold the original id at selected positions and -100 everywhere else.

Two ways to draw the randomness, one masking rule:

* ``MlmMasker.__call__(ids, rng)``: from an explicit ``np.random.Generator``.
* ``MlmMasker.keyed(ids, seed, epoch)``: from a counter-based hash of (seed, epoch, row content,
  position). A row gets the same mask however the rows are batched or spread over workers, and a
  new one each epoch. This is what the Ray Data pipeline uses.

Cost: one 16-bit draw per token, then work only on the ~``ratio`` selected positions
(``benchmarks/masking.py`` measures it against Hugging Face's collator).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE_INDEX = -100
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
    z = z ^ (z >> np.uint64(30))
    z *= _M1
    z ^= z >> np.uint64(27)
    z *= _M2
    z ^= z >> np.uint64(31)
    return z


def row_keys(input_ids: np.ndarray, seed: int, epoch: int = 0) -> np.ndarray:
    """A 32-bit key per row from its content, the seed and the epoch.  # (B,) uint32"""
    ids = np.asarray(input_ids)
    T = ids.shape[1]
    coef = mix32(np.arange(1, T + 1, dtype=np.uint32) * _G32) | np.uint32(1)   # (T,) odd
    salt = splitmix64(np.array([(seed & 0xFFFFFFFF) << 32 | (epoch & 0xFFFFFFFF)], np.uint64) + _GOLDEN)
    with np.errstate(over="ignore"):
        h = (ids.astype(np.uint32) * coef).sum(axis=1, dtype=np.uint32)       # (B,)
        h ^= (salt & np.uint64(0xFFFFFFFF)).astype(np.uint32)
        return mix32(h)


@dataclass(frozen=True)
class MlmMasker:
    """Masking rule bound to a vocabulary: which ids are special, which id is [MASK]."""

    vocab_size: int
    mask_id: int
    special_ids: tuple[int, ...]
    ratio: float = 0.15
    mask_prob: float = 0.8
    random_prob: float = 0.1

    def __post_init__(self):
        if not 0.0 < self.ratio < 1.0:
            raise ValueError(f"ratio must be in (0, 1), got {self.ratio}")
        if self.mask_prob < 0 or self.random_prob < 0 or self.mask_prob + self.random_prob > 1 + 1e-9:
            raise ValueError("mask_prob and random_prob must be >= 0 and sum to <= 1")
        lut = np.zeros(self.vocab_size, dtype=bool)
        lut[list(self.special_ids)] = True
        object.__setattr__(self, "_special", lut)
        object.__setattr__(self, "_candidates", np.flatnonzero(~lut).astype(np.int64))
        t_sel = min(int(round(self.ratio * _U16)), _U16 - 1)
        object.__setattr__(self, "_t_sel", t_sel)
        object.__setattr__(self, "_t_mask", int(round(t_sel * self.mask_prob)))
        object.__setattr__(self, "_t_rand", int(round(t_sel * (self.mask_prob + self.random_prob))))

    @classmethod
    def from_tokenizer(cls, tokenizer, **kw) -> "MlmMasker":
        """From a HF tokenizer (``PreTrainedTokenizerFast``/``TokenizersBackend``)."""
        return cls(vocab_size=len(tokenizer), mask_id=tokenizer.mask_token_id,
                   special_ids=tuple(sorted(set(tokenizer.all_special_ids))), **kw)

    # ---------------------------------------------------------------- core
    def _apply(self, ids: np.ndarray, v: np.ndarray, idx: np.ndarray, pick: np.ndarray | None,
               rng: np.random.Generator | None):
        """Mask ``ids`` at the flat positions ``idx`` (already below the selection threshold).

        v: the 16-bit draws at ``idx``; pick: the keyed hashes at ``idx`` (None: draw from ``rng``)."""
        flat = ids.reshape(-1)
        keep = ~self._special[flat[idx]]                         # special / pad never predicted
        idx, v = idx[keep], v[keep]
        if pick is not None:
            pick = pick[keep]
        labels = np.full(ids.shape, IGNORE_INDEX, dtype=ids.dtype)
        labels.reshape(-1)[idx] = flat[idx]
        out = ids.copy()
        o = out.reshape(-1)
        o[idx[v < self._t_mask]] = self.mask_id
        r = (v >= self._t_mask) & (v < self._t_rand)
        if r.any():
            ridx = idx[r]
            n = len(self._candidates)
            if pick is None:
                choice = rng.integers(0, n, size=ridx.size)
            else:
                # a second, independent 64-bit mix of the position's hash picks the token
                choice = (splitmix64(pick[r].astype(np.uint64) + _GOLDEN) % np.uint64(n)).astype(np.int64)
            o[ridx] = self._candidates[choice]
        return out, labels

    def __call__(self, input_ids: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Mask a (B, T) integer batch with draws from ``rng``. Returns (masked ids, labels), same dtype."""
        ids = np.ascontiguousarray(input_ids)
        n = ids.size
        bits = rng.bit_generator.random_raw((n + 3) // 4).view(np.uint16)[:n]   # (B*T,) 16-bit draws
        idx = np.flatnonzero(bits < self._t_sel)
        return self._apply(ids, bits[idx], idx, None, rng)

    def keyed(self, input_ids: np.ndarray, seed: int, epoch: int = 0,
              keys: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Mask with draws that depend only on (seed, epoch, row key, position): batching-invariant.

        ``keys``: one uint32 per row; default = a hash of the row's content (``row_keys``)."""
        ids = np.ascontiguousarray(input_ids)
        B, T = ids.shape
        if keys is None:
            keys = row_keys(ids, seed, epoch)
        keys = np.asarray(keys).astype(np.uint32, copy=False)
        pos = np.arange(1, T + 1, dtype=np.uint32) * _G32                       # (T,)
        z = mix32((keys[:, None] + pos[None, :]).reshape(-1))                   # (B*T,) uint32
        idx = np.flatnonzero(z < np.uint32(self._t_sel << 16))                   # top 16 bits select
        zi = z[idx]
        return self._apply(ids, (zi >> np.uint32(16)).astype(np.uint16), idx, zi, None)
