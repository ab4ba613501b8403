"""The objective interface and the distributed helpers the objectives share.

An objective owns everything about itself, so the training loop only iterates over the enabled
ones and never names one:

* ``enabled(cfg)`` / ``weight(cfg)``: whether the config turns it on, and its loss weight;
* ``stream``: the encoder pass it reads (``tokens``: ``input_ids``; ``views``: the two views);
  ``columns``: the batch columns it needs as tensors;
* ``prepare(batch, progress)``: per-batch work on the numpy batch before the step (MLM draws its
  masks here); returns settings to log (``mask_ratio``);
* ``count(batch)``: its scored items in a numpy batch (masked tokens, labelled pairs, view
  pairs): the loop sums them over the accumulation window, and ``forward`` normalises by the
  window's global count (``window_count``, then ``scaled_mean``);
* ``forward(outputs, batch) -> (loss, sums)``: sums are tensors named ``<name>_<key>`` for the
  keys in ``sum_keys`` (``loss``, ``correct``, ``count``, ...), so ranks and log windows add them;
* ``summarize(sums)``: the window's metrics from the summed values (``<name>_loss``,
  ``<name>_accuracy``, ...); ``head_flops(sums, per_prediction)``: FLOPs of its head;
* ``evaluate(module, batches)``: held-out metrics (``eval_<name>_...``) on validation rows;
  ``export_heads()``: trained weights that the exported Hugging Face model does not hold.

Register a new one in ``ssl_core.objectives.OBJECTIVES``; the loop, the metric window, the
checkpoint and the export pick it up.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class EncoderOutputs:
    """Encoder states for the batch's two token streams (either may be absent).

    hidden: (B, T, H) for ``input_ids`` (MLM and NSP read it); mask: (B, T) real tokens.
    view_hidden: (2B, T, H) for ``view_a`` then ``view_b`` (contrastive); view_mask: (2B, T)."""
    hidden: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    view_hidden: torch.Tensor | None = None
    view_mask: torch.Tensor | None = None


# token-id columns each encoder stream runs on, and the other columns it reads when present
STREAM_INPUTS = {"tokens": ("input_ids",), "views": ("view_a", "view_b")}
STREAM_EXTRAS = {"tokens": ("token_type_ids",), "views": ()}


class Objective(torch.nn.Module):
    """``forward(outputs, batch) -> (loss, sums)``; see the module docstring."""
    name = ""
    stream = "tokens"          # which encoder pass it reads: "tokens" (input_ids) or "views"
    uses_hf_head = False       # trains the Hugging Face model's own head (the MLM head)
    columns: tuple[str, ...] = ()
    sum_keys: tuple[str, ...] = ("loss", "correct", "count")

    @classmethod
    def enabled(cls, cfg) -> bool:
        return bool(getattr(cfg.objectives, cls.name, False))

    @classmethod
    def weight(cls, cfg) -> float:
        return float(getattr(cfg.objectives, f"{cls.name}_weight", 1.0))

    @classmethod
    def from_config(cls, cfg, hf_model, builder=None) -> "Objective":
        """``builder``: the ``ExampleBuilder`` of the run's tokenizer (vocabulary, special ids)."""
        raise NotImplementedError

    def prepare(self, batch: dict, progress: float) -> dict[str, float]:
        return {}

    def count(self, batch: dict) -> float:
        raise NotImplementedError

    def keys(self) -> list[str]:
        return [f"{self.name}_{k}" for k in self.sum_keys]

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        """Window metrics; none when nothing was scored in the window (e.g. contrastive before
        its ``start``)."""
        if not sums.get(f"{self.name}_count"):
            return {}
        c = sums[f"{self.name}_count"]
        return {f"{self.name}_loss": sums[f"{self.name}_loss"] / c,
                f"{self.name}_accuracy": sums[f"{self.name}_correct"] / c}

    def head_flops(self, sums: dict[str, float], per_prediction: float) -> float:
        return 0.0

    def evaluate(self, module, batches: list[dict]) -> dict[str, float]:
        return {}

    def export_heads(self) -> dict[str, torch.Tensor]:
        return {}


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def distributed(module: torch.nn.Module) -> bool:
    """Collectives only in training (all ranks step together); evaluation runs on one rank."""
    return module.training and world_size() > 1


WINDOW_KEY = "window_counts"


def local_count(batch: dict, name: str, n: torch.Tensor) -> torch.Tensor:
    """This rank's count of scored items for objective ``name``: over the whole gradient-
    accumulation window when the training loop supplies it in ``batch[WINDOW_KEY]`` (so k
    accumulated micro-batches give the gradient of one k-times larger batch), else ``n``."""
    w = batch.get(WINDOW_KEY)
    if w is None or name not in w:
        return n
    return torch.tensor(float(w[name]))


class WindowCounts:
    """Scored items per objective over an accumulation window (``counts[name]``: this rank's
    count), what the training loop puts in ``batch[WINDOW_KEY]``; with ``reduce`` (DDP) it starts
    one asynchronous all-reduce of all of them at once, before the forward passes, and ``total``
    waits for it where a loss needs the global count. A blocking all-reduce there made every rank
    wait mid-forward for the slowest (3-5% of a step of two CPU workers). Not a dict on purpose:
    DDP's input scatter (GPU) rebuilds dicts it finds in the inputs, and would drop the handle."""

    def __init__(self, counts: dict[str, float], device=None, reduce: bool = False):
        self.local = {k: float(v) for k, v in counts.items()}
        self._names = list(self.local)
        self._t = torch.tensor(list(self.local.values()), dtype=torch.float32, device=device)
        self._work = dist.all_reduce(self._t, async_op=True) if reduce and self._names else None
        self.reduced = self._work is not None

    def __contains__(self, name: str) -> bool:
        return name in self.local

    def __getitem__(self, name: str) -> float:
        return self.local[name]

    def total(self, name: str) -> torch.Tensor:
        """The count of ``name`` summed over ranks (this rank's without ``reduce``)."""
        self.settle()
        return self._t[self._names.index(name)]

    def settle(self) -> None:
        """Wait for the all-reduce (the step calls it at the end: an objective with nothing to
        score this window never asks for its total)."""
        if self._work is not None:
            self._work.wait()
            self._work = None


def window_count(batch: dict, name: str, n: torch.Tensor, module: torch.nn.Module) -> torch.Tensor:
    """The global count objective ``name`` normalises its loss by: from the loop's
    ``WindowCounts`` when it supplied them (summed over ranks in the collective it started), else
    ``global_count(local_count(...))`` now."""
    w = batch.get(WINDOW_KEY)
    if isinstance(w, WindowCounts) and name in w and (w.reduced or not distributed(module)):
        return w.total(name)
    return global_count(local_count(batch, name, n), module)


def global_count(n: torch.Tensor, module: torch.nn.Module) -> torch.Tensor:
    """The number of items in the global batch (all ranks), as float."""
    n = n.detach().to(torch.float32).reshape(1).clone()
    if distributed(module):
        dist.all_reduce(n)
    return n[0]


def scaled_mean(total: torch.Tensor, n_global: torch.Tensor, module: torch.nn.Module) -> torch.Tensor:
    """This rank's sum / the global count x world: DDP's average of these gradients is the
    gradient of the global-batch mean."""
    w = world_size() if distributed(module) else 1
    return total * (w / n_global.clamp(min=1.0))


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward returns this rank's slice of the summed upstream gradient."""

    @staticmethod
    def forward(ctx, x):
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        r, n = dist.get_rank(), grad.shape[0] // dist.get_world_size()
        return grad[r * n:(r + 1) * n]


def gather_with_grad(x: torch.Tensor, module: torch.nn.Module) -> tuple[torch.Tensor, int]:
    """(the global batch of ``x`` with every rank's rows, offset of this rank's rows in it).
    Gradients reach the rank that owns each row."""
    if not distributed(module):
        return x, 0
    return _GatherWithGrad.apply(x), dist.get_rank() * x.shape[0]


def batched(batches: list[dict], columns: tuple[str, ...], size: int = 64):
    """Slices of at most ``size`` rows of the given columns of numpy batches, as long tensors on
    the device of the caller (CPU here; moved by the caller)."""
    import numpy as np

    for b in batches:
        n = len(b[columns[0]])
        for i in range(0, n, size):
            yield {k: torch.as_tensor(np.asarray(b[k][i:i + size]), dtype=torch.long)
                   for k in columns if k in b}
