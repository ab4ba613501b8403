"""Ray Train stage: ``train_func(config)`` runs on every worker (DDP over gloo on CPU, nccl on GPU).

Each worker builds its model, reads its shard with ``ray.train.get_dataset_shard("train")``,
reports metrics with ``ray.train.report`` and, on rank 0, logs them to MLflow, evaluates at a fixed
15% mask and reports the final Hugging Face directory as the checkpoint.

Masks are drawn here, per batch, from (seed, epoch, row) with the step's mask ratio (schedule);
Ray Data has already built the rows (tokens, word starts, NSP pairs, contrastive views).

Every rank runs the same number of optimizer steps: the stream is one pass over ``data.max_epochs``
epochs laid end to end, split equally with the last partial batch dropped, so all ranks stop at
``train.max_steps`` (or, all together, when the data runs out) and no rank waits on a collective the
others never reach.
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
from ssl_core.examples import ExampleBuilder
from ssl_core.masking import ratio_at, row_keys
from ssl_core.model import PretrainModule, build_mlm_model, evaluate_mlm, save_hf, unwrap


def say(msg: str) -> None:
    """One progress line on the worker's stdout (Ray forwards it to the driver once)."""
    out = sys.__stdout__ or sys.stdout
    out.write(f"[sslpipe] {msg}\n")
    out.flush()


class _Reporter:
    """Metrics out of rank 0 into the MLflow run the driver opened (when MLflow is installed)."""

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


NO_BATCH = "the training data yields no full batch"


def _to_tensors(batch: dict, device) -> dict:
    out = {}
    for k in ("input_ids", "labels", "token_type_ids", "view_a", "view_b", "nsp_label"):
        if k in batch:
            out[k] = torch.from_numpy(np.asarray(batch[k]).astype(np.int64)).to(device, non_blocking=True)
    return out


def train_func(config: dict) -> None:
    """Per-worker training loop. ``config``: {"cfg": Config dict, "tokenizer_dir", "mlflow_uri",
    "run_id"}."""
    import ray.train
    import ray.train.torch

    for name in ("ray.train", "ray.train.v2._internal.execution.context"):
        logging.getLogger(name).setLevel(logging.WARNING)         # no per-report INFO lines
    cfg: Config = _build(Config, config["cfg"])
    tc, mc, obj = cfg.train, cfg.masking, cfg.objectives
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(tc.seed)
    np.random.seed(tc.seed)
    torch.set_num_threads(max(1, int(tc.cpus_per_worker)))

    builder = ExampleBuilder(cfg, config["tokenizer_dir"])
    sp = builder.sp
    hf = build_mlm_model(cfg.model, builder.vocab_size, cfg.data.max_seq_len, sp["pad"])
    model = ray.train.torch.prepare_model(PretrainModule(
        hf, mlm=obj.mlm, nsp=obj.nsp, contrastive=obj.contrastive,
        temperature=cfg.contrastive.temperature, pad_id=sp["pad"]))
    device = ray.train.torch.get_device()
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(tc.warmup_steps, tc.max_steps))
    rep = _Reporter(rank, config.get("mlflow_uri"), config.get("run_id"))
    masker = builder.masker()

    val = None
    if rank == 0:
        val_shard = ray.train.get_dataset_shard("val")
        val = [(b["input_ids"], b["labels"])
               for b in val_shard.iter_batches(batch_size=256, batch_format="numpy")]
        before = evaluate_mlm(model, val, sp["pad"])
        rep.log({f"{k}_initial": v for k, v in before.items()}, 0)
        say(f"eval before training: mlm_loss {before['eval_mlm_loss']:.3f} "
            f"mlm_acc {before['eval_mlm_accuracy']:.3f} over {before['eval_tokens']} masked tokens")

    shard = ray.train.get_dataset_shard("train")
    # One pass over data.max_epochs epochs laid end to end; equal shards + drop_last: every rank
    # gets the same number of batches, so all stop at the same step.
    batches = iter(shard.iter_batches(batch_size=tc.batch_size, drop_last=True, batch_format="numpy",
                                      prefetch_batches=2, local_shuffle_buffer_size=cfg.data.shuffle_buffer or None,
                                      local_shuffle_seed=tc.seed + rank if cfg.data.shuffle_buffer else None))
    model.train()
    t0 = t_win = time.perf_counter()
    names = ["mlm_loss", "mlm_correct", "mlm_count", "nsp_loss", "nsp_correct", "nsp_count",
             "con_loss", "con_correct", "con_count", "loss", "tokens", "slots", "wait", "steps"]
    win = torch.zeros(len(names), dtype=torch.float64)
    epoch, step, metrics = 0, 0, {}
    while step < tc.max_steps:
        t_wait = time.perf_counter()
        batch = next(batches, None)
        waited = time.perf_counter() - t_wait
        if batch is None:
            if step == 0:
                raise RuntimeError(f"{NO_BATCH} of {tc.batch_size} sequences per worker: use a larger "
                                   "corpus or a smaller train.batch_size")
            if rank == 0:
                say(f"data exhausted after {cfg.data.max_epochs} epochs at step {step}: stopping")
            break
        step += 1
        epoch = int(batch["epoch"].max())
        if obj.mlm:
            ratio = ratio_at(mc.schedule, mc.ratio, mc.ratio_end, (step - 1) / max(1, tc.max_steps - 1))
            batch["input_ids"], batch["labels"] = masker.keyed(
                batch["input_ids"], seed=mc.seed, keys=row_keys(batch["input_ids"], mc.seed, batch["epoch"]),
                word_start=batch["word_start"].astype(bool), ratio=ratio)
        loss, m = model(_to_tensors(batch, device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        sched.step()
        vals = {k: float(v) for k, v in m.items()}
        for k in ("mlm", "nsp", "con"):
            if f"{k}_loss" in vals:
                vals[f"{k}_loss"] *= vals[f"{k}_count"]
        vals.update(loss=loss.item(), tokens=float(batch["num_tokens"].sum()),
                    slots=float(batch["input_ids"].size), wait=waited, steps=1.0)
        win += torch.tensor([vals.get(k, 0.0) for k in names], dtype=torch.float64)

        if step % tc.log_every == 0 or step == tc.max_steps:
            g = dict(zip(names, _allreduce_sum(win.clone()).tolist()))
            dt = time.perf_counter() - t_win
            win.zero_()
            t_win = time.perf_counter()
            metrics = {"step": step, "epoch": epoch, "loss": g["loss"] / max(1.0, g["steps"]),
                       "tokens_per_s": g["tokens"] / dt, "data_wait_frac": g["wait"] / world / dt,
                       "packing_efficiency": g["tokens"] / max(1.0, g["slots"]),
                       "lr": sched.get_last_lr()[0]}
            if obj.mlm:
                metrics.update(mlm_loss=g["mlm_loss"] / max(1.0, g["mlm_count"]),
                               mlm_accuracy=g["mlm_correct"] / max(1.0, g["mlm_count"]), mask_ratio=ratio)
            if obj.nsp:
                metrics.update(nsp_loss=g["nsp_loss"] / max(1.0, g["nsp_count"]),
                               nsp_accuracy=g["nsp_correct"] / max(1.0, g["nsp_count"]))
            if obj.contrastive:
                metrics.update(contrastive_loss=g["con_loss"] / max(1.0, g["con_count"]),
                               contrastive_accuracy=g["con_correct"] / max(1.0, g["con_count"]))
            if rank == 0:
                parts = [f"loss {metrics['loss']:.4f}"]
                parts += [f"{k} {metrics[k]:.3f}" for k in ("mlm_accuracy", "nsp_accuracy",
                                                            "contrastive_accuracy") if k in metrics]
                say(f"step {step}/{tc.max_steps} | " + " | ".join(parts) + f" | "
                    f"{metrics['tokens_per_s']:,.0f} tok/s | lr {metrics['lr']:.2e} | "
                    f"{time.perf_counter() - t0:.0f}s")
                rep.log({k: v for k, v in metrics.items() if k != "step"}, step)
            if step < tc.max_steps:
                ray.train.report(metrics)

    final = dict(metrics, step=step)
    if rank == 0:
        after = evaluate_mlm(model, val, sp["pad"])
        final.update(after)
        rep.log(after, step)
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
