"""Training batches built in the worker, every epoch, from documents tokenized once per run.

    batches = train_batches(cfg, builder, epoch_documents)   # epoch_documents(epoch) -> doc groups
    val = val_batches(builder, documents, max_rows)          # held-out rows, eval-masked, capped

The expensive work (reading, cleaning, sentence splitting, tokenizing) happens once, before
training (Ray Data, or ``local_documents`` without Ray). What changes every epoch is cheap numpy
work done here, as the trainer consumes it: packing and NSP pairs (``ExampleBuilder.rows``), the
augmented view pairs (``ExampleBuilder.views``), and, in the step, the MLM masks. Nothing runs
ahead of the trainer.

A batch holds ``train.batch_size`` rows (MLM / NSP) and ``contrastive.batch_size`` view pairs
(contrastive), each from its own buffer: rows and sentences come from the same documents at
their own rates, so each buffer is capped (``data.shuffle_buffer`` plus eight batches) and the
excess of the faster one is dropped at random (counted in ``dropped``). With a shuffle buffer,
batches are drawn at random from a full buffer; the draws are seeded, so a resumed run rebuilds
the same batches.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator

import numpy as np

from ssl_core.config import Config
from ssl_core.examples import ExampleBuilder

DocGroups = Iterable[dict]


class _Buffer:
    """Rows (dict of equal-length arrays) with random or FIFO draws and a size cap."""

    def __init__(self, batch: int, shuffle: int, rng: np.random.Generator):
        self.batch, self.shuffle, self.rng = batch, shuffle, rng
        self.cap = shuffle + 8 * batch
        self.cols: dict[str, np.ndarray] = {}
        self.dropped = 0

    def __len__(self) -> int:
        return len(next(iter(self.cols.values()))) if self.cols else 0

    def add(self, part: dict) -> None:
        if not part or not len(next(iter(part.values()))):
            return
        self.cols = {k: np.concatenate([self.cols[k], v]) if k in self.cols else v for k, v in part.items()}

    def trim(self) -> None:
        """Keep at most ``cap`` rows (a random subset of the excess is dropped)."""
        n = len(self)
        if n > self.cap:
            keep = np.sort(self.rng.choice(n, self.cap, replace=False))
            self.cols = {k: v[keep] for k, v in self.cols.items()}
            self.dropped += n - self.cap

    def ready(self, final: bool) -> bool:
        return len(self) >= (self.batch if final else max(self.batch, self.shuffle))

    def take(self) -> dict:
        n = len(self)
        idx = self.rng.choice(n, self.batch, replace=False) if self.shuffle else np.arange(self.batch)
        out = {k: v[idx] for k, v in self.cols.items()}
        keep = np.ones(n, dtype=bool)
        keep[idx] = False
        self.cols = {k: v[keep] for k, v in self.cols.items()}
        return out


VIEW_BUCKET = 8


def _trim_views(pairs: dict, pad_id: int) -> dict:
    """View columns cut to the longest view of the batch (less padding through the encoder),
    rounded up to a multiple of ``VIEW_BUCKET``: the encoder's GEMMs then see a few shapes, not a
    new one per batch (each new shape costs oneDNN a kernel; see ``ssl_core.objectives.mlm``)."""
    width = pairs["view_a"].shape[1]
    n = int(max((pairs["view_a"] != pad_id).sum(1).max(), (pairs["view_b"] != pad_id).sum(1).max()))
    n = min(width, -(-n // VIEW_BUCKET) * VIEW_BUCKET)
    return dict(pairs, view_a=pairs["view_a"][:, :n], view_b=pairs["view_b"][:, :n])


def by_group(batches: DocGroups) -> Iterator[dict]:
    """Tokenized documents regrouped by their ``group`` column (the read group they came from,
    which may be cut across batches), so rows are built from the same groups wherever the
    documents are read; batches without the column pass as they are."""
    pending: dict | None = None
    for batch in batches:
        if "group" not in batch:
            yield batch
            continue
        g = np.asarray(batch["group"])
        if not len(g):
            continue
        cuts = np.flatnonzero(g[1:] != g[:-1]) + 1
        for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(g)]):
            run = {k: v[lo:hi] for k, v in batch.items()}
            if pending is not None and pending["group"][0] == run["group"][0]:
                pending = {k: np.concatenate([pending[k], run[k]]) for k in run}
                continue
            if pending is not None:
                yield pending
            pending = run
    if pending is not None:
        yield pending


def train_batches(cfg: Config, b: ExampleBuilder, epoch_documents: Callable[[int], DocGroups],
                  rank: int = 0) -> Iterator[dict]:
    """A worker's training batches: ``data.max_epochs`` passes over its tokenized documents, rows
    and view pairs built per document group as consumed (draws seeded by train.seed and rank)."""
    rng = np.random.default_rng([cfg.train.seed, rank, 0x5EED])
    bufs = {}
    if b.makes_rows:
        bufs["rows"] = _Buffer(cfg.train.batch_size, cfg.data.shuffle_buffer, rng)
    if b.chain_a is not None:
        bufs["views"] = _Buffer(cfg.contrastive.batch_size, cfg.data.shuffle_buffer, rng)

    def batches(final: bool) -> Iterator[dict]:
        while all(buf.ready(final) for buf in bufs.values()):
            out = {}
            for name, buf in bufs.items():
                part = buf.take()
                out.update(_trim_views(part, b.sp["pad"]) if name == "views" else part)
            yield out

    for epoch in range(cfg.data.max_epochs):
        for docs in by_group(epoch_documents(epoch)):
            if not len(docs["id"]):
                continue
            if "rows" in bufs:
                bufs["rows"].add(b.rows(docs, epoch)[0])
            if "views" in bufs:
                bufs["views"].add(b.views(docs, epoch)[0])
            yield from batches(final=False)
            for buf in bufs.values():
                buf.trim()
    yield from batches(final=True)


def val_batches(b: ExampleBuilder, documents: DocGroups, max_rows: int,
                batch_size: int = 64) -> list[dict]:
    """Held-out rows (epoch 0) of the given tokenized documents, masked at the evaluation ratio,
    at most ``max_rows``, in batches; empty when no objective reads rows."""
    if not b.makes_rows:
        return []
    parts, n = [], 0
    for docs in by_group(documents):
        if n >= max_rows:
            break
        rows, _ = b.rows(docs, 0)
        if len(rows["input_ids"]):
            parts.append(rows)
            n += len(rows["input_ids"])
    if not parts:
        return []
    rows = b.mask_for_eval({k: np.concatenate([p[k] for p in parts])[:max_rows] for k in parts[0]})
    return [{k: v[i:i + batch_size] for k, v in rows.items()} for i in range(0, len(rows["input_ids"]), batch_size)]


def batch_epoch(batch: dict) -> int:
    """The newest epoch a batch's rows or view pairs come from."""
    return int(max(int(np.max(batch[k])) for k in ("epoch", "view_epoch") if k in batch))
