"""Where the training loop runs: a ``Session`` gives it its rank, device, data, checkpoints and a
place for metrics. ``pipelines.train.RaySession`` is the Ray Train one; ``LocalSession`` runs the
loop in this process without Ray (a GPU box with torch only, benchmarks, tests).

Both build batches the same way (``training.data``) from the tokenized documents they hold: the
Ray one from its Ray Data shard, the local one from lists in memory (or given ready batches)."""
from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import ContextManager, Iterable, Iterator, Protocol

import torch

from ssl_core.training import data


class Session(Protocol):
    rank: int
    world: int
    device: torch.device
    dedicated: bool          # the process exists for this training only (a Ray Train worker)

    def prepare(self, module: torch.nn.Module) -> torch.nn.Module:
        """The module to train: moved to the device (DDP-wrapped across workers)."""

    def train_batches(self, ts) -> Iterator[dict]:
        """This worker's training batches (numpy dicts), epochs end to end."""

    def val_batches(self, ts) -> list[dict]:
        """Held-out rows masked at the evaluation ratio (asked on rank 0)."""

    def latest_checkpoint(self) -> ContextManager[Path | None]:
        """The checkpoint directory to resume from, or None."""

    def report(self, metrics: dict, checkpoint_dir: str | None = None) -> None:
        """Metrics of a log window or of the end (and, from rank 0, a checkpoint to keep)."""

    def log_metrics(self, metrics: dict, step: int) -> None:
        """Metrics to the run's tracker (rank 0); never blocks training."""

    def close(self) -> None:
        """Wait for what ``log_metrics`` sent."""


class LocalSession:
    """One process, no Ray: ready batches, or batches built from tokenized ``documents`` /
    ``val_docs`` (lists of document groups); checkpoints in ``out_dir`` (none without)."""

    def __init__(self, train_batches: Iterable[dict] | None = None, val_batches: list[dict] | None = None,
                 out_dir: str | Path | None = None, device: str | None = None,
                 resume: bool = False, keep: int = 2):
        self.rank, self.world = 0, 1
        self.dedicated = False                  # the caller's process: its threads are left alone
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._train, self._val = train_batches, val_batches
        self.documents: list[dict] = []
        self.val_docs: list[dict] = []
        self.out_dir = Path(out_dir) if out_dir else None
        self.resume, self.keep = resume, keep
        self.reported: list[dict] = []         # what the loop reported (checkpoints, the end)
        self.logged: list[dict] = []           # every metric window (what MLflow gets under Ray)
        self.final_dir: Path | None = None

    def prepare(self, module: torch.nn.Module) -> torch.nn.Module:
        return module.to(self.device)

    def train_batches(self, ts) -> Iterator[dict]:
        if self._train is not None:
            return iter(self._train)
        return data.train_batches(ts.cfg, ts.builder, lambda epoch: self.documents, self.rank)

    def val_batches(self, ts) -> list[dict]:
        if self._val is not None:
            return list(self._val)
        return data.val_batches(ts.builder, self.val_docs, ts.cfg.eval.heldout_rows)

    @contextlib.contextmanager
    def latest_checkpoint(self):
        ckpts = sorted(self.out_dir.glob("checkpoint_*")) if (self.resume and self.out_dir) else []
        yield ckpts[-1] if ckpts else None

    def report(self, metrics: dict, checkpoint_dir: str | None = None) -> None:
        self.reported.append(dict(metrics))
        if checkpoint_dir and self.out_dir:
            dest = self.out_dir / f"checkpoint_{int(metrics['step']):08d}"
            if dest.exists():
                shutil.rmtree(dest)
            shutil.copytree(checkpoint_dir, dest)
            self.final_dir = dest
            for old in sorted(self.out_dir.glob("checkpoint_*"))[:-self.keep]:
                shutil.rmtree(old)

    def log_metrics(self, metrics: dict, step: int) -> None:
        self.logged.append(dict(metrics, step=step))

    def close(self) -> None:
        pass
