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
from ssl_core.masking import IGNORE_INDEX

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


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token states over real tokens.  (B, T, H), (B, T) -> (B, H)"""
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE of paired embeddings (B, H): row i of ``a`` is positive with row i of ``b``, the
    other rows of ``b`` are its negatives. Returns (loss, number of rows whose positive ranks first)."""
    a = F.normalize(a.float(), dim=-1)
    b = F.normalize(b.float(), dim=-1)
    logits = a @ b.T / temperature                                  # (B, B)
    target = torch.arange(len(a), device=a.device)
    loss = F.cross_entropy(logits, target)
    return loss, (logits.argmax(-1) == target).sum()


class PretrainModule(torch.nn.Module):
    """All enabled objectives on one encoder: forward(batch) -> (summed loss, metric tensors).

    MLM: sparse cross-entropy at masked positions; NSP: 2-way head on [CLS] (training only);
    contrastive: InfoNCE(τ) between mean-pooled views, the rest of the batch as negatives."""

    def __init__(self, hf_model, mlm: bool = True, nsp: bool = False, contrastive: bool = False,
                 temperature: float = 0.05, pad_id: int = 0):
        super().__init__()
        self.hf = hf_model
        self.mlm, self.use_nsp, self.contrastive = mlm, nsp, contrastive
        self.temperature = temperature
        self.pad_id = pad_id
        H = hf_model.config.hidden_size
        self.nsp_head = torch.nn.Sequential(torch.nn.Linear(H, H), torch.nn.Tanh(),
                                            torch.nn.Linear(H, 2)) if nsp else None

    def forward(self, batch: dict[str, torch.Tensor]):
        total = None
        m: dict[str, torch.Tensor] = {}
        if self.mlm or self.use_nsp:
            x = batch["input_ids"]                                   # (B, T)
            enc = self.hf.bert(input_ids=x, attention_mask=(x != self.pad_id).long(),
                               token_type_ids=batch.get("token_type_ids"), return_dict=True)
            h = enc.last_hidden_state                                # (B, T, H)
            if self.mlm:
                loss, mm = mlm_loss_from_hidden(h, batch["labels"], self.hf.cls)
                total = loss
                m.update(mm)
            if self.use_nsp:
                logits = self.nsp_head(h[:, 0]).float()              # (B, 2)
                y = batch["nsp_label"]
                labeled = y != IGNORE_INDEX                          # one-sentence chunks: -100
                n = labeled.sum()
                loss = F.cross_entropy(logits, y, ignore_index=IGNORE_INDEX) if n > 0 \
                    else logits.sum() * 0.0                         # keep the graph for DDP
                total = loss if total is None else total + loss
                m.update(nsp_loss=loss.detach(), nsp_correct=((logits.argmax(-1) == y) & labeled).sum(),
                         nsp_count=n)
        if self.contrastive:
            v = torch.cat([batch["view_a"], batch["view_b"]])        # (2B, T): one encoder pass
            att = (v != self.pad_id).long()
            e = mean_pool(self.hf.bert(input_ids=v, attention_mask=att, return_dict=True).last_hidden_state, att)
            ea, eb = e.chunk(2)
            loss, correct = info_nce(ea, eb, self.temperature)
            total = loss if total is None else total + loss
            m.update(con_loss=loss.detach(), con_correct=correct, con_count=torch.tensor(len(ea)))
        return total, m


def unwrap(model) -> torch.nn.Module:
    """The Hugging Face model inside DDP / MlmModule / PretrainModule wrappers."""
    while hasattr(model, "module") or isinstance(model, (MlmModule, PretrainModule)):
        model = model.module if hasattr(model, "module") else model.hf
    return model


@torch.no_grad()
def evaluate_mlm(model, batches: Iterable[tuple[np.ndarray, np.ndarray]], pad_id: int,
                 batch_size: int = 64) -> dict[str, float]:
    """MLM loss/accuracy over (masked ids, labels) batches, masked at the fixed eval ratio/seed."""
    inner = MlmModule(unwrap(model))
    was_training = inner.training
    inner.eval()
    tot_loss, tot_correct, tot_n = 0.0, 0, 0
    for ids, labels in batches:
        for i in range(0, len(ids), batch_size):
            x = torch.as_tensor(np.asarray(ids[i:i + batch_size]), dtype=torch.long)
            y = torch.as_tensor(np.asarray(labels[i:i + batch_size]), dtype=torch.long)
            if not (y != IGNORE_INDEX).any():
                continue
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
