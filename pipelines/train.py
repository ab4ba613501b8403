"""Ray Train glue: ``fit`` runs ``ssl_core.training.train_loop`` on ``train.num_workers`` workers
(``TorchTrainer``, DDP over gloo on CPU or nccl on GPU) with a :class:`RaySession`: the worker's
shard of the ``train`` dataset, the ``val`` rows on rank 0, ``ray.train.report`` for metrics and
checkpoints, ``ray.train.get_checkpoint`` to resume, and metrics to MLflow from rank 0.

The same loop runs in one process without Ray or MLflow (a GPU box that has torch only):

    python -m pipelines.train --config tiny --set train.max_steps=50
"""
from __future__ import annotations

import contextlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import torch

from ssl_core.config import Config
from ssl_core.training import TrainJob, Tracking, train_loop


class RaySession:
    """The ``Session`` of a Ray Train worker."""

    def __init__(self, job: TrainJob):
        import ray.train
        import ray.train.torch

        self._rt = ray.train
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self._log = None
        if self.rank == 0 and job.tracking is not None:
            from pipelines.registry import MetricLogger
            self._log = MetricLogger(job.tracking.uri, job.tracking.run_id)

    def prepare(self, module: torch.nn.Module) -> torch.nn.Module:
        import ray.train.torch
        return ray.train.torch.prepare_model(module)

    def train_batches(self, batch_size: int, shuffle_buffer: int, seed: int) -> Iterator[dict]:
        shard = self._rt.get_dataset_shard("train")
        return iter(shard.iter_batches(
            batch_size=batch_size, drop_last=True, batch_format="numpy", prefetch_batches=2,
            local_shuffle_buffer_size=shuffle_buffer or None,
            local_shuffle_seed=(seed + self.rank) if shuffle_buffer else None))

    def val_batches(self) -> list[dict]:
        return list(self._rt.get_dataset_shard("val").iter_batches(batch_size=256, batch_format="numpy"))

    @contextlib.contextmanager
    def latest_checkpoint(self):
        ckpt = self._rt.get_checkpoint()
        if ckpt is None:
            yield None
        else:
            with ckpt.as_directory() as d:
                yield Path(d)

    def report(self, metrics: dict, checkpoint_dir: str | None = None) -> None:
        ckpt = self._rt.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        self._rt.report(metrics, checkpoint=ckpt)

    def log_metrics(self, metrics: dict, step: int) -> None:
        if self._log is not None:
            self._log.log(metrics, step)

    def close(self) -> None:
        if self._log is not None:
            self._log.flush()


def train_func(config: dict) -> None:
    """Ray Train entry point (one call per worker): ``config["job"]`` is the ``TrainJob``."""
    train_loop(config["job"], RaySession(config["job"]))


def fit(cfg: Config, train_ds, val_ds, tokenizer_dir: str, storage_path: str, run_name: str,
        mlflow_uri: str | None, run_id: str | None):
    """Run ``train_func`` on ``cfg.train.num_workers`` Ray Train workers; returns the Result.
    Run again with the same ``storage_path`` and ``run_name`` and it resumes from the newest
    checkpoint there."""
    from ray.train import (CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig,
                           ScalingConfig)
    from ray.train.torch import TorchTrainer

    tracking = Tracking(mlflow_uri, run_id) if mlflow_uri and run_id else None
    trainer = TorchTrainer(
        train_func,
        train_loop_config={"job": TrainJob(cfg, str(tokenizer_dir), tracking)},
        scaling_config=ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu,
                                     resources_per_worker={"CPU": cfg.train.cpus_per_worker}),
        datasets={"train": train_ds, "val": val_ds},
        dataset_config=DataConfig(datasets_to_split=["train"]),
        run_config=RunConfig(name=run_name, storage_path=str(storage_path),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
                             failure_config=FailureConfig(max_failures=cfg.train.max_failures),
                             # progress lines are ours; Train's per-report INFO lines are noise
                             logging_config=LoggingConfig(log_level="WARNING")),
    )
    return trainer.fit()


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.train``: the training loop alone, in this process, without Ray."""
    import argparse

    from pipelines.configs import load_config
    from ssl_core.text import resolve_corpus, sample_documents
    from ssl_core.tokenizer import train_wordpiece
    from ssl_core.training import run_local

    p = argparse.ArgumentParser(prog="python -m pipelines.train", description=main.__doc__)
    p.add_argument("--config", default="tiny")
    p.add_argument("--set", action="append", default=[], dest="overrides")
    p.add_argument("--out", default=None, help="checkpoint directory (default: a temporary one)")
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        tok = cfg.tokenizer.path or cfg.model.init_from
        if not tok:
            texts = sample_documents(resolve_corpus(cfg.data.corpus, cfg.data.text_field),
                                     cfg.tokenizer.sample_documents, cfg.data.min_chars)
            tok = str(train_wordpiece(texts, out / "tokenizer", cfg.tokenizer.vocab_size,
                                      cfg.tokenizer.lowercase, cfg.tokenizer.min_frequency,
                                      model_max_length=cfg.data.max_seq_len))
        final, sess = run_local(cfg, tok, out_dir=out / "checkpoints", device=args.device)
        print(json.dumps({k: v for k, v in final.items() if isinstance(v, (int, float))}, indent=2))
        if sess.final_dir and args.out:
            print(sess.final_dir / "model")
    return 0


if __name__ == "__main__":
    sys.exit(main())
