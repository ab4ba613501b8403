"""``sslpipe data stats`` and ``sslpipe data preview``: the Ray Data stage alone, no training.

    sslpipe data stats   [--config ...] [--set data.corpus=URI ...]   # the data report
    sslpipe data preview [--config ...] [--set ...] [-n 3]            # decoded examples per objective

Both read and tokenize the corpus once, as ``sslpipe pretrain`` does; the preview builds the first
rows and view pairs as a Train worker builds them at epoch 0 (masks included).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from ssl_core.config import Config
from ssl_core.masking import IGNORE_INDEX


def _corpus(cfg: Config, tmp: str):
    from pipelines.data import tokenized_corpus
    from pipelines.prepare import corpus_shards, ensure_ray, tokenizer_for

    shards = corpus_shards(cfg)
    tok_dir = tokenizer_for(cfg, shards, Path(tmp) / "tokenizer")
    ensure_ray(cfg)
    return tokenized_corpus(cfg, shards, str(tok_dir)), tok_dir


def run_stats(cfg: Config) -> str:
    from pipelines.data import report

    with tempfile.TemporaryDirectory() as tmp:
        corpus, _ = _corpus(cfg, tmp)
    c = corpus.counts
    return report(c, cfg.data.max_seq_len) + (
        f"\n  one pass: {c.get('train_rows', 0):,} training rows, {c.get('val_rows', 0):,} validation rows"
        + (f", {c.get('train_examples_contrastive', 0):,} contrastive view pairs"
           if cfg.objectives.contrastive else ""))


def _decode_masked(tok, ids: np.ndarray, labels: np.ndarray, pad_id: int) -> str:
    out = []
    for t, y in zip(ids.tolist(), labels.tolist()):
        if t == pad_id:
            break
        piece = tok.id_to_token(t)
        if y != IGNORE_INDEX:
            orig = tok.id_to_token(y)
            random = t != y and piece != "[MASK]"              # replaced by a random token
            piece = f"<{piece}!>{{{orig}}}" if random else f"<{piece}>{{{orig}}}"
        out.append(piece)
    return " ".join(out).replace(" ##", "")


def _decode(tok, ids: np.ndarray, pad_id: int) -> str:
    return tok.decode([t for t in ids.tolist() if t != pad_id], skip_special_tokens=False)


def run_preview(cfg: Config, n: int = 3) -> str:
    from ssl_core.examples import ExampleBuilder
    from ssl_core.masking import mask_rows

    with tempfile.TemporaryDirectory() as tmp:
        corpus, tok_dir = _corpus(cfg, tmp)
        b = ExampleBuilder(cfg, str(tok_dir))
        docs = corpus.train.take_batch(cfg.data.batch_rows, batch_format="numpy")
    tok, pad = b.tok, b.sp["pad"]
    o = cfg.objectives
    rows = b.rows(docs, 0)[0] if b.makes_rows else {}
    pairs = b.views(docs, 0)[0] if o.contrastive else {}
    lines = [f"preview: the first training rows of {cfg.data.max_seq_len} tokens and view pairs, as "
             f"built at epoch 0 (<x>{{y}}: position predicted, y the original; <[MASK]>, <random!> "
             f"or <kept>)"]
    if o.mlm and rows:
        ids, labels = mask_rows(b.masker(), rows, cfg.masking.seed)
    for i in range(min(n, max(len(rows.get("input_ids", [])), len(pairs.get("view_a", []))))):
        lines.append(f"--- example {i}")
        if o.mlm and i < len(rows["input_ids"]):
            k = int((labels[i] != IGNORE_INDEX).sum())
            lines.append(f"  mlm ({cfg.masking.strategy}, {k} of {int(rows['num_tokens'][i])} tokens "
                         f"predicted): {_decode_masked(tok, ids[i], labels[i], pad)}")
        if o.nsp and i < len(rows["input_ids"]):
            label = {1: "NotNext", 0: "IsNext"}.get(int(rows["nsp_label"][i]), "unlabeled")
            lines.append(f"  nsp [{label}]: {_decode(tok, rows['input_ids'][i], pad)}")
        if o.contrastive and i < len(pairs["view_a"]):
            lines.append(f"  view a ({cfg.contrastive.view_a}): {_decode(tok, pairs['view_a'][i], pad)}")
            lines.append(f"  view b ({cfg.contrastive.view_b}): {_decode(tok, pairs['view_b'][i], pad)}")
    return "\n".join(lines)
