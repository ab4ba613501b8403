"""Precision choice, the device's measured matmul peak, and model FLOPs for MFU.

MFU = achieved model FLOP/s ÷ the peak this device reaches on one large GEMM in the training
precision (measured once at start, not a datasheet number), so it says how much of what the
hardware can really do the training loop uses."""
from __future__ import annotations

import functools
import os
import threading
import time

import torch


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX-BF16 on this CPU (bf16 GEMMs run natively, ~2-3x fp32)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool({"avx512_bf16", "amx_bf16"} & flags)
    except OSError:
        pass
    return False


def cpu_line() -> str:
    """``CPU: <model name>, <n> cores, native bf16: <bool>``: what every benchmark prints first
    (figures are compared only between runs on the same CPU)."""
    name = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            name = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), name)
    except OSError:
        pass
    return f"CPU: {name}, {os.cpu_count()} cores, native bf16: {cpu_has_native_bf16()}"


def choose_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The autocast dtype for ``train.precision`` (auto | bf16 | fp32) on ``device``."""
    if precision == "fp32":
        return torch.float32
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
    else:
        ok = cpu_has_native_bf16() or precision == "bf16"
    if precision == "bf16" and not ok:
        raise ValueError("train.precision=bf16 but this GPU has no bf16 support")
    return torch.bfloat16 if ok else torch.float32


_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3      # glibc's mallopt() parameters


@functools.cache
def keep_freed_memory() -> bool:
    """Tells glibc's malloc to keep freed memory for reuse instead of giving it back to the kernel
    (Linux/glibc; a no-op returning False elsewhere). Done once per process, by every CPU training
    process before it builds its model.

    A training step allocates and frees the same tensors every step, many of them above malloc's
    starting mmap threshold (128 KiB): each such allocation was a fresh ``mmap``, page-faulted in
    and unmapped again at ``free``. glibc raises that threshold as it goes but also trims the heap,
    so the faults continue: 400k-900k minor faults per 60 steps of BERT-mini (batch 16), ~1 s of
    system time in ~7 s, and 136 vs 151 samples/s (2026-12-02, Xeon with AMX, fresh processes).
    With allocations up to 32 MiB (glibc's maximum) from the heap and the heap trimmed only above
    1 GiB free, a warmed-up step faults almost never (~4k per 60 steps). The cost: a process keeps
    up to 1 GiB of freed heap mapped for its next steps."""
    import ctypes
    import ctypes.util
    import sys
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):              # musl and other libcs: nothing to tune
        return False
    return all(mallopt(k, v) == 1 for k, v in ((_M_MMAP_THRESHOLD, 32 << 20),
                                               (_M_TRIM_THRESHOLD, 1 << 30), (_M_TOP_PAD, 64 << 20)))


def measure_peak_flops(device: torch.device, dtype: torch.dtype, n: int | None = None,
                       seconds: float = 0.5) -> float:
    """FLOP/s of the best of a few GEMMs in ``dtype`` on ``device``: n x n, or on CPU the best of
    1024² and 2048² (the best shape differs between CPUs; a lower peak would flatter MFU)."""
    if n is None and device.type != "cuda":
        return max(measure_peak_flops(device, dtype, k, seconds) for k in (1024, 2048))
    n = n or 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b
    sync()
    best, t_end = float("inf"), time.perf_counter() + seconds
    reps = 0
    while reps < 3 or time.perf_counter() < t_end:
        t = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t)
        reps += 1
        if reps >= 50:
            break
    return 2.0 * n ** 3 / best


def encoder_flops(hf_config, seq_len: int) -> tuple[float, float]:
    """(training FLOPs per token through the encoder, training FLOPs per predicted token in the
    MLM head). Forward = 2 x weights of the layers' matmuls + attention scores and mixing
    (4 x T x H per layer); backward = 2 x forward."""
    H = hf_config.hidden_size
    L = hf_config.num_hidden_layers
    inter = getattr(hf_config, "intermediate_size", 4 * H)
    layer_weights = 4 * H * H + 2 * H * inter
    per_token = 3 * (2 * L * layer_weights + 4 * L * seq_len * H)
    per_predicted = 3 * 2 * (H * H + H * hf_config.vocab_size)
    return float(per_token), float(per_predicted)


def _thread_cpu_ns(tid: int) -> int:
    """Nanoseconds thread ``tid`` of this process has run on a CPU (0 if it is gone)."""
    try:
        with open(f"/proc/self/task/{tid}/schedstat") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _threads() -> list[int]:
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:                                  # not Linux
        return []


def compute_threads(seconds: float = 0.05) -> set[int]:
    """The threads that run this thread's intra-op (OpenMP) work: this one and the
    ``torch.get_num_threads() - 1`` others busiest while it runs parallel elementwise ops for
    ``seconds`` (the pool's threads carry no name or mark of their own). Empty where /proc has no
    per-thread schedstat (not Linux)."""
    me = threading.get_native_id()
    if not os.path.exists(f"/proc/self/task/{me}/schedstat"):
        return set()
    x = torch.ones(1 << 22)
    x.add_(1)                                        # the pool exists (it starts on first use)
    before = {t: _thread_cpu_ns(t) for t in _threads() if t != me}
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        x.add_(1)
    wall = (time.perf_counter() - t0) * 1e9
    busy = sorted(((_thread_cpu_ns(t) - c, t) for t, c in before.items()), reverse=True)
    return {me, *(t for d, t in busy[:max(0, torch.get_num_threads() - 1)] if d > 0.3 * wall)}


class QuietThreads:
    """Keeps a dedicated training process's other threads from taking the cores from the compute
    threads: every thread but ``compute_threads()`` gets SCHED_IDLE (Linux; the kernel then never
    preempts a compute thread to run one of them, and gives them a small share when both cores are
    busy). In a Ray Train worker ~400 wakeups/s of Ray's, gloo's and the data iterator's threads
    each stalled one of the two OpenMP threads and, at its next barrier, the other. Measured
    (benchmarks/train_overhead.py, Ray / plain per round, on and off in alternate rounds): median
    0.880 with this vs 0.835 without over 13 rounds each, but 0.814 vs 0.833 in the largest single
    invocation: no reliable gain on a noisy host, so ``train.quiet_threads`` is off by default.
    ``apply()`` again catches threads started since (from the compute thread: the data iterator's);
    a change of ``torch.get_num_threads()`` re-identifies the compute threads first. Irreversible
    for an unprivileged process (SCHED_IDLE -> SCHED_OTHER needs RLIMIT_NICE): only for a process
    that exists for the training, never a user's own."""

    def __init__(self):
        self.keep: set[int] = set()
        self.threads = 0

    def apply(self) -> int:
        """Moves every thread not in the compute set to SCHED_IDLE; returns how many were moved."""
        if not hasattr(os, "SCHED_IDLE"):
            return 0
        if not self.keep or self.threads != torch.get_num_threads():
            self.keep, self.threads = compute_threads(), torch.get_num_threads()
            if not self.keep:
                return 0
        n = 0
        for tid in _threads():
            if tid in self.keep:
                continue
            try:
                if os.sched_getscheduler(tid) in (os.SCHED_OTHER, os.SCHED_BATCH):
                    os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
                    n += 1
            except OSError:                          # gone, or not ours to change: leave it
                pass
        return n
