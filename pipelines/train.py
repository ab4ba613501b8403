"""Ray Train glue: ``fit`` runs ``ssl_core.training.train_loop`` on ``train.num_workers`` workers
(``TorchTrainer``, DDP over gloo on CPU, gradients through shared memory between the CPU workers of
one host, or nccl on GPU) with a :class:`RaySession`: worker i reads
its own part of the tokenized training documents (dataset ``train_i``, not split by Ray: no epoch
barrier between workers) and builds its batches from them, rank 0 the held-out ``val`` documents;
``ray.train.report`` for metrics and checkpoints, ``ray.train.get_checkpoint`` to resume, and
metrics to MLflow from rank 0.

The same loop runs in one process without Ray or MLflow (a GPU box that has torch only):

    python -m pipelines.train --config tiny --set train.max_steps=50
"""
from __future__ import annotations

import contextlib
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import torch

from ssl_core.config import Config, parse_amounts
from ssl_core.log import say
from ssl_core.training import TrainJob, Tracking, data, train_loop


class RaySession:
    """The ``Session`` of a Ray Train worker."""

    def __init__(self, job: TrainJob):
        import ray.train
        import ray.train.torch

        self._rt = ray.train
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.dedicated = True                   # a Train worker's process: its threads are ours to order
        self.device = ray.train.torch.get_device()
        self._cfg = job.cfg
        from pipelines.data import quiet_data_context
        quiet_data_context()                  # the worker iterates its documents every epoch
        self._log = None
        if self.rank == 0 and job.tracking is not None:
            from pipelines.registry import MetricLogger
            self._log = MetricLogger(job.tracking.uri, job.tracking.run_id)

    def prepare(self, module: torch.nn.Module) -> torch.nn.Module:
        return prepare_model(module, self._cfg, self.device, self.world)

    def _documents(self, name: str, group: int):
        shard = self._rt.get_dataset_shard(name)
        return lambda epoch=0: shard.iter_batches(batch_size=group, batch_format="numpy", prefetch_batches=1)

    def train_batches(self, ts) -> Iterator[dict]:
        docs = self._documents(f"train_{self.rank}", ts.cfg.data.batch_rows)
        return data.train_batches(ts.cfg, ts.builder, docs, self.rank)

    def val_batches(self, ts) -> list[dict]:
        docs = self._documents("val", ts.cfg.data.batch_rows)
        return data.val_batches(ts.builder, docs(), ts.cfg.eval.heldout_rows)

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


def prepare_model(module: torch.nn.Module, cfg: Config, device: torch.device, world: int) -> torch.nn.Module:
    """The module as a Train worker trains it: DDP across workers (Ray's ``prepare_model``) with
    the gradients as views of DDP's buckets (no copy into and out of them each step), averaged
    through shared memory when the workers are CPU processes of one host (``train.ddp_shm``).
    Measured with two one-thread workers of the default model (2026-12-01, 4 interleaved rounds of
    20 steps): 239 ms per step with Ray's defaults, 231 with the views, 225 through shared memory,
    216 with one bucket (no DDP: 203); the allreduce of its 22 MB of gradients alone takes 8-9 ms
    through shared memory against gloo's 16-18."""
    import ray.train.torch
    from torch.nn.parallel import DistributedDataParallel

    from ssl_core.training.ddp import SharedMemoryAllReduce

    shm = world > 1 and device.type == "cpu" and cfg.train.ddp_shm
    kwargs: dict = {"gradient_as_bucket_view": True}
    if shm:
        # through shared memory a bucket is reduced while the step waits (no overlap to keep):
        # one bucket for all gradients syncs the workers once per step, not once per bucket
        # (216 vs 222 ms per step above), when /dev/shm can stage all of them
        numel = sum(p.numel() for p in module.parameters() if p.requires_grad)
        if SharedMemoryAllReduce.unusable(world, (world + 1) * numel * 4) is None:
            kwargs["bucket_cap_mb"] = numel * 4 / 2**20 + 1
    model = ray.train.torch.prepare_model(module, parallel_strategy_kwargs=kwargs)
    if shm and isinstance(model, DistributedDataParallel):
        hook = SharedMemoryAllReduce.attach(model, world, say=say)
        model.grad_sync = "shared memory" if hook is not None else "gloo"
    return model


def _quiet_report_lines() -> None:
    """Train V2 logs every ``ray.train.report`` at INFO on a logger named after its source file
    (not under ``ray.train``, so ``LoggingConfig`` does not reach it): progress lines are ours."""
    suffix = "/train/v2/_internal/execution/context.py"
    for name in list(logging.root.manager.loggerDict):
        if name.replace("\\", "/").endswith(suffix):
            logging.getLogger(name).setLevel(logging.WARNING)


def train_func(config: dict) -> None:
    """Ray Train entry point (one call per worker): ``config["job"]`` is the ``TrainJob``."""
    _quiet_report_lines()
    train_loop(config["job"], RaySession(config["job"]))


def worker_resources(cfg: Config) -> dict:
    """What one Train worker asks Ray for (``use_gpu`` adds the GPU)."""
    return {"CPU": cfg.train.cpus_per_worker,
            **parse_amounts(cfg.train.resources_per_worker, "train.resources_per_worker")}


def fit(cfg: Config, train_parts: list, val_ds, tokenizer_dir: str, storage_path: str, run_name: str,
        mlflow_uri: str | None, run_id: str | None, callbacks: list | None = None):
    """Run ``train_func`` on ``cfg.train.num_workers`` Ray Train workers, worker i on
    ``train_parts[i]`` (tokenized documents); returns the Result. Run again with the same
    ``storage_path`` and ``run_name`` and it resumes from the newest checkpoint there."""
    if len(train_parts) != cfg.train.num_workers:
        raise ValueError(f"{len(train_parts)} document parts for {cfg.train.num_workers} workers")
    from ray.train import (CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig,
                           ScalingConfig)
    from ray.train.torch import TorchTrainer

    from pipelines.data import carried

    tracking = Tracking(mlflow_uri, run_id) if mlflow_uri and run_id else None
    trainer = TorchTrainer(
        train_func,
        train_loop_config={"job": TrainJob(cfg, carried(tokenizer_dir), tracking)},
        scaling_config=ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu,
                                     resources_per_worker=worker_resources(cfg),
                                     placement_strategy=cfg.train.placement),
        datasets={**{f"train_{i}": p for i, p in enumerate(train_parts)}, "val": val_ds},
        dataset_config=DataConfig(datasets_to_split=[]),
        run_config=RunConfig(name=run_name, storage_path=str(storage_path),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
                             failure_config=FailureConfig(max_failures=cfg.train.max_failures),
                             # progress lines are ours; Train's per-report INFO lines are noise
                             logging_config=LoggingConfig(log_level="WARNING"),
                             callbacks=callbacks or None),
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
