"""Next-sentence prediction: a 2-way head on the [CLS] state (BERT's pooler + classifier),
cross-entropy over IsNext / NotNext. Rows labelled -100 (one-sentence chunks) are not scored.

The head is not part of the Hugging Face model: the export saves it beside the model
(``nsp_head.*`` in ``sslpipe_heads.safetensors``), and ``nsp_metrics`` (the one held-out NSP
evaluator, used by the trainer and by ``sslpipe evaluate --tasks nsp``) scores it."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ssl_core.encoder import encode
from ssl_core.masking import IGNORE_INDEX
from ssl_core.objectives.base import (EncoderOutputs, Objective, batched, scaled_mean,
                                      window_count)

HEAD_PREFIX = "nsp_head."


def nsp_head(hidden_size: int) -> torch.nn.Module:
    """[CLS] state (B, H) -> IsNext/NotNext logits (B, 2)."""
    return torch.nn.Sequential(torch.nn.Linear(hidden_size, hidden_size), torch.nn.Tanh(),
                               torch.nn.Linear(hidden_size, 2))


def nsp_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(summed cross-entropy, correct, scored rows) of logits (B, 2) for labels (B,) in
    {0 IsNext, 1 NotNext, -100 unlabeled}."""
    logits = logits.float()
    scored = labels != IGNORE_INDEX
    total = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    with torch.no_grad():
        correct = ((logits.argmax(-1) == labels) & scored).sum()
    return total, correct, scored.sum()


@torch.no_grad()
def nsp_metrics(encoder, head: torch.nn.Module, batches: list[dict], pad_id: int,
                batch_size: int = 64) -> dict[str, float]:
    """NSP accuracy of ``head`` on the [CLS] state of ``encoder`` (a masked-LM or bare model) over
    rows with ``input_ids``, ``token_type_ids`` and ``nsp_label``; unlabelled rows are not scored.
    -> nsp_accuracy (NaN without a labelled pair), nsp_pairs."""
    was = encoder.training, head.training
    encoder.eval()
    head.eval()
    dev = next(encoder.parameters()).device
    correct = n = 0
    for t in batched(batches, ("input_ids", "token_type_ids", "nsp_label"), batch_size):
        x = t["input_ids"].to(dev)
        tt = t["token_type_ids"].to(dev) if "token_type_ids" in t else None
        h = encode(encoder, x, (x != pad_id).long(), tt)                       # (B, T, H)
        _, c, s = nsp_loss(head(h[:, 0]), t["nsp_label"].to(dev))
        correct, n = correct + int(c), n + int(s)
    encoder.train(was[0])
    head.train(was[1])
    return {"nsp_accuracy": correct / n if n else float("nan"), "nsp_pairs": float(n)}


class NspObjective(Objective):
    name = "nsp"
    stream = "tokens"
    columns = ("nsp_label",)

    def __init__(self, hidden_size: int):
        super().__init__()
        self.head = nsp_head(hidden_size)

    @classmethod
    def from_config(cls, cfg, hf_model, builder=None):
        return cls(hf_model.config.hidden_size)

    def count(self, batch: dict) -> float:
        return float((np.asarray(batch["nsp_label"]) != IGNORE_INDEX).sum())

    def forward(self, out: EncoderOutputs, batch: dict):
        logits = self.head(out.hidden[:, 0])                # (B, 2) from [CLS]
        total, correct, scored = nsp_loss(logits, batch["nsp_label"])
        n = window_count(batch, self.name, scored, self)
        loss = scaled_mean(total, n, self)                  # 0 (graph kept) when nothing is scored
        return loss, {"nsp_loss": total.detach(), "nsp_correct": correct,
                      "nsp_count": scored.detach().float()}

    def evaluate(self, module, batches: list[dict]) -> dict[str, float]:
        r = nsp_metrics(module.hf, self.head, [b for b in batches if "nsp_label" in b], module.pad_id)
        return {f"eval_{k}": v for k, v in r.items()}

    def export_heads(self) -> dict[str, torch.Tensor]:
        return {f"{HEAD_PREFIX}{k}": v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}
