"""The metric window: step sums added up over ``train.log_every`` steps, summed over ranks, turned
into the logged metrics, and the progress line printed from them.

    win = MetricWindow(ts)
    win.add(sums, wait=seconds_waited)          # every step
    metrics = win.flush()                       # every log_every steps (a collective: all ranks)

Logged: ``loss``, ``grad_norm``, ``tokens_per_s`` (every token the encoder processed, both
contrastive views included), ``samples_per_s``, ``data_wait_frac``, ``packing_efficiency`` (real
tokens / slots of the input rows), ``mfu`` (achieved model FLOP/s ÷ the measured GEMM peak of all
workers), ``step_time_s``, and each objective's ``summarize`` (``mlm_loss``, ``mlm_accuracy``,
``nsp_*``, ``contrastive_*``)."""
from __future__ import annotations

import time

import torch

from ssl_core.training.state import TrainState

LOOP_KEYS = ("loss", "grad_norm", "tokens", "row_tokens", "slots", "samples", "wait", "steps")


def all_reduce(t: torch.Tensor, op=None) -> torch.Tensor:
    """In-place all-reduce (SUM by default) when a process group is up; the tensor otherwise."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t


class MetricWindow:
    def __init__(self, ts: TrainState):
        self.ts = ts
        self.objectives = list(ts.module.objectives.values())
        self.keys = list(LOOP_KEYS) + [k for o in self.objectives for k in o.keys()]
        self.sums = torch.zeros(len(self.keys), dtype=torch.float64, device=ts.device)
        self.t0 = time.perf_counter()

    def add(self, sums: dict, wait: float = 0.0) -> None:
        sums = dict(sums, wait=wait)
        dev = self.sums.device
        self.sums += torch.stack([torch.as_tensor(sums.get(k, 0.0), dtype=torch.float64,
                                                  device=dev).reshape(()) for k in self.keys])

    def flush(self) -> dict[str, float]:
        """The window's metrics over all ranks (every rank must call it), then a new window."""
        g = dict(zip(self.keys, all_reduce(self.sums.clone()).tolist()))
        dt = time.perf_counter() - self.t0
        self.sums.zero_()
        self.t0 = time.perf_counter()
        ts, n = self.ts, max(1.0, g["steps"])
        flops = g["tokens"] * ts.flops_per_token + sum(
            o.head_flops(g, ts.flops_per_prediction) for o in self.objectives)
        m = {"loss": g["loss"] / n, "grad_norm": g["grad_norm"] / n,
             "tokens_per_s": g["tokens"] / dt, "samples_per_s": g["samples"] / dt,
             "data_wait_frac": g["wait"] / ts.world / dt,
             "packing_efficiency": g["row_tokens"] / max(1.0, g["slots"]),
             "mfu": flops / dt / (ts.peak_flops * ts.world), "step_time_s": dt / n,
             "window_tokens": g["tokens"]}
        for o in self.objectives:
            m.update(o.summarize(g))
        return m


def progress_line(m: dict, max_steps: int, objectives: list[str]) -> str:
    parts = [f"loss {m['loss']:.4f}"] + [f"{k} {m[k]:.3f}" for k in
                                          (f"{o}_accuracy" for o in objectives) if k in m]
    return (f"step {m['step']}/{max_steps} | " + " | ".join(parts) +
            f" | {m['tokens_per_s']:,.0f} tok/s | MFU {m['mfu']:.2f} | wait {m['data_wait_frac']:.0%} | "
            f"lr {m['lr']:.2e} | {m['elapsed_s']:.0f}s")
