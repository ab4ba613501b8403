"""Training stage: ``train_loop(config, session)`` is the per-worker loop.

Under Ray Train (``fit`` → ``train_func``) the session is a :class:`RaySession`: DDP over gloo on
CPU or nccl on GPU, the shard of ``ray.train.get_dataset_shard("train")``, ``ray.train.report`` for
metrics and checkpoints, ``ray.train.get_checkpoint`` to resume. Without Ray (a GPU box that has
torch but not Ray, a benchmark) the same loop runs in one process with a :class:`LocalSession`:

    python -m pipelines.train --config tiny --steps 50      # no Ray, no MLflow needed

Masks are drawn here, per batch, from (seed, epoch, row) with the step's mask ratio (schedule);
the data stage has already built the rows (tokens, word starts, NSP pairs, contrastive views).

Every rank runs the same number of optimizer steps: the stream is one pass over ``data.max_epochs``
epochs laid end to end, split equally with the last partial batch dropped, and the time budget
(``train.max_minutes``) is agreed on by all ranks each step, so no rank waits on a collective the
others never reach.

A checkpoint holds the training module (encoder + heads) as safetensors, the optimizer state,
the step, the batches consumed (data position), the elapsed time and the RNG states; resuming
skips the consumed batches and continues the LR schedule where it stopped.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from ssl_core.config import Config, _build
from ssl_core.examples import ExampleBuilder
from ssl_core.masking import IGNORE_INDEX, ratio_at, row_keys
from ssl_core.objectives.base import WINDOW_KEY
from ssl_core.model import (PretrainModule, attention_impl, build_model, evaluate_mlm, evaluate_nsp,
                            set_attention)
from ssl_core.perf import choose_dtype, encoder_flops, measure_peak_flops

NO_BATCH = "the training data yields no full batch"
TENSOR_KEYS = ("input_ids", "labels", "token_type_ids", "view_a", "view_b", "nsp_label")


def say(msg: str) -> None:
    """One progress line on the worker's stdout (Ray forwards it to the driver once)."""
    out = sys.__stdout__ or sys.stdout
    out.write(f"[sslpipe] {msg}\n")
    out.flush()


class _Reporter:
    """Metrics out of rank 0 into the MLflow run the driver opened (when MLflow is installed)."""

    def __init__(self, rank: int, mlflow_uri: str | None, run_id: str | None):
        self.client = None
        self.run_id = run_id
        self.pending: list = []
        if rank == 0 and mlflow_uri and run_id:
            try:
                from mlflow.tracking import MlflowClient
                self.client = MlflowClient(tracking_uri=mlflow_uri)
            except Exception as e:  # mlflow missing on a bare GPU box
                say(f"MLflow logging from the worker disabled: {e}")

    def log(self, metrics: dict, step: int) -> None:
        if self.client is None:
            return
        from mlflow.entities import Metric
        ts = int(time.time() * 1000)
        try:   # asynchronous: the training step does not wait on the tracking store
            self.pending.append(self.client.log_batch(self.run_id, metrics=[
                Metric(k, float(v), ts, step) for k, v in metrics.items()
                if isinstance(v, (int, float)) and math.isfinite(float(v))], synchronous=False))
        except Exception as e:
            say(f"could not log metrics to MLflow at step {step}: {e}")

    def flush(self) -> None:
        for op in self.pending:
            try:
                op.wait()
            except Exception as e:
                say(f"could not log metrics to MLflow: {e}")
        self.pending.clear()


def lr_factor(progress: float, warmup: float, schedule: str) -> float:
    """LR multiplier at training progress in [0, 1] (steps or time budget, whichever is further);
    ``warmup`` is the warmup's share of the progress."""
    if progress < warmup:
        return max(progress / warmup, 1e-3)
    if schedule == "constant":
        return 1.0
    rest = min(1.0, (progress - warmup) / max(1e-9, 1.0 - warmup))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * rest))
    return max(0.0, 1.0 - rest)


def _dist() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _allreduce(t: torch.Tensor, op=None) -> torch.Tensor:
    if _dist():
        torch.distributed.all_reduce(t, op=op or torch.distributed.ReduceOp.SUM)
    return t


def to_tensors(batch: dict, device) -> dict:
    return {k: torch.from_numpy(np.asarray(batch[k]).astype(np.int64)).to(device, non_blocking=True)
            for k in TENSOR_KEYS if k in batch}


def window_counts(window: list[dict]) -> dict[str, float]:
    """This rank's scored items per objective over all micro-batches of one optimizer step: each
    micro-batch's loss is its sum over these (then over all ranks), so accumulating k micro-batches
    gives the gradient of one batch k times larger even when their mask counts differ."""
    out = {"mlm": 0.0, "nsp": 0.0, "contrastive": 0.0}
    for b in window:
        if "labels" in b:
            out["mlm"] += float((np.asarray(b["labels"]) != IGNORE_INDEX).sum())
        if "nsp_label" in b:
            out["nsp"] += float((np.asarray(b["nsp_label"]) != IGNORE_INDEX).sum())
        if "view_a" in b:
            out["contrastive"] += float(len(b["view_a"]))
    return out


# ------------------------------------------------------------------ sessions
class LocalSession:
    """One process, no Ray: batches from an iterable, checkpoints in ``out_dir``."""

    def __init__(self, train_batches: Iterable[dict], val_batches: list[dict] | None = None,
                 out_dir: str | Path | None = None, device: str | None = None,
                 resume: bool = False, keep: int = 2):
        self.rank, self.world = 0, 1
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._train, self._val = train_batches, val_batches or []
        self.out_dir = Path(out_dir) if out_dir else None
        self.resume, self.keep = resume, keep
        self.reported: list[dict] = []
        self.final_dir: Path | None = None

    def prepare(self, module: torch.nn.Module) -> torch.nn.Module:
        return module.to(self.device)

    def train_batches(self, batch_size: int, shuffle_buffer: int, seed: int) -> Iterator[dict]:
        return iter(self._train)

    def val_batches(self) -> list[dict]:
        return self._val

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


class RaySession:
    """Inside a Ray Train worker."""

    def __init__(self):
        import ray.train
        import ray.train.torch
        self._rt = ray.train
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()

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
        shard = self._rt.get_dataset_shard("val")
        return list(shard.iter_batches(batch_size=256, batch_format="numpy"))

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


# ------------------------------------------------------------------ checkpoints
def save_checkpoint(d: Path, module: PretrainModule, opt, state: dict) -> None:
    from safetensors.torch import save_model
    d.mkdir(parents=True, exist_ok=True)
    save_model(module, str(d / "module.safetensors"))
    torch.save({"optimizer": opt.state_dict(), "torch_rng": torch.get_rng_state(),
                "numpy_rng": np.random.get_state()}, d / "optimizer.pt")
    (d / "trainer_state.json").write_text(json.dumps(state, indent=2))


def load_checkpoint(d: Path, module: PretrainModule, opt) -> dict:
    from safetensors.torch import load_model
    load_model(module, str(d / "module.safetensors"), device=str(next(module.parameters()).device))
    extra = torch.load(d / "optimizer.pt", map_location="cpu", weights_only=False)
    opt.load_state_dict(extra["optimizer"])
    torch.set_rng_state(extra["torch_rng"])
    np.random.set_state(extra["numpy_rng"])
    return json.loads((d / "trainer_state.json").read_text())


# ------------------------------------------------------------------ the loop
def train_loop(config: dict, session) -> dict:
    """Per-worker training. ``config``: {"cfg": Config dict, "tokenizer_dir", "mlflow_uri",
    "run_id"}. Returns the final metrics (rank 0: with the evaluation)."""
    cfg: Config = _build(Config, config["cfg"])
    tc, mc, obj = cfg.train, cfg.masking, cfg.objectives
    rank, world, device = session.rank, session.world, session.device
    torch.manual_seed(tc.seed + rank)
    np.random.seed(tc.seed + rank)
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(tc.cpus_per_worker)))

    builder = ExampleBuilder(cfg, config["tokenizer_dir"])
    sp = builder.sp
    hf = build_model(cfg.model, builder.vocab_size, cfg.data.max_seq_len, sp["pad"])
    attn = set_attention(hf, attention_impl(cfg.model.attention, device.type))
    module = PretrainModule.from_config(cfg, hf, sp["pad"]).to(device)
    opt = torch.optim.AdamW(module.parameters(), lr=tc.lr, weight_decay=tc.weight_decay,
                            fused=device.type in ("cuda", "cpu") or None)
    state = {"step": 0, "batches": 0, "elapsed": 0.0, "tokens": 0.0, "epoch": 0}
    with session.latest_checkpoint() as ckpt:
        if ckpt is not None:
            state = load_checkpoint(Path(ckpt), module, opt)
            torch.manual_seed(tc.seed + rank + 7919 * state["step"])   # fresh dropout stream per rank
            if rank == 0:
                say(f"resumed from checkpoint at step {state['step']} ({state['batches']} batches "
                    f"per worker consumed, {state['elapsed']:.0f}s trained)")
    model = session.prepare(module)
    if tc.compile:
        model = torch.compile(model)
    dtype = choose_dtype(tc.precision, device)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype != torch.float32 \
        else contextlib.nullcontext
    rep = _Reporter(rank, config.get("mlflow_uri"), config.get("run_id"))
    masker = builder.masker()
    flops_tok, flops_pred = encoder_flops(hf.config, cfg.data.max_seq_len)
    peak = measure_peak_flops(device, dtype)
    if rank == 0:
        say(f"precision {str(dtype).replace('torch.', '')} on {device.type}, {attn} attention; "
            f"measured GEMM peak "
            f"{peak / 1e9:,.0f} GFLOP/s per worker; {sum(p.numel() for p in hf.parameters()):,} "
            f"encoder parameters")

    val = session.val_batches() if rank == 0 else []
    before: dict = {}
    if rank == 0 and obj.mlm and state["step"] == 0 and val:
        before = evaluate_mlm(module, [(b["input_ids"], b["labels"]) for b in val], sp["pad"])
        rep.log({f"{k}_initial": v for k, v in before.items()}, 0)
        say(f"eval before training: mlm_loss {before['eval_mlm_loss']:.3f} "
            f"mlm_acc {before['eval_mlm_accuracy']:.3f} over {before['eval_tokens']} masked tokens")

    batches = session.train_batches(tc.batch_size, cfg.data.shuffle_buffer, tc.seed)
    for _ in range(state["batches"]):            # data position: skip what was trained on
        if next(batches, None) is None:
            break
    budget = tc.max_minutes * 60.0
    warm = tc.warmup_steps / max(1, tc.max_steps)
    model.train()
    names = ["mlm_loss", "mlm_correct", "mlm_count", "nsp_loss", "nsp_correct", "nsp_count",
             "con_loss", "con_correct", "con_count", "con_pos_sim", "con_neg_sim", "con_alignment",
             "con_uniformity", "loss", "tokens", "slots", "samples", "flops", "wait", "steps"]
    win = torch.zeros(len(names), dtype=torch.float64)
    step, metrics, ratio = state["step"], {}, mc.ratio
    t_start = time.perf_counter() - state["elapsed"]
    t_win = time.perf_counter()
    done = False
    while not done:
        progress = step / tc.max_steps
        if budget > 0:                             # all ranks agree on the clock
            el = _allreduce(torch.tensor([time.perf_counter() - t_start]),
                            torch.distributed.ReduceOp.MAX if _dist() else None)
            progress = max(progress, float(el[0]) / budget)
        if progress >= 1.0:
            break
        for g in opt.param_groups:
            g["lr"] = tc.lr * lr_factor(progress, warm, tc.lr_schedule)
        ratio = ratio_at(mc.schedule, mc.ratio, mc.ratio_end, progress) if obj.mlm else mc.ratio
        vals = dict.fromkeys(names, 0.0)
        window = []                                # the micro-batches of one optimizer step
        while len(window) < tc.grad_accum:
            t_wait = time.perf_counter()
            batch = next(batches, None)
            vals["wait"] += time.perf_counter() - t_wait
            if batch is None:
                done = True
                break
            state["batches"] += 1
            state["epoch"] = int(batch["epoch"].max())
            if obj.mlm:
                batch["input_ids"], batch["labels"] = masker.keyed(
                    batch["input_ids"], seed=mc.seed, keys=row_keys(batch["input_ids"], mc.seed, batch["epoch"]),
                    word_start=batch["word_start"].astype(bool), ratio=ratio)
            window.append(batch)
        if done:
            window = []                            # an incomplete accumulation is not applied
        counts = window_counts(window)
        for micro, batch in enumerate(window):
            t = to_tensors(batch, device)
            t[WINDOW_KEY] = counts                 # losses normalised over the whole window
            sync = model.no_sync() if (micro < tc.grad_accum - 1 and hasattr(model, "no_sync")) \
                else contextlib.nullcontext()
            with sync:
                with autocast():
                    loss, m = model(t)
                loss.backward()
            for k, v in m.items():
                vals[k] += float(v)
            vals["loss"] += float(loss.detach())
            ntok = float(batch["num_tokens"].sum())
            vals["tokens"] += ntok
            vals["slots"] += float(batch["input_ids"].size)
            vals["samples"] += len(batch["input_ids"])
            views = 0.0
            if "view_a" in batch:
                views = float((batch["view_a"] != sp["pad"]).sum() + (batch["view_b"] != sp["pad"]).sum())
            vals["flops"] += (ntok * ("tokens" in {o.stream for o in module.objectives.values()})
                              + views) * flops_tok + float(m.get("mlm_count", 0.0)) * flops_pred
        if done:
            if step == 0:
                raise RuntimeError(f"{NO_BATCH} of {tc.batch_size} sequences per worker: use a "
                                   "larger corpus or a smaller train.batch_size")
            if rank == 0:
                say(f"data exhausted after {cfg.data.max_epochs} epochs at step {step}: stopping")
            break
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        vals["steps"] = 1.0
        win += torch.tensor([vals[k] for k in names], dtype=torch.float64)
        state.update(step=step, elapsed=time.perf_counter() - t_start)
        last = step >= tc.max_steps or (budget > 0 and state["elapsed"] >= budget)

        if step % tc.log_every == 0 or last:
            g = dict(zip(names, _allreduce(win.clone()).tolist()))
            dt = time.perf_counter() - t_win
            win.zero_()
            t_win = time.perf_counter()
            state["tokens"] += g["tokens"]
            metrics = _window_metrics(g, dt, world, peak, obj)
            metrics.update(step=step, epoch=state["epoch"], lr=opt.param_groups[0]["lr"],
                           mask_ratio=ratio, elapsed_s=state["elapsed"])
            if rank == 0:
                _print_step(metrics, tc.max_steps)
                rep.log({k: v for k, v in metrics.items() if k != "step"}, step)
        if last:
            break
        if tc.checkpoint_every and step % tc.checkpoint_every == 0:
            _report(session, rank, module, opt, state, metrics, config, final=False)
        elif step % tc.log_every == 0:
            session.report(dict(metrics, step=step))

    final = dict(metrics, step=step, tokens_seen=state["tokens"],
                 **{f"{k}_initial": v for k, v in before.items()})
    if rank == 0:
        after = {}
        if obj.mlm and val:
            after.update(evaluate_mlm(module, [(b["input_ids"], b["labels"]) for b in val], sp["pad"]))
        if obj.nsp and val:
            after.update(evaluate_nsp(module, [b for b in val if "nsp_label" in b]))
        final.update(after)
        if after:
            rep.log(after, step)
            say("eval after training: " + " | ".join(f"{k} {v:.3f}" for k, v in after.items()
                                                     if isinstance(v, float)))
        rep.flush()
    _report(session, rank, module, opt, state, final, config, final=True)
    return final


def _window_metrics(g: dict, dt: float, world: int, peak: float, obj) -> dict:
    n = max(1.0, g["steps"])
    m = {"loss": g["loss"] / n, "tokens_per_s": g["tokens"] / dt, "samples_per_s": g["samples"] / dt,
         "data_wait_frac": g["wait"] / world / dt, "packing_efficiency": g["tokens"] / max(1.0, g["slots"]),
         "mfu": g["flops"] / dt / (peak * world), "step_time_s": dt / n}
    if obj.mlm:
        c = max(1.0, g["mlm_count"])
        m.update(mlm_loss=g["mlm_loss"] / c, mlm_accuracy=g["mlm_correct"] / c)
    if obj.nsp:
        c = max(1.0, g["nsp_count"])
        m.update(nsp_loss=g["nsp_loss"] / c, nsp_accuracy=g["nsp_correct"] / c)
    if obj.contrastive:
        c = max(1.0, g["con_count"])
        m.update(contrastive_loss=g["con_loss"] / c, contrastive_accuracy=g["con_correct"] / c,
                 contrastive_alignment=g["con_alignment"] / c,
                 contrastive_uniformity=g["con_uniformity"] / c,
                 contrastive_sim_gap=(g["con_pos_sim"] - g["con_neg_sim"]) / c)
    return m


def _print_step(m: dict, max_steps: int) -> None:
    parts = [f"loss {m['loss']:.4f}"]
    parts += [f"{k} {m[k]:.3f}" for k in ("mlm_accuracy", "nsp_accuracy", "contrastive_accuracy") if k in m]
    say(f"step {m['step']}/{max_steps} | " + " | ".join(parts) +
        f" | {m['tokens_per_s']:,.0f} tok/s | MFU {m['mfu']:.2f} | wait {m['data_wait_frac']:.0%} | "
        f"lr {m['lr']:.2e} | {m['elapsed_s']:.0f}s")


def _report(session, rank: int, module: PretrainModule, opt, state: dict, metrics: dict,
            config: dict, final: bool) -> None:
    """Every rank reports; rank 0 attaches the checkpoint (the final one also holds the exported
    Hugging Face directory under ``model/``)."""
    metrics = dict(metrics, step=state["step"])
    if rank != 0:
        session.report(metrics)
        return
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(Path(d), module, opt, state)
        if final:
            export(module, config, Path(d) / "model")
        session.report(metrics, checkpoint_dir=d)


def export(module: PretrainModule, config: dict, out: Path) -> Path:
    """The trained encoder as a Hugging Face directory (+ sentence-transformers pooling config)."""
    from ssl_core.export import export_model
    cfg: Config = _build(Config, config["cfg"])
    return export_model(module.hf, config["tokenizer_dir"], out, pooling=cfg.contrastive.pooling,
                        max_seq_len=cfg.data.max_seq_len, extra_heads=module.extra_heads() or None,
                        config_dict=config["cfg"])


def train_func(config: dict) -> None:
    """Ray Train entry point (one call per worker)."""
    # Train V2 logs every report at INFO on a logger named after its file: progress is ours
    try:
        from ray.train.v2._internal.execution import context as _ctx
        logging.getLogger(_ctx.__file__).setLevel(logging.WARNING)
    except ImportError:
        pass
    train_loop(config, RaySession())


def fit(cfg: Config, train_ds, val_ds, tokenizer_dir: str, storage_path: str, run_name: str,
        mlflow_uri: str | None, run_id: str | None):
    """Run ``train_func`` on ``cfg.train.num_workers`` Ray Train workers; returns the Result.
    Run again with the same ``storage_path`` and ``run_name`` and it resumes from the newest
    checkpoint there."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
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
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
                             failure_config=FailureConfig(max_failures=cfg.train.max_failures)),
    )
    return trainer.fit()


# ------------------------------------------------------------------ without Ray
def local_batches(cfg: Config, tokenizer_dir: str, split: str = "train", epochs: int = 1,
                  batch_size: int | None = None, max_rows: int = 0) -> Iterator[dict]:
    """Rows built in this process with ssl_core alone (no Ray Data), batched like the worker
    sees them: epochs end to end, last partial batch dropped. ``split="val"`` masks at the fixed
    eval ratio, as the data stage does."""
    from ssl_core.model import EVAL_RATIO, EVAL_SEED
    from ssl_core.text import is_validation, iter_documents, resolve_corpus

    b = ExampleBuilder(cfg, tokenizer_dir)
    bs = batch_size or cfg.train.batch_size
    shards = resolve_corpus(cfg.data.corpus, cfg.data.text_field)
    eval_masker = b.masker(ratio=EVAL_RATIO, strategy="token")
    buf: dict[str, list] = {}
    n_rows = 0

    def flush_docs(ids, texts, epoch):
        rows, _ = b.build(ids, texts, epoch)
        if split == "val":
            rows["input_ids"], rows["labels"] = eval_masker.keyed(rows["input_ids"], seed=EVAL_SEED, epoch=0)
        for k, v in rows.items():
            buf.setdefault(k, []).extend(list(v))

    per_shard = -(-cfg.data.max_documents // len(shards)) if cfg.data.max_documents else 0

    def chunks():
        """(document ids, texts, epoch) in groups of data.batch_rows, per shard and epoch."""
        for epoch in range(epochs):
            for shard in shards:
                ids, texts = [], []
                for n_doc, doc in enumerate(iter_documents(shard, None, min_chars=cfg.data.min_chars,
                                                           max_doc_chars=cfg.data.max_doc_chars)):
                    if per_shard and n_doc >= per_shard:
                        break
                    if is_validation(doc["id"], cfg.data.val_fraction) != (split == "val"):
                        continue
                    ids.append(doc["id"])
                    texts.append(doc["text"])
                    if len(ids) >= cfg.data.batch_rows:
                        yield ids, texts, epoch
                        ids, texts = [], []
                if ids:
                    yield ids, texts, epoch

    for ids, texts, epoch in chunks():
        flush_docs(ids, texts, epoch)
        while buf and len(buf["input_ids"]) >= bs:
            yield {k: np.stack(v[:bs]) for k, v in buf.items()}
            for v in buf.values():
                del v[:bs]
            n_rows += bs
            if max_rows and n_rows >= max_rows:
                return


def run_local(cfg: Config, tokenizer_dir: str, train_batches: Iterable[dict] | None = None,
              val_batches: list[dict] | None = None, out_dir: str | Path | None = None,
              device: str | None = None, resume: bool = False) -> tuple[dict, LocalSession]:
    """``train_loop`` in this process without Ray. Batches default to ``local_batches``."""
    if train_batches is None:
        train_batches = local_batches(cfg, tokenizer_dir, "train", cfg.data.max_epochs)
    if val_batches is None:
        val_batches = list(local_batches(cfg, tokenizer_dir, "val", 1, batch_size=64, max_rows=512))
    sess = LocalSession(train_batches, val_batches, out_dir, device, resume, cfg.train.keep_checkpoints)
    config = {"cfg": cfg.to_dict(), "tokenizer_dir": str(tokenizer_dir)}
    return train_loop(config, sess), sess


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.train``: the training loop alone, in this process, without Ray."""
    import argparse

    from ssl_core.config import load_config
    from ssl_core.tokenizer import train_wordpiece
    from ssl_core.text import resolve_corpus, sample_documents

    p = argparse.ArgumentParser(prog="python -m pipelines.train", description=main.__doc__)
    p.add_argument("--config", default="tiny")
    p.add_argument("--set", action="append", default=[], dest="overrides")
    p.add_argument("--out", default=None, help="checkpoint directory (default: a temporary one)")
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from pipelines import cli  # noqa: F401  (registers the shipped configs directory)
    cfg = load_config(args.config, args.overrides)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        tok = cfg.tokenizer.path or (cfg.model.init_from if cfg.model.init_from else "")
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
