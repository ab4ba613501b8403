"""Contrastive learning: InfoNCE with temperature τ between two views of each text.

Positives are the two views of one text; negatives are the other texts' second views in the
*global* batch: the second views are all-gathered across ranks with each rank's rows keeping
their gradient, so 2 workers x B sees the same negatives (and gives the same loss and gradient)
as 1 worker x 2B. An optional projection MLP (SimCSE) is applied in training only.
Metrics: accuracy (positive ranked first), alignment and uniformity (Wang & Isola, 2020) and the
positive-vs-negative cosine gap."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_core.encoder import hidden_dropouts, pool
from ssl_core.objectives.base import (EncoderOutputs, Objective, gather_with_grad, scaled_mean,
                                      window_count)


def info_nce(queries: torch.Tensor, keys: torch.Tensor, temperature: float,
             offset: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """InfoNCE of queries (B, H) against keys (N, H): the positive of query i is key offset+i,
    every other key is a negative. Returns (summed loss over the B queries, correct, the (B, N)
    cosine matrix)."""
    q = F.normalize(queries.float(), dim=-1)
    k = F.normalize(keys.float(), dim=-1)
    cos = q @ k.T                                                   # (B, N)
    target = torch.arange(len(q), device=q.device) + offset
    total = F.cross_entropy(cos / temperature, target, reduction="sum")
    with torch.no_grad():
        correct = (cos.argmax(-1) == target).sum()
    return total, correct, cos.detach()


@torch.no_grad()
def alignment_uniformity(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Alignment E||f(x)-f(x+)||² over positive pairs and uniformity log E exp(-2||f(x)-f(y)||²)
    over distinct rows of ``a`` (normalized embeddings; lower is better for both)."""
    a = F.normalize(a.float(), dim=-1)
    b = F.normalize(b.float(), dim=-1)
    align = (a - b).pow(2).sum(-1).mean()
    if len(a) < 2:
        return align, torch.zeros((), device=a.device)
    sq = torch.pdist(a).pow(2)
    return align, sq.mul(-2).exp().mean().log()


class ContrastiveObjective(Objective):
    name = "contrastive"
    stream = "views"
    sum_keys = ("loss", "correct", "count", "pos_sim", "neg_sim", "alignment", "uniformity")

    def __init__(self, hidden_size: int, temperature: float = 0.05, pooling: str = "mean",
                 projection: bool = False, start: float = 0.0, dropout: float = -1.0,
                 dropouts: list | None = None):
        super().__init__()
        self.temperature, self.pooling, self.start = temperature, pooling, start
        # the encoder's dropout modules (not registered: they belong to the Hugging Face model),
        # set to ``dropout`` once contrastive has joined
        self.dropout, self.__dict__["dropouts"] = dropout, list(dropouts or [])
        self.proj = torch.nn.Sequential(torch.nn.Linear(hidden_size, hidden_size),
                                        torch.nn.Tanh()) if projection else None

    @classmethod
    def from_config(cls, cfg, hf_model, builder=None):
        c = cfg.contrastive
        return cls(hf_model.config.hidden_size, c.temperature, c.pooling, c.projection, c.start,
                   c.dropout, hidden_dropouts(hf_model))

    def prepare(self, batch: dict, progress: float) -> dict[str, float]:
        """Before ``start`` (a share of training) the views are dropped from the batch: no
        encoder pass over them, no loss (ranks agree on ``progress``, so they drop together).
        From then on the encoder's dropout is ``dropout`` when that is set (>= 0)."""
        if progress < self.start:
            batch["view_a"], batch["view_b"] = batch["view_a"][:0], batch["view_b"][:0]
            return {}
        if self.dropout >= 0:                    # a function of progress: the same after a resume
            for m in self.dropouts:
                m.p = self.dropout
        return {}

    def embed(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        e = pool(hidden, mask, self.pooling)
        return self.proj(e) if (self.proj is not None and self.training) else e

    def forward(self, out: EncoderOutputs, batch: dict):
        if out.view_hidden is None:                                     # not started (prepare)
            zero = sum((p.sum() * 0.0 for p in self.parameters()), out.hidden.new_zeros(()))
            return zero, {f"contrastive_{k}": out.hidden.new_zeros(()) for k in self.sum_keys}
        e = self.embed(out.view_hidden, out.view_mask)                  # (2B, H)
        a, b = e.chunk(2)                                               # views a, views b
        keys, offset = gather_with_grad(b, self)                        # (N, H) global batch
        total, correct, cos = info_nce(a, keys, self.temperature, offset)
        B = a.shape[0]
        n = window_count(batch, self.name, torch.tensor(B), self)
        loss = scaled_mean(total, n, self)
        with torch.no_grad():
            pos = cos[torch.arange(B), torch.arange(B) + offset]        # (B,)
            neg = (cos.sum(-1) - pos) / max(1, cos.shape[1] - 1)        # mean negative cosine per row
            align, unif = alignment_uniformity(a, b)
        return loss, {"contrastive_loss": total.detach(), "contrastive_correct": correct,
                      "contrastive_count": torch.tensor(float(B)), "contrastive_pos_sim": pos.sum(),
                      "contrastive_neg_sim": neg.sum(), "contrastive_alignment": align * B,
                      "contrastive_uniformity": unif * B}

    def count(self, batch: dict) -> float:
        return float(len(batch["view_a"]))

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        base = super().summarize(sums)
        if not base:                          # nothing scored in the window
            return {}
        c = sums["contrastive_count"]
        return dict(base, contrastive_alignment=sums["contrastive_alignment"] / c,
                    contrastive_uniformity=sums["contrastive_uniformity"] / c,
                    contrastive_sim_gap=(sums["contrastive_pos_sim"] - sums["contrastive_neg_sim"]) / c)
