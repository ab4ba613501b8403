"""Encoder + MLM head (a ``transformers`` BERT), the sparse MLM loss, and fixed-mask evaluation.

The saved model is a plain Hugging Face directory: ``AutoModelForMaskedLM.from_pretrained(dir)``
and ``AutoTokenizer.from_pretrained(dir)`` load it with no code of ours.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from ssl_core.config import ModelConfig
from ssl_core.masking import IGNORE_INDEX, MlmMasker

EVAL_RATIO = 0.15      # MLM is always *evaluated* at 15%, whatever the training ratio
EVAL_SEED = 1234


def build_mlm_model(cfg: ModelConfig, vocab_size: int, max_seq_len: int, pad_id: int):
    from transformers import BertConfig, BertForMaskedLM

    conf = BertConfig(
        vocab_size=vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
        hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout,
        max_position_embeddings=max(max_seq_len, 64), type_vocab_size=2, pad_token_id=pad_id,
    )
    conf._attn_implementation = "sdpa"
    return BertForMaskedLM(conf)


def mlm_loss_from_hidden(hidden: torch.Tensor, labels: torch.Tensor, head) -> tuple[torch.Tensor, dict]:
    """Cross-entropy over masked positions only; the vocabulary projection runs only there.

    hidden: (B, T, H) encoder output; labels: (B, T) with -100 at unmasked positions."""
    sel = labels != IGNORE_INDEX                       # (B, T)
    h = hidden[sel]                                    # (M, H)   M = masked positions
    y = labels[sel]                                    # (M,)
    logits = head(h).float()                           # (M, V)
    loss = F.cross_entropy(logits, y)
    with torch.no_grad():
        correct = (logits.argmax(-1) == y).sum()
    return loss, {"mlm_loss": loss.detach(), "mlm_correct": correct, "mlm_count": torch.tensor(y.numel())}


class MlmModule(torch.nn.Module):
    """Training wrapper: forward = sparse MLM loss. DDP wraps this, ``.hf`` is what gets saved."""

    def __init__(self, hf_model):
        super().__init__()
        self.hf = hf_model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor):
        enc = self.hf.bert(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
        return mlm_loss_from_hidden(enc.last_hidden_state, labels, self.hf.cls)


def unwrap(model) -> torch.nn.Module:
    """The Hugging Face model inside DDP / MlmModule wrappers."""
    while hasattr(model, "module") or isinstance(model, MlmModule):
        model = model.module if hasattr(model, "module") else model.hf
    return model


@torch.no_grad()
def evaluate_mlm(model, batches: Iterable[np.ndarray], masker: MlmMasker, pad_id: int,
                 batch_size: int = 64) -> dict[str, float]:
    """MLM loss/accuracy at a fixed 15% mask and fixed seed over (B, T) id arrays (unmasked)."""
    inner = MlmModule(unwrap(model))
    was_training = inner.training
    inner.eval()
    fixed = MlmMasker(masker.vocab_size, masker.mask_id, masker.special_ids, ratio=EVAL_RATIO)
    tot_loss, tot_correct, tot_n = 0.0, 0, 0
    for ids in batches:
        for i in range(0, len(ids), batch_size):
            chunk = np.asarray(ids[i:i + batch_size])
            masked, labels = fixed.keyed(chunk, seed=EVAL_SEED, epoch=0)
            x = torch.as_tensor(masked, dtype=torch.long)
            y = torch.as_tensor(labels, dtype=torch.long)
            loss, m = inner(x, (x != pad_id).long(), y)
            n = int(m["mlm_count"])
            tot_loss += float(loss) * n
            tot_correct += int(m["mlm_correct"])
            tot_n += n
    inner.train(was_training)
    if tot_n == 0:
        return {"eval_mlm_loss": float("nan"), "eval_mlm_accuracy": float("nan"), "eval_tokens": 0}
    return {"eval_mlm_loss": tot_loss / tot_n, "eval_mlm_accuracy": tot_correct / tot_n,
            "eval_tokens": tot_n}


def save_hf(model, tokenizer_dir: str | Path, out_dir: str | Path) -> Path:
    """Write model (safetensors) + tokenizer files into one Hugging Face directory."""
    import shutil

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    unwrap(model).save_pretrained(out)
    for f in Path(tokenizer_dir).iterdir():
        if f.is_file():
            shutil.copy2(f, out / f.name)
    return out
