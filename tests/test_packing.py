import numpy as np
from hypothesis import given, settings, strategies as st

from ssl_core.packing import pack_documents, packing_efficiency

CLS, SEP, PAD = 2, 3, 0


@settings(max_examples=50, deadline=None)
@given(lens=st.lists(st.integers(0, 300), min_size=0, max_size=20), T=st.integers(8, 130))
def test_packing_keeps_every_token_in_order(lens, T):
    rng = np.random.default_rng(sum(lens) + T)
    docs = [rng.integers(5, 100, size=n).astype(np.int32) for n in lens]
    ids, n_real = pack_documents(docs, T, cls_id=CLS, sep_id=SEP, pad_id=PAD)
    assert ids.dtype == np.int32 and ids.shape[1] == T and len(n_real) == len(ids)
    if not any(lens):
        assert len(ids) == 0
        return
    assert np.all(ids[:, 0] == CLS)
    body = [row[1:n - 1] for row, n in zip(ids, n_real)]
    assert all(row[n - 1] == SEP for row, n in zip(ids, n_real))
    assert all(np.all(row[n:] == PAD) for row, n in zip(ids, n_real))
    stream = np.concatenate(body)
    expect = np.concatenate([np.concatenate([d, [SEP]]) for d in docs if len(d)])[:-1]
    assert np.array_equal(stream, expect)
    assert np.all(n_real[:-1] == T)                       # only the last row is padded
    assert 0 < packing_efficiency(n_real, T) <= 1
