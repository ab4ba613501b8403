"""The training loop in this process, without Ray: documents read with the same reader and
tokenized with the same builder as the Ray Data stage, batches built by the same
``training.data`` code as in a Ray Train worker.

    final, session = run_local(cfg, tokenizer_dir)                   # train, evaluate, export
    docs = local_documents(cfg, tokenizer_dir, "train")              # tokenized, in memory
    for batch in local_batches(cfg, tokenizer_dir, "val", batch_size=64, max_rows=512): ...

``python -m pipelines.train --config tiny`` is the command-line form. The tokenized corpus is held
in memory here (what a Ray run keeps in the object store).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ssl_core.config import Config
from ssl_core.examples import ExampleBuilder
from ssl_core.text import document_batches, per_shard_limit, resolve_corpus
from ssl_core.training.data import train_batches, val_batches
from ssl_core.training.job import TrainJob
from ssl_core.training.loop import train_loop
from ssl_core.training.session import LocalSession


def local_documents(cfg: Config, tokenizer_dir: str, split: str = "train") -> list[dict]:
    """The tokenized documents of one split ("train" or "val"), in reading order, one entry per
    group of ``data.batch_rows`` documents read (those of the split), as the Ray Data stage groups
    them: rows are built group by group, so both give the same rows."""
    b = ExampleBuilder(cfg, tokenizer_dir)
    shards = resolve_corpus(cfg.data.corpus, cfg.data.text_field)
    limit = per_shard_limit(cfg.data.max_documents, len(shards))
    out = []
    for shard in shards:
        for g, docs in enumerate(document_batches(shard, cfg.data, limit=limit)):
            keep = [v == (split == "val") for v in docs["val"]]
            if any(keep):
                tok, _ = b.tokenize([i for i, k in zip(docs["id"], keep) if k],
                                    [t for t, k in zip(docs["text"], keep) if k])
                out.append(dict(tok, group=np.full(sum(keep), f"{shard.path}:{g}", dtype=object)))
    return out


def local_batches(cfg: Config, tokenizer_dir: str, split: str = "train", epochs: int = 1,
                  batch_size: int | None = None, max_rows: int = 0) -> Iterator[dict]:
    """Batches of ``batch_size`` (default ``train.batch_size``) rows in reading order (no
    shuffling), at most ``max_rows`` (0 = all); validation rows are eval-masked and the last
    partial batch kept, training batches are full."""
    bs = batch_size or cfg.train.batch_size
    docs = local_documents(cfg, tokenizer_dir, split)
    if split == "val":
        yield from val_batches(ExampleBuilder(cfg, tokenizer_dir), docs, max_rows or 1 << 62, bs)
        return
    cfg = replace(cfg, data=replace(cfg.data, max_epochs=epochs, shuffle_buffer=0),
                  train=replace(cfg.train, batch_size=bs))
    for n, batch in enumerate(train_batches(cfg, ExampleBuilder(cfg, tokenizer_dir), lambda e: docs)):
        if max_rows and n * bs >= max_rows:
            return
        yield batch


def run_local(cfg: Config, tokenizer_dir: str, train_batches: Iterable[dict] | None = None,
              val_batches: list[dict] | None = None, out_dir: str | Path | None = None,
              device: str | None = None, resume: bool = False) -> tuple[dict, LocalSession]:
    """``train_loop`` in this process. Without ``train_batches`` / ``val_batches`` (ready
    batches), the corpus's documents are tokenized here and batches built as a worker builds them;
    checkpoints go to ``out_dir`` when given."""
    sess = LocalSession(train_batches, val_batches, out_dir, device, resume, cfg.train.keep_checkpoints)
    if train_batches is None:
        sess.documents = local_documents(cfg, tokenizer_dir, "train")
    if val_batches is None:
        sess.val_docs = local_documents(cfg, tokenizer_dir, "val")
    return train_loop(TrainJob(cfg, str(tokenizer_dir)), sess), sess
