"""Ray Train stage: ``train_func(config)`` runs on every worker (DDP over gloo on CPU, nccl on GPU).

Each worker builds its model, reads its shard with ``ray.train.get_dataset_shard("train")``,
reports metrics with ``ray.train.report`` and, on rank 0, logs them to MLflow, evaluates at a fixed
15% mask and reports the final Hugging Face directory as the checkpoint.

Every rank runs exactly ``train.max_steps`` optimizer steps: shards are split equally and batches
are dropped at the end of an epoch, so no rank waits on a collective the others never reach.
"""
from __future__ import annotations

import logging
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ssl_core.config import Config, _build
from ssl_core.masking import MlmMasker
from ssl_core.model import MlmModule, build_mlm_model, evaluate_mlm, save_hf, unwrap
from ssl_core.tokenizer import load_fast, special_ids


def say(msg: str) -> None:
    """One progress line on the worker's stdout (Ray forwards it to the driver once)."""
    out = sys.__stdout__ or sys.stdout
    out.write(f"[sslpipe] {msg}\n")
    out.flush()


class _Reporter:
    """Metrics out of a worker: printed (rank 0), logged to MLflow (rank 0), reported to Ray."""

    def __init__(self, rank: int, mlflow_uri: str | None, run_id: str | None):
        self.rank = rank
        self.client = None
        self.run_id = run_id
        if rank == 0 and mlflow_uri and run_id:
            try:
                from mlflow.tracking import MlflowClient
                self.client = MlflowClient(tracking_uri=mlflow_uri)
            except Exception as e:  # pragma: no cover - mlflow missing on a bare GPU box
                say(f"MLflow logging from the worker disabled: {e}")

    def log(self, metrics: dict, step: int) -> None:
        if self.client is None:
            return
        from mlflow.entities import Metric
        ts = int(time.time() * 1000)
        try:
            self.client.log_batch(self.run_id, metrics=[
                Metric(k, float(v), ts, step) for k, v in metrics.items()
                if isinstance(v, (int, float)) and math.isfinite(float(v))])
        except Exception as e:
            say(f"could not log metrics to MLflow at step {step}: {e}")


def _lr_lambda(warmup: int, total: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))
    return f


def _allreduce_sum(t: torch.Tensor) -> torch.Tensor:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(t)
    return t


def _epochs(shard, batch_size: int):
    """Batches of the shard forever (one pass per epoch), numpy dicts."""
    epoch = 0
    while True:
        n = 0
        for batch in shard.iter_batches(batch_size=batch_size, drop_last=True, batch_format="numpy",
                                        prefetch_batches=2):
            n += 1
            yield epoch, batch
        if n == 0:
            raise RuntimeError(
                f"the training data yields no full batch of {batch_size} sequences per worker: "
                "use a larger corpus or a smaller train.batch_size")
        epoch += 1


def train_func(config: dict) -> None:
    """Per-worker training loop. ``config``: {"cfg": Config dict, "tokenizer_dir", "mlflow_uri",
    "run_id"}."""
    import ray.train
    import ray.train.torch

    logging.getLogger("ray.train").setLevel(logging.WARNING)   # no per-report INFO lines
    cfg: Config = _build(Config, config["cfg"])
    tc = cfg.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(tc.seed)
    np.random.seed(tc.seed)
    torch.set_num_threads(max(1, int(tc.cpus_per_worker)))

    tok = load_fast(config["tokenizer_dir"])
    sp = special_ids(tok)
    hf = build_mlm_model(cfg.model, tok.get_vocab_size(), cfg.data.max_seq_len, sp["pad"])
    model = ray.train.torch.prepare_model(MlmModule(hf))
    device = ray.train.torch.get_device()
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(tc.warmup_steps, tc.max_steps))
    rep = _Reporter(rank, config.get("mlflow_uri"), config.get("run_id"))
    masker = MlmMasker(tok.get_vocab_size(), sp["mask"], tuple(sorted(set(sp.values()))))

    val_rows = None
    if rank == 0:
        val_shard = ray.train.get_dataset_shard("val")
        val_rows = [b["input_ids"] for b in val_shard.iter_batches(batch_size=256, batch_format="numpy")]
        before = evaluate_mlm(model, val_rows, masker, sp["pad"])
        rep.log({f"{k}_initial": v for k, v in before.items()}, 0)
        say(f"eval before training: mlm_loss {before['eval_mlm_loss']:.3f} "
              f"mlm_acc {before['eval_mlm_accuracy']:.3f} over {before['eval_tokens']} masked tokens")

    shard = ray.train.get_dataset_shard("train")
    batches = _epochs(shard, tc.batch_size)
    model.train()
    t0 = t_win = time.perf_counter()
    win = torch.zeros(5, dtype=torch.float64)   # loss*n, correct, n, real tokens, data wait s
    epoch = 0
    for step in range(1, tc.max_steps + 1):
        t_wait = time.perf_counter()
        epoch, batch = next(batches)
        waited = time.perf_counter() - t_wait
        x = torch.from_numpy(batch["input_ids"].astype(np.int64)).to(device, non_blocking=True)  # (B, T)
        y = torch.from_numpy(batch["labels"].astype(np.int64)).to(device, non_blocking=True)     # (B, T)
        attn = (x != sp["pad"]).long()
        loss, m = model(x, attn, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        sched.step()
        n = float(m["mlm_count"])
        win += torch.tensor([loss.item() * n, float(m["mlm_correct"]), n,
                             float(batch["num_tokens"].sum()), waited], dtype=torch.float64)

        if step % tc.log_every == 0 or step == tc.max_steps:
            g = _allreduce_sum(win.clone())
            dt = time.perf_counter() - t_win
            metrics = {
                "step": step, "epoch": epoch,
                "loss": g[0].item() / max(1.0, g[2].item()),
                "mlm_accuracy": g[1].item() / max(1.0, g[2].item()),
                "tokens_per_s": g[3].item() / dt,
                "data_wait_frac": g[4].item() / world / dt,
                "lr": sched.get_last_lr()[0],
            }
            win.zero_()
            t_win = time.perf_counter()
            if rank == 0:
                elapsed = time.perf_counter() - t0
                say(f"step {step}/{tc.max_steps} | loss {metrics['loss']:.4f} | "
                      f"mlm_acc {metrics['mlm_accuracy']:.3f} | {metrics['tokens_per_s']:,.0f} tok/s | "
                    f"lr {metrics['lr']:.2e} | {elapsed:.0f}s")
                rep.log({k: v for k, v in metrics.items() if k != "step"}, step)
            if step < tc.max_steps:
                ray.train.report(metrics)

    final = dict(metrics)
    if rank == 0:
        after = evaluate_mlm(model, val_rows, masker, sp["pad"])
        final.update(after)
        rep.log(after, tc.max_steps)
        say(f"eval after training: mlm_loss {after['eval_mlm_loss']:.3f} "
            f"mlm_acc {after['eval_mlm_accuracy']:.3f}")
        with tempfile.TemporaryDirectory() as d:
            save_hf(unwrap(model), config["tokenizer_dir"], Path(d) / "model")
            ray.train.report(final, checkpoint=ray.train.Checkpoint.from_directory(d))
    else:
        ray.train.report(final)


def fit(cfg: Config, train_ds, val_ds, tokenizer_dir: str, storage_path: str, run_name: str,
        mlflow_uri: str | None, run_id: str | None):
    """Run ``train_func`` on ``cfg.train.num_workers`` Ray Train workers; returns the Result."""
    import ray.train
    from ray.train import CheckpointConfig, DataConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        train_func,
        train_loop_config={"cfg": cfg.to_dict(), "tokenizer_dir": str(tokenizer_dir),
                           "mlflow_uri": mlflow_uri, "run_id": run_id},
        scaling_config=ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu,
                                     resources_per_worker={"CPU": cfg.train.cpus_per_worker}),
        datasets={"train": train_ds, "val": val_ds},
        dataset_config=DataConfig(datasets_to_split=["train"]),
        run_config=RunConfig(name=run_name, storage_path=str(storage_path),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    return trainer.fit()
