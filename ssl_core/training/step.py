"""One optimizer step, and the accumulation window it runs on.

    window, wait = next_window(batches, cfg.train.grad_accum)
    sums, settings = train_step(ts, window, progress)

``train_step`` is what the training loop runs, and what the benchmarks time: every enabled
objective prepares each micro-batch (MLM draws its masks), the window's scored items are counted
per objective so each loss is normalised over the whole window (k micro-batches train exactly like
one k-times larger batch; under DDP one asynchronous all-reduce sums the counts over ranks while
the forward pass runs), then forward/backward per micro-batch (DDP syncs gradients on the last
one only), gradient clipping, the AdamW step.
"""
from __future__ import annotations

import contextlib
import time
from typing import Iterator

import numpy as np
import torch
from torch.profiler import record_function

from ssl_core.objectives.base import WINDOW_KEY, WindowCounts, distributed
from ssl_core.training.schedule import lr_factor, step_seed
from ssl_core.training.state import TrainState


def next_window(batches: Iterator[dict], k: int) -> tuple[list[dict] | None, float]:
    """The next ``k`` micro-batches (None when the data ends first: an incomplete window is not
    trained on) and the seconds spent waiting for them."""
    window, wait = [], 0.0
    while len(window) < k:
        t = time.perf_counter()
        batch = next(batches, None)
        wait += time.perf_counter() - t
        if batch is None:
            return None, wait
        window.append(dict(batch))
    return window, wait


def to_tensors(batch: dict, columns: list[str], device) -> dict:
    """The given columns of a numpy batch (those present) as int64 tensors on ``device``."""
    return {k: torch.from_numpy(np.asarray(batch[k]).astype(np.int64)).to(device, non_blocking=True)
            for k in columns if k in batch}


def _add(sums: dict, key: str, value) -> None:
    sums[key] = sums.get(key, 0.0) + value


def train_step(ts: TrainState, window: list[dict], progress: float) -> tuple[dict, dict]:
    """One optimizer step on the micro-batches of ``window`` (numpy batches, changed in place) at
    training ``progress`` in [0, 1] (what the LR and mask-ratio schedules follow). Returns (sums
    over the window: loss, gradient norm, tokens, rows, and every objective's sums, as floats or
    0-d tensors; settings: lr and what the objectives' ``prepare`` reported)."""
    tc = ts.cfg.train
    module, model = ts.module, (ts.model if ts.model is not None else ts.module)
    torch.manual_seed(step_seed(tc.seed, ts.rank, ts.progress.step))      # dropout of this step
    lr = tc.lr * lr_factor(progress, tc.warmup_steps / max(1, tc.max_steps), tc.lr_schedule)
    for g in ts.opt.param_groups:
        g["lr"] = lr
    settings = {"lr": lr}
    with record_function("## prepare"):                  # labels for torch.profiler tables
        for batch in window:
            for obj in module.objectives.values():
                settings.update(obj.prepare(batch, progress))
        counts = WindowCounts({n: sum(o.count(b) for b in window) for n, o in module.objectives.items()},
                              ts.device, reduce=distributed(module))   # summed over ranks meanwhile
    columns = module.columns()
    sums: dict = {}
    for i, batch in enumerate(window):
        t = to_tensors(batch, columns, ts.device)
        t[WINDOW_KEY] = counts
        last = i == len(window) - 1
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with record_function("## forward"), ts.autocast():
                loss, m = model(t)
            with record_function("## backward"):
                loss.backward()
        for k, v in m.items():
            _add(sums, k, v.detach().double())
        _add(sums, "loss", loss.detach().double())
        _add(sums, "tokens", module.stream_tokens(batch))
        if "input_ids" in batch:
            _add(sums, "row_tokens", float(batch["num_tokens"].sum()))
            _add(sums, "slots", float(batch["input_ids"].size))
        _add(sums, "samples", float(len(batch["input_ids"] if "input_ids" in batch else batch["view_a"])))
    counts.settle()
    with record_function("## optimizer"):
        if tc.grad_clip > 0:
            sums["grad_norm"] = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip).detach().double()
        ts.opt.step()
        ts.opt.zero_grad(set_to_none=True)
    sums["steps"] = 1.0
    return sums, settings
