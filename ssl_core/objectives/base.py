"""The objective interface and the distributed helpers the objectives share."""
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


class Objective(torch.nn.Module):
    """``forward(outputs, batch) -> (loss, metrics)``; see the package docstring."""
    name = ""
    stream = "tokens"          # which encoder pass it reads: "tokens" (input_ids) or "views"

    @classmethod
    def from_config(cls, cfg, hf_model) -> "Objective":
        raise NotImplementedError


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
