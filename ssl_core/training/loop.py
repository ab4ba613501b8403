"""The per-worker training loop, built from the parts beside it:

    state.build_state      encoder, objectives, optimizer, precision, FLOPs, measured peak
    checkpoint.load/report resume from / save to the session's checkpoints
    step.next_window       the micro-batches of one optimizer step
    step.train_step        masks, forward/backward, clip, AdamW
    metrics.MetricWindow   sums over log_every steps and ranks -> logged metrics

    final = train_loop(TrainJob(cfg, tokenizer_dir), session)

Under Ray Train the session is ``pipelines.train.RaySession``; without Ray a ``LocalSession``
(``ssl_core.training.local.run_local``). Every rank runs the same number of optimizer steps: before
each step all ranks agree (``Clock.agree``, one small collective) on the time budget
(``train.max_minutes``, the slowest clock) and on whether every rank still has a batch, so no rank
waits on a collective the others never reach. Before and after training rank 0 evaluates every objective on the held-out rows
(MLM at the fixed 15% mask)."""
from __future__ import annotations

import os
import time
from itertools import islice
from typing import Iterator

import torch

from ssl_core.log import say
from ssl_core.perf import QuietThreads
from ssl_core.training import checkpoint
from ssl_core.training.job import TrainJob
from ssl_core.training.data import batch_epoch
from ssl_core.training.evals import evaluate_now
from ssl_core.training.metrics import MetricWindow, all_reduce, progress_line
from ssl_core.training.state import TrainState, build_state
from ssl_core.training.step import next_window, train_step

NO_BATCH = "the training data yields no full batch"


class Clock:
    """What all ranks agree on before each step, in one collective: training progress in [0, 1]
    (steps done / max_steps, or the slowest rank's elapsed / train.max_minutes when further), and
    whether every rank has a batch (each builds its own rows, so one may run out first)."""

    def __init__(self, ts: TrainState):
        tc = ts.cfg.train
        self.max_steps, self.budget, self.device = tc.max_steps, tc.max_minutes * 60.0, ts.device
        self.world = ts.world
        self.t0 = time.perf_counter() - ts.progress.elapsed

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def agree(self, step: int, have_batch: bool) -> tuple[float, bool]:
        el = self.elapsed()
        if self.world > 1 or self.budget > 0:
            t = torch.tensor([el, 0.0 if have_batch else 1.0], dtype=torch.float64, device=self.device)
            el, missing = all_reduce(t, torch.distributed.ReduceOp.MAX).tolist()
            have_batch = missing == 0.0
        p = step / self.max_steps
        return (max(p, el / self.budget) if self.budget > 0 else p), have_batch


def _resume(ts: TrainState, session) -> int:
    """Load the session's newest checkpoint, if any; returns its step (-1: started fresh)."""
    with session.latest_checkpoint() as ckpt:
        if ckpt is None:
            return -1
        ts.progress = checkpoint.load(ckpt, ts)
        if ts.rank == 0:
            p = ts.progress
            say(f"resumed from checkpoint at step {p.step} ({p.batches} batches per worker "
                f"consumed, {p.elapsed:.0f}s trained)")
        return ts.progress.step


def _train(ts: TrainState, session, batches: Iterator[dict], val: list[dict]) -> tuple[dict, str]:
    """Optimizer steps until max_steps, the time budget or the end of the data; returns the last
    window's metrics and why it stopped."""
    tc, p, every = ts.cfg.train, ts.progress, ts.cfg.eval.every
    names = list(ts.module.objectives)
    win, clock = MetricWindow(ts), Clock(ts)
    metrics: dict = {}
    settings: dict = {}
    pending = 0                                      # steps in the window not yet flushed
    ts.model.train()
    quiet = QuietThreads() if tc.quiet_threads and ts.device.type == "cpu" \
        and getattr(session, "dedicated", False) else None
    if quiet is not None:
        n = quiet.apply()
        if ts.rank == 0 and quiet.keep:
            say(f"{n} other threads of this worker set to SCHED_IDLE: they no longer preempt the "
                f"{len(quiet.keep)} compute thread{'s' * (len(quiet.keep) > 1)} (train.quiet_threads)")
    while True:
        window, wait = next_window(batches, tc.grad_accum)
        progress, have = clock.agree(p.step, window is not None)
        if progress >= 1.0:
            reason = "max_steps" if p.step >= tc.max_steps else "time_budget"
            p.elapsed = clock.elapsed()                 # the clock at the stop (the budget's end)
            break
        if not have:
            if p.step == 0:
                raise RuntimeError(f"{NO_BATCH} of {tc.batch_size} sequences per worker: use a "
                                   "larger corpus or a smaller train.batch_size")
            if ts.rank == 0:
                say(f"data exhausted after {ts.cfg.data.max_epochs} epochs at step {p.step}: stopping")
            reason = "data_exhausted"
            break
        sums, settings = train_step(ts, window, progress)
        p.step += 1
        p.batches += len(window)
        p.epoch = max(batch_epoch(b) for b in window)
        p.elapsed = clock.elapsed()
        win.add(sums, wait)
        pending += 1
        if p.step % tc.log_every == 0:
            if quiet is not None:
                quiet.apply()                        # threads started since (the data iterator's)
            metrics = _flush(ts, session, win, settings, names)
            pending = 0
        if p.step >= tc.max_steps:
            reason = "max_steps"
            break
        # only checkpoints are reported to the session between the start and the end: under Ray
        # Train a report blocks until the controller has taken the previous one (it polls every
        # 2 s), which cost ~1 s per log window when every window was reported; metrics go to the
        # tracker through ``log_metrics`` instead
        if every and p.step % every == 0:          # an evaluation (Tune's unit), with a checkpoint
            checkpoint.report(session, ts, dict(metrics, **_evaluate(ts, session, val)), final=False)
        elif tc.checkpoint_every and p.step % tc.checkpoint_every == 0:
            checkpoint.report(session, ts, metrics, final=False)
    if pending:                                     # every rank stopped at the same step
        metrics = _flush(ts, session, win, settings, names)
    return metrics, reason


def _evaluate(ts: TrainState, session, val: list[dict]) -> dict:
    """Rank 0's evaluation at this step (``evals.evaluate_now``), logged; {} on other ranks."""
    if ts.rank != 0:
        return {}
    m = evaluate_now(ts, val)
    session.log_metrics(m, ts.progress.step)
    say(f"eval at step {ts.progress.step}: " + _fmt(m))
    return m


def _flush(ts: TrainState, session, win: MetricWindow, settings: dict, names: list[str]) -> dict:
    p = ts.progress
    m = win.flush()
    p.tokens += m.pop("window_tokens")
    m.update(settings, step=p.step, epoch=p.epoch, elapsed_s=p.elapsed)
    if ts.rank == 0:
        say(progress_line(m, ts.cfg.train.max_steps, names))
        session.log_metrics({k: v for k, v in m.items() if k != "step"}, p.step)
    return m


def train_loop(job: TrainJob, session) -> dict:
    """Per-worker training; returns the final metrics (rank 0: with the held-out evaluation)."""
    tc = job.cfg.train
    ts = build_state(job, session.device, session.rank, session.world)
    resumed = _resume(ts, session)
    ts.model = session.prepare(ts.module)
    if tc.compile:
        ts.model = torch.compile(ts.model)
    if ts.rank == 0:
        nice = f", nice {os.nice(0)}" if hasattr(os, "nice") else ""    # Ray's default for workers: 15
        say(f"precision {str(ts.dtype).replace('torch.', '')} on {ts.device.type}, {ts.attention} "
            f"attention{nice}; measured GEMM peak {ts.peak_flops / 1e9:,.0f} GFLOP/s per worker; "
            f"{sum(p.numel() for p in ts.module.hf.parameters()):,} encoder parameters")
    val = session.val_batches(ts) if ts.rank == 0 else []
    before: dict = {}
    if val and ts.progress.step == 0:
        before = ts.module.evaluate(val)
        session.log_metrics({f"{k}_initial": v for k, v in before.items()}, 0)
        say("eval before training: " + _fmt(before))
    batches = session.train_batches(ts)
    for _ in islice(batches, ts.progress.batches):   # data position: skip what was trained on
        pass
    metrics, reason = _train(ts, session, batches, val)
    final = dict(metrics, step=ts.progress.step, tokens_seen=ts.progress.tokens, stop_reason=reason,
                 elapsed_s=ts.progress.elapsed, resumed_from_step=resumed,
                 **{f"{k}_initial": v for k, v in before.items()})
    if ts.rank == 0 and job.cfg.eval.every:
        final.update(_evaluate(ts, session, val))
    elif val:
        after = ts.module.evaluate(val)
        final.update(after)
        session.log_metrics(after, ts.progress.step)
        say("eval after training: " + _fmt(after))
    session.close()
    checkpoint.report(session, ts, final, final=True)
    return final


def _fmt(m: dict) -> str:
    return " | ".join(f"{k} {v:.3f}" for k, v in m.items())
