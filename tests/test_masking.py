"""Property tests of MLM masking: rate, special tokens, 80/10/10, determinism, shapes, dtypes."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from ssl_core.masking import IGNORE_INDEX, MlmMasker, row_keys

VOCAB = 1000
SPECIALS = (0, 1, 2, 3, 4)      # pad, unk, cls, sep, mask
MASK = 4


def make_batch(rng, B=64, T=128, pad_tail=True):
    ids = rng.integers(5, VOCAB, size=(B, T)).astype(np.int64)
    ids[:, 0] = 2
    lens = rng.integers(T // 2, T + 1, size=B) if pad_tail else np.full(B, T)
    for i, n in enumerate(lens):
        ids[i, n - 1] = 3
        ids[i, n:] = 0
    return ids


def both(masker, ids, seed):
    """The two randomness sources: an explicit Generator and the keyed hash."""
    return [masker(ids, np.random.default_rng(seed)), masker.keyed(ids, seed=seed)]


@settings(max_examples=25, deadline=None)
@given(ratio=st.floats(0.05, 0.6), seed=st.integers(0, 2**31 - 1))
def test_selection_rate_matches_ratio(ratio, seed):
    m = MlmMasker(VOCAB, MASK, SPECIALS, ratio=ratio)
    ids = make_batch(np.random.default_rng(seed), B=128, T=128)
    eligible = ~np.isin(ids, SPECIALS)
    n = eligible.sum()
    tol = 5 * np.sqrt(ratio * (1 - ratio) / n) + 2 / 65536
    for _, labels in both(m, ids, seed):
        rate = (labels != IGNORE_INDEX).sum() / n
        assert abs(rate - ratio) < tol, (rate, ratio, tol)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), ratio=st.floats(0.1, 0.9))
def test_special_and_pad_tokens_never_masked_or_changed(seed, ratio):
    rng = np.random.default_rng(seed)
    ids = make_batch(rng, B=32, T=64)
    ids[rng.random(ids.shape) < 0.1] = 1          # sprinkle [UNK] inside the text too
    m = MlmMasker(VOCAB, MASK, SPECIALS, ratio=ratio)
    special = np.isin(ids, SPECIALS)
    for out, labels in both(m, ids, seed):
        assert np.all(labels[special] == IGNORE_INDEX)
        assert np.array_equal(out[special], ids[special])
        # random replacements never produce a special token
        changed = out != ids
        assert not np.isin(out[changed & (out != MASK)], SPECIALS).any()


@pytest.mark.parametrize("mask_prob,random_prob", [(0.8, 0.1), (0.5, 0.3), (1.0, 0.0), (0.0, 0.0)])
def test_replacement_proportions(mask_prob, random_prob):
    ids = make_batch(np.random.default_rng(7), B=512, T=128, pad_tail=False)
    m = MlmMasker(VOCAB, MASK, SPECIALS, ratio=0.3, mask_prob=mask_prob, random_prob=random_prob)
    for out, labels in both(m, ids, 3):
        sel = labels != IGNORE_INDEX
        n = sel.sum()
        assert np.array_equal(labels[sel], ids[sel])            # labels hold the originals
        assert np.array_equal(out[~sel], ids[~sel])             # unselected tokens untouched
        is_mask = (out[sel] == MASK).mean()
        is_random = ((out[sel] != MASK) & (out[sel] != ids[sel])).mean()
        # a random draw equals the original with prob 1/(vocab - specials)
        p_same = 1 / (VOCAB - len(SPECIALS))
        exp_random = random_prob * (1 - p_same)
        tol = 5 * np.sqrt(0.25 / n) + 2 / 65536 / 0.3
        assert abs(is_mask - mask_prob) < tol
        assert abs(is_random - exp_random) < tol
        assert abs((1 - is_mask - is_random) - (1 - mask_prob - exp_random)) < tol


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), split=st.integers(1, 31))
def test_deterministic_and_independent_of_batching(seed, split):
    ids = make_batch(np.random.default_rng(seed), B=32, T=48)
    m = MlmMasker(VOCAB, MASK, SPECIALS)
    a1, l1 = m(ids, np.random.default_rng(seed))
    a2, l2 = m(ids, np.random.default_rng(seed))
    assert np.array_equal(a1, a2) and np.array_equal(l1, l2)
    # keyed: a row's mask depends on (seed, epoch, row), not on which batch/worker holds it
    whole, wl = m.keyed(ids, seed=seed)
    top, tl = m.keyed(ids[:split], seed=seed)
    bot, bl = m.keyed(ids[split:], seed=seed)
    assert np.array_equal(whole, np.concatenate([top, bot]))
    assert np.array_equal(wl, np.concatenate([tl, bl]))
    perm = np.random.default_rng(seed).permutation(len(ids))
    pm, pl = m.keyed(ids[perm], seed=seed)
    assert np.array_equal(pm, whole[perm]) and np.array_equal(pl, wl[perm])


def test_new_masks_for_new_seed_or_epoch():
    ids = make_batch(np.random.default_rng(0), B=16, T=64)
    m = MlmMasker(VOCAB, MASK, SPECIALS)
    base = m.keyed(ids, seed=1, epoch=0)[1]
    assert not np.array_equal(base, m.keyed(ids, seed=1, epoch=1)[1])
    assert not np.array_equal(base, m.keyed(ids, seed=2, epoch=0)[1])
    assert not np.array_equal(row_keys(ids, 1, 0), row_keys(ids, 1, 1))
    g = m(ids, np.random.default_rng(1))[1]
    assert not np.array_equal(g, m(ids, np.random.default_rng(2))[1])


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_shape_and_dtype_preserved_and_input_untouched(dtype):
    ids = make_batch(np.random.default_rng(1), B=8, T=40).astype(dtype)
    before = ids.copy()
    m = MlmMasker(VOCAB, MASK, SPECIALS, ratio=0.5)
    for out, labels in both(m, ids, 0):
        assert out.shape == ids.shape == labels.shape
        assert out.dtype == labels.dtype == dtype
        assert np.array_equal(ids, before)


def test_rejects_bad_ratios():
    with pytest.raises(ValueError):
        MlmMasker(VOCAB, MASK, SPECIALS, ratio=0.0)
    with pytest.raises(ValueError):
        MlmMasker(VOCAB, MASK, SPECIALS, mask_prob=0.9, random_prob=0.2)
