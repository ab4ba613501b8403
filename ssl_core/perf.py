"""Precision choice, the device's measured matmul peak, and model FLOPs for MFU.

MFU = achieved model FLOP/s ÷ the peak this device reaches on one large GEMM in the training
precision (measured once at start, not a datasheet number), so it says how much of what the
hardware can really do the training loop uses."""
from __future__ import annotations

import functools
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
