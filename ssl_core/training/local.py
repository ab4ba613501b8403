"""The training loop in this process, without Ray: rows built by the same reader and builder as
the Ray Data stage (``document_batches`` → ``ExampleBuilder.build_split``, group by group), batched
as a worker sees them.

    final, session = run_local(cfg, tokenizer_dir)                  # train, evaluate, export
    for batch in local_batches(cfg, tokenizer_dir, "val", batch_size=64, max_rows=512): ...

``python -m pipelines.train --config tiny`` is the command-line form.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ssl_core.config import Config
from ssl_core.examples import ExampleBuilder
from ssl_core.text import document_batches, per_shard_limit, resolve_corpus
from ssl_core.training.job import TrainJob
from ssl_core.training.loop import train_loop
from ssl_core.training.session import LocalSession


def local_rows(cfg: Config, tokenizer_dir: str, split: str = "train", epochs: int = 1) -> Iterator[dict]:
    """Rows of ``split`` group by group (one group = ``data.batch_rows`` documents read), epochs
    end to end; validation rows are masked at the evaluation ratio."""
    b = ExampleBuilder(cfg, tokenizer_dir)
    shards = resolve_corpus(cfg.data.corpus, cfg.data.text_field)
    limit = per_shard_limit(cfg.data.max_documents, len(shards))
    for epoch in range(epochs):
        for shard in shards:
            for docs in document_batches(shard, cfg.data, limit=limit):
                rows, _ = b.build_split(docs, split, epoch)
                if len(rows["input_ids"]):
                    yield rows


def rebatch(rows: Iterable[dict], batch_size: int, max_rows: int = 0,
            drop_last: bool = True) -> Iterator[dict]:
    """Fixed-size batches from variable-size row groups, at most ``max_rows`` rows (0 = all); the
    last partial batch is dropped unless ``drop_last`` is False."""
    buf: dict[str, list] = {}
    n = 0
    for part in rows:
        for k, v in part.items():
            buf.setdefault(k, []).extend(v)
        while len(buf["input_ids"]) >= batch_size:
            yield {k: np.stack(v[:batch_size]) for k, v in buf.items()}
            for v in buf.values():
                del v[:batch_size]
            n += batch_size
            if max_rows and n >= max_rows:
                return
    rest = min(len(buf.get("input_ids", [])), max_rows - n if max_rows else len(buf.get("input_ids", [])))
    if not drop_last and rest > 0:
        yield {k: np.stack(v[:rest]) for k, v in buf.items()}


def local_batches(cfg: Config, tokenizer_dir: str, split: str = "train", epochs: int = 1,
                  batch_size: int | None = None, max_rows: int = 0) -> Iterator[dict]:
    """Batches of ``batch_size`` (default ``train.batch_size``) rows, at most ``max_rows``;
    training drops the last partial batch (every step is a full batch), validation keeps it."""
    return rebatch(local_rows(cfg, tokenizer_dir, split, epochs),
                   batch_size or cfg.train.batch_size, max_rows, drop_last=split != "val")


def run_local(cfg: Config, tokenizer_dir: str, train_batches: Iterable[dict] | None = None,
              val_batches: list[dict] | None = None, out_dir: str | Path | None = None,
              device: str | None = None, resume: bool = False) -> tuple[dict, LocalSession]:
    """``train_loop`` in this process. Batches default to ``local_batches`` (all epochs for
    training, 512 held-out rows for validation); checkpoints go to ``out_dir`` when given."""
    if train_batches is None:
        train_batches = local_batches(cfg, tokenizer_dir, "train", cfg.data.max_epochs)
    if val_batches is None:
        val_batches = list(local_batches(cfg, tokenizer_dir, "val", 1, batch_size=64, max_rows=512))
    sess = LocalSession(train_batches, val_batches, out_dir, device, resume, cfg.train.keep_checkpoints)
    return train_loop(TrainJob(cfg, str(tokenizer_dir)), sess), sess
