"""``sslpipe data stats`` and ``sslpipe data preview``: one pass of the Ray Data stage, no training.

    sslpipe data stats   [--config ...] [--set data.corpus=URI ...]   # the data report
    sslpipe data preview [--config ...] [--set ...] [-n 3]            # decoded examples per objective
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from ssl_core.config import Config
from ssl_core.masking import IGNORE_INDEX


def _prepare(cfg: Config, tmp: str):
    from pipelines.prepare import corpus_shards, ensure_ray, tokenizer_for

    shards = corpus_shards(cfg)
    tok_dir = tokenizer_for(cfg, shards, Path(tmp) / "tokenizer")
    ensure_ray(cfg)
    return shards, tok_dir


def run_stats(cfg: Config) -> str:
    import ray
    from pipelines.data import build_datasets, report

    with tempfile.TemporaryDirectory() as tmp:
        shards, tok_dir = _prepare(cfg, tmp)
        train, val, stats = build_datasets(cfg, shards, str(tok_dir), epochs=1)
        n_train = sum(len(b["num_tokens"]) for b in train.iter_batches(batch_size=4096, batch_format="numpy"))
        n_val = sum(len(b["num_tokens"]) for b in val.iter_batches(batch_size=4096, batch_format="numpy"))
        c = ray.get(stats.get.remote())
    text = report(c, cfg.data.max_seq_len)
    return text + f"\n  one pass: {n_train:,} training rows, {n_val:,} validation rows"


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
    from pipelines.data import examples
    from ssl_core.examples import ExampleBuilder
    from ssl_core.masking import mask_rows

    with tempfile.TemporaryDirectory() as tmp:
        shards, tok_dir = _prepare(cfg, tmp)
        b = ExampleBuilder(cfg, str(tok_dir))
        rows = examples(cfg, shards, str(tok_dir), "train", 1).take_batch(n, batch_format="numpy")
    tok, pad = b.tok, b.sp["pad"]
    o = cfg.objectives
    lines = [f"preview: {len(rows['input_ids'])} training rows of {cfg.data.max_seq_len} tokens "
             f"(masks as in training at epoch 0; <x>{{y}}: position predicted, y the original; "
             f"<[MASK]>, <random!> or <kept>)"]
    if o.mlm:
        m = b.masker()
        ids, labels = mask_rows(m, rows, cfg.masking.seed)
    for i in range(len(rows["input_ids"])):
        lines.append(f"--- example {i}")
        if o.mlm:
            k = int((labels[i] != IGNORE_INDEX).sum())
            lines.append(f"  mlm ({cfg.masking.strategy}, {k} of {int(rows['num_tokens'][i])} tokens "
                         f"predicted): {_decode_masked(tok, ids[i], labels[i], pad)}")
        if o.nsp:
            label = "NotNext" if int(rows["nsp_label"][i]) == 1 else "IsNext"
            lines.append(f"  nsp [{label}]: {_decode(tok, rows['input_ids'][i], pad)}")
        if o.contrastive:
            lines.append(f"  view a ({cfg.contrastive.view_a}): {_decode(tok, rows['view_a'][i], pad)}")
            lines.append(f"  view b ({cfg.contrastive.view_b}): {_decode(tok, rows['view_b'][i], pad)}")
    return "\n".join(lines)
