"""Next-sentence prediction: a 2-way head on the [CLS] state (BERT's pooler + classifier),
cross-entropy over IsNext / NotNext. Rows labelled -100 (one-sentence chunks) are not scored."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_core.masking import IGNORE_INDEX
from ssl_core.objectives.base import EncoderOutputs, Objective, global_count, local_count, scaled_mean


def nsp_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(summed cross-entropy, correct, scored rows) of logits (B, 2) for labels (B,) in
    {0 IsNext, 1 NotNext, -100 unlabeled}."""
    logits = logits.float()
    scored = labels != IGNORE_INDEX
    total = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    with torch.no_grad():
        correct = ((logits.argmax(-1) == labels) & scored).sum()
    return total, correct, scored.sum()


class NspObjective(Objective):
    name = "nsp"
    stream = "tokens"

    def __init__(self, hidden_size: int):
        super().__init__()
        self.head = torch.nn.Sequential(torch.nn.Linear(hidden_size, hidden_size), torch.nn.Tanh(),
                                        torch.nn.Linear(hidden_size, 2))

    @classmethod
    def from_config(cls, cfg, hf_model):
        return cls(hf_model.config.hidden_size)

    def forward(self, out: EncoderOutputs, batch: dict):
        logits = self.head(out.hidden[:, 0])                # (B, 2) from [CLS]
        total, correct, scored = nsp_loss(logits, batch["nsp_label"])
        n = global_count(local_count(batch, self.name, scored), self)
        loss = scaled_mean(total, n, self)                  # 0 (graph kept) when nothing is scored
        return loss, {"nsp_loss": total.detach(), "nsp_correct": correct,
                      "nsp_count": scored.detach().float()}
