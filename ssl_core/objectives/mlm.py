"""Masked language modeling: cross-entropy at the masked positions only.

The vocabulary projection runs only on the masked positions (sparse prediction): at a 15% mask it
costs ~15% of the dense head. Labels are -100 everywhere else."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_core.masking import IGNORE_INDEX
from ssl_core.objectives.base import EncoderOutputs, Objective, global_count, local_count, scaled_mean


def mlm_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy, number of correct argmax predictions) of logits (M, V) for
    targets (M,)."""
    logits = logits.float()
    total = F.cross_entropy(logits, targets, reduction="sum")
    with torch.no_grad():
        correct = (logits.argmax(-1) == targets).sum()
    return total, correct


class MlmObjective(Objective):
    name = "mlm"
    stream = "tokens"

    def __init__(self, head):
        super().__init__()
        # the head belongs to the Hugging Face model (it is saved with it): not registered here
        self.__dict__["head"] = head

    @classmethod
    def from_config(cls, cfg, hf_model):
        from ssl_core.model import mlm_head
        return cls(mlm_head(hf_model))

    def forward(self, out: EncoderOutputs, batch: dict):
        labels = batch["labels"]                            # (B, T), -100 = not predicted
        sel = labels != IGNORE_INDEX
        y = labels[sel]                                     # (M,)
        logits = self.head(out.hidden[sel])                 # (M, V)
        total, correct = mlm_loss(logits, y)
        n = global_count(local_count(batch, self.name, sel.sum()), self)
        loss = scaled_mean(total, n, self)
        return loss, {"mlm_loss": total.detach(), "mlm_correct": correct,
                      "mlm_count": torch.tensor(float(y.numel()))}
