"""Whitening of pooled sentence embeddings, fitted on unlabelled sentences of the training corpus.

The pooled embeddings of an MLM-trained encoder are anisotropic: a few directions (word frequency,
length) dominate every cosine. Whitening (Su et al. 2021, "Whitening Sentence Representations for
Better Semantics and Faster Retrieval"; Huang et al. 2021, "WhiteningBERT") maps them to zero mean
and identity covariance: ``y = (x - mu) @ W`` with ``W = U diag(1/sqrt(s))`` from the SVD of their
covariance. It uses no labels, only sentences of the corpus the encoder was trained on.

The map is exported as a sentence-transformers ``Dense`` module (identity activation) after the
Pooling module, so ``SentenceTransformer(dir)`` applies it with no code of ours; the MLM head and
``AutoModel`` are unchanged.
"""
from __future__ import annotations

import random

import numpy as np

from ssl_core.config import DataConfig
from ssl_core.errors import UserError

MIN_WORDS, MAX_WORDS = 5, 64      # sentences used for the fit (fragments and run-ons left out)


def sample_sentences(data: DataConfig, n: int, seed: int = 0) -> list[str]:
    """Up to ``n`` sentences drawn uniformly (reservoir) from the training documents of the corpus
    (the held-out split is left out), each of MIN_WORDS..MAX_WORDS words."""
    from ssl_core.text import document_batches, resolve_corpus, split_sentences

    rng, out, seen = random.Random(seed), [], 0
    for shard in resolve_corpus(data.corpus):
        for group in document_batches(shard, data):
            for text, val in zip(group["text"], group["val"]):
                if val:
                    continue
                for s in split_sentences(text):
                    if not MIN_WORDS <= len(s.split()) <= MAX_WORDS:
                        continue
                    seen += 1
                    if len(out) < n:
                        out.append(s)
                    else:
                        j = rng.randrange(seen)
                        if j < n:
                            out[j] = s
    return out


def fit_whitening(emb: np.ndarray, rel_floor: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """(weight (K, H), bias (K,)) in ``nn.Linear``'s layout: ``emb @ weight.T + bias`` has zero mean
    and identity covariance over ``emb`` (N, H). Directions whose variance is below ``rel_floor``
    of the largest are dropped (K < H), not blown up: LayerNorm outputs sum to a near-constant over
    features, so pooled embeddings can lie in a subspace. Needs N >= 2H sentences."""
    x = np.asarray(emb, dtype=np.float64)
    n, h = x.shape
    if n < 2 * h:
        raise UserError(f"whitening needs at least {2 * h} sentences for {h}-dimensional embeddings, "
                        f"the corpus gave {n}; use a larger corpus or set embedding.whiten=false")
    mu = x.mean(0)
    u, s, _ = np.linalg.svd(np.cov(x - mu, rowvar=False))     # s: descending
    keep = s > s[0] * rel_floor
    w = u[:, keep] / np.sqrt(s[keep])                          # (H, K): y = (x - mu) @ w
    return w.T.astype(np.float32), (-mu @ w).astype(np.float32)


def whiten_model_dir(model_dir, data: DataConfig, n: int, seed: int = 0) -> int:
    """Fit the whitening map of the exported model in ``model_dir`` on up to ``n`` training-corpus
    sentences and add it to the directory as a Dense module; returns the number of sentences."""
    from ssl_core.evaluation import LoadedModel
    from ssl_core.export import add_dense_module

    sentences = sample_sentences(data, n, seed)
    lm = LoadedModel(model_dir)
    weight, bias = fit_whitening(lm.encode(sentences, dense=False))
    add_dense_module(model_dir, weight, bias)
    return len(sentences)
