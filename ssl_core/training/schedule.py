"""Schedules of the training loop: the learning rate and the per-step dropout seed."""
from __future__ import annotations

import math


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


def step_seed(seed: int, rank: int, step: int) -> int:
    """The torch seed of one optimizer step on one rank (dropout): a function of the step, so a
    run resumed from a checkpoint draws exactly what the uninterrupted run drew, and every rank
    draws its own."""
    return (seed * 1_000_003 + rank * 7_919 + step * 104_729) % (2 ** 63 - 1)
