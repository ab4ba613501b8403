"""Masked language modeling: cross-entropy at the masked positions only.

The vocabulary projection runs only on the masked positions (sparse prediction): at a 15% mask it
costs ~15% of the dense head. Labels are -100 everywhere else. Masks are drawn per batch in
``prepare`` from (seed, epoch, row content) at the ratio of the schedule at the current training
progress: new masks every epoch, the same whatever the number of workers.

``mlm_metrics`` is the one held-out MLM evaluator: the trainer (before and after training) and
the evaluation suite (``sslpipe evaluate --tasks mlm``) both call it."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ssl_core.encoder import mlm_head, mlm_logits_at
from ssl_core.masking import IGNORE_INDEX, mask_rows, ratio_at
from ssl_core.objectives.base import (EncoderOutputs, Objective, batched, scaled_mean,
                                      window_count)


BUCKET = 64


def bucketed_targets(labels: torch.Tensor, bucket: int = BUCKET) -> tuple[torch.Tensor, torch.Tensor]:
    """(flat positions, targets) of the masked tokens of ``labels`` (B, T), padded up to a multiple
    of ``bucket`` with position 0 and target -100 (which ``mlm_loss`` ignores).

    The head's GEMMs then see a few row counts instead of a new one every batch: oneDNN creates (and
    on AMX/AVX-512 JIT-compiles) a kernel per new shape, so a fresh process (every Ray Train
    worker) paid ~10% of its first minutes for it (60 steps of BERT-mini, batch 16: 128 vs 150
    samples/s against the same loop run again in the same process)."""
    flat = labels.reshape(-1)
    idx = (flat != IGNORE_INDEX).nonzero().squeeze(1)
    m = idx.numel()
    pad = -m % bucket
    y = flat[idx]
    if pad and m:
        idx = torch.cat([idx, idx.new_zeros(pad)])
        y = torch.cat([y, y.new_full((pad,), IGNORE_INDEX)])
    return idx, y


def mlm_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy, number of correct argmax predictions) of logits (M, V) for
    targets (M,)."""
    logits = logits.float()
    total = F.cross_entropy(logits, targets, reduction="sum", ignore_index=IGNORE_INDEX)
    with torch.no_grad():
        correct = (logits.argmax(-1) == targets).sum()
    return total, correct


@torch.no_grad()
def mlm_metrics(hf, batches: list[dict], pad_id: int, batch_size: int = 64) -> dict[str, float]:
    """MLM loss / accuracy over held-out rows already masked (``input_ids``, ``labels``, and
    ``token_type_ids`` when present), in eval mode, fp32. -> mlm_loss, mlm_accuracy, mlm_tokens
    (NaN loss/accuracy when nothing is masked)."""
    was = hf.training
    hf.eval()
    dev = next(hf.parameters()).device
    loss = correct = n = 0.0
    for t in batched(batches, ("input_ids", "labels", "token_type_ids"), batch_size):
        x, y = t["input_ids"].to(dev), t["labels"].to(dev)              # (B, T)
        sel = y != IGNORE_INDEX
        if not sel.any():
            continue
        tt = t["token_type_ids"].to(dev) if "token_type_ids" in t else None
        total, c = mlm_loss(mlm_logits_at(hf, x, (x != pad_id).long(), sel, tt), y[sel])
        loss, correct, n = loss + float(total), correct + int(c), n + int(sel.sum())
    hf.train(was)
    if not n:
        return {"mlm_loss": float("nan"), "mlm_accuracy": float("nan"), "mlm_tokens": 0.0}
    return {"mlm_loss": loss / n, "mlm_accuracy": correct / n, "mlm_tokens": float(n)}


class MlmObjective(Objective):
    name = "mlm"
    stream = "tokens"
    uses_hf_head = True
    columns = ("labels",)

    def __init__(self, head, masker=None, masking=None, pad_id: int = 0):
        super().__init__()
        # the head belongs to the Hugging Face model (it is saved with it): not registered here
        self.__dict__["head"] = head
        self.masker, self.masking, self.pad_id = masker, masking, pad_id

    @classmethod
    def from_config(cls, cfg, hf_model, builder=None):
        return cls(mlm_head(hf_model), builder.masker() if builder is not None else None,
                   cfg.masking, builder.sp["pad"] if builder is not None else 0)

    def prepare(self, batch: dict, progress: float) -> dict[str, float]:
        """Draw this batch's masks in place (``input_ids`` masked, ``labels`` added)."""
        m = self.masking
        ratio = ratio_at(m.schedule, m.ratio, m.ratio_end, progress)
        batch["input_ids"], batch["labels"] = mask_rows(self.masker, batch, m.seed, ratio)
        return {"mask_ratio": ratio}

    def count(self, batch: dict) -> float:
        return float((np.asarray(batch["labels"]) != IGNORE_INDEX).sum())

    def forward(self, out: EncoderOutputs, batch: dict):
        labels = batch["labels"]                            # (B, T), -100 = not predicted
        m = (labels != IGNORE_INDEX).sum()                  # M masked tokens
        idx, y = bucketed_targets(labels)                   # (Mb,): M masked + ignored padding
        logits = self.head(out.hidden.reshape(-1, out.hidden.shape[-1])[idx])    # (Mb, V)
        total, correct = mlm_loss(logits, y)
        n = window_count(batch, self.name, m, self)
        loss = scaled_mean(total, n, self)
        return loss, {"mlm_loss": total.detach(), "mlm_correct": correct, "mlm_count": m.float()}

    def head_flops(self, sums: dict[str, float], per_prediction: float) -> float:
        return sums["mlm_count"] * per_prediction

    def evaluate(self, module, batches: list[dict]) -> dict[str, float]:
        r = mlm_metrics(module.hf, batches, module.pad_id)
        return {f"eval_{k}": v for k, v in r.items()}
