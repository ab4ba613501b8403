"""The encoder (a ``transformers`` masked-LM model) and the module that trains it on the objectives.

    hf = build_model(cfg.model, vocab_size, max_seq_len, pad_id)   # from a config, or init_from
    module = PretrainModule.from_config(cfg, hf, pad_id)
    loss, metrics = module(batch)                                  # batch: dict of tensors

The encoder is any ``AutoModelForMaskedLM`` model type (``model.arch``: bert by default, roberta,
...) built from a config with SDPA attention, or a local checkpoint directory
(``model.init_from``) for continued pretraining. The saved model is a plain Hugging Face
directory: ``AutoModelForMaskedLM`` / ``AutoModel`` / ``AutoTokenizer`` load it with no code of ours.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from ssl_core.config import Config, ModelConfig
from ssl_core.masking import IGNORE_INDEX
from ssl_core.objectives import OBJECTIVES, EncoderOutputs, Objective
from ssl_core.objectives.contrastive import pool
from ssl_core.objectives.mlm import mlm_loss

EVAL_RATIO = 0.15      # MLM is always *evaluated* at 15%, whatever the training ratio
EVAL_SEED = 1234


class ModelError(ValueError):
    """A model setting the user can fix (unknown arch, bad init_from directory)."""


def build_model(cfg: ModelConfig, vocab_size: int, max_seq_len: int, pad_id: int):
    """A masked-LM model: loaded from ``cfg.init_from`` or built from scratch for ``cfg.arch``."""
    from transformers import AutoConfig, AutoModelForMaskedLM

    check_model_config(cfg, max_seq_len)
    if cfg.init_from:
        return AutoModelForMaskedLM.from_pretrained(cfg.init_from, attn_implementation="sdpa")
    kw = dict(vocab_size=vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
              num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
              hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.attention_dropout,
              max_position_embeddings=max(max_seq_len, 64), type_vocab_size=2, pad_token_id=pad_id)
    if cfg.arch in ("roberta", "xlm-roberta", "camembert"):
        # positions are counted from pad_id + 1
        kw["max_position_embeddings"] = max(max_seq_len, 64) + pad_id + 2
    conf = AutoConfig.for_model(cfg.arch, **kw)
    if getattr(conf, "hidden_size", None) != cfg.hidden_size:
        raise ModelError(f"model.arch '{cfg.arch}' does not take BERT-style size settings "
                         "(hidden_size, num_layers, ...): use model.init_from with its own config")
    try:
        return AutoModelForMaskedLM.from_config(conf, attn_implementation="sdpa")
    except ValueError as e:
        if "sdpa" not in str(e).lower():
            raise ModelError(f"model.arch '{cfg.arch}' has no masked-LM model: {e}") from None
        return AutoModelForMaskedLM.from_config(conf)


build_mlm_model = build_model


def attention_impl(setting: str, device_type: str) -> str:
    """The attention kernel to train with. ``auto``: SDPA on GPUs (flash / memory-efficient
    kernels); on CPU the eager matmul-softmax-matmul: at seq 128 its bf16 GEMMs run the encoder's
    forward+backward ~1.8x faster than CPU SDPA's flash kernel, whose backward took 25% of a
    BERT-small step here (the whole step: ~1.3x)."""
    if setting != "auto":
        return setting
    return "sdpa" if device_type == "cuda" else "eager"


def set_attention(hf, impl: str) -> str:
    """Switch ``hf`` to attention ``impl`` in place; returns the one in use (a model without an
    SDPA path keeps eager)."""
    try:
        hf.set_attn_implementation(impl)
    except (ValueError, ImportError):
        pass
    return getattr(hf.config, "_attn_implementation", impl) or impl


def check_model_config(cfg: ModelConfig, max_seq_len: int) -> None:
    """ModelError (one line) for a model setting that cannot work, without building the model."""
    import json

    from transformers import AutoConfig
    if cfg.init_from:
        f = Path(cfg.init_from) / "config.json"
        if not f.is_file():
            raise ModelError(f"model.init_from '{cfg.init_from}' is not a Hugging Face model "
                             "directory (no config.json)")
        limit = json.loads(f.read_text()).get("max_position_embeddings", max_seq_len)
        if max_seq_len > limit:
            raise ModelError(f"data.max_seq_len {max_seq_len} exceeds the {limit} positions of "
                             f"model.init_from '{cfg.init_from}'")
        return
    try:
        AutoConfig.for_model(cfg.arch)
    except ValueError:
        raise ModelError(f"model.arch '{cfg.arch}' is not a transformers model type "
                         "(bert, roberta, ...)") from None


def mlm_head(hf) -> torch.nn.Module | None:
    """The module mapping encoder states (.., H) to vocabulary logits (.., V), or None when the
    model type keeps it inline (then the dense head of the full model is used)."""
    for name in ("cls", "lm_head"):       # BERT-family, RoBERTa-family
        head = getattr(hf, name, None)
        if isinstance(head, torch.nn.Module):
            return head
    for parts in _HEAD_PARTS:             # heads kept as several attributes
        mods = [getattr(hf, n, None) for n in parts]
        if all(isinstance(m, torch.nn.Module) for m in mods):
            return torch.nn.Sequential(*mods)
    return None


_HEAD_PARTS = (("vocab_transform", "activation", "vocab_layer_norm", "vocab_projector"),  # DistilBERT
               ("generator_predictions", "generator_lm_head"))                            # ELECTRA


def encode(hf, input_ids: torch.Tensor, attention_mask: torch.Tensor,
           token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Last hidden states (B, T, H) of the encoder inside a masked-LM model."""
    kw = {}
    if token_type_ids is not None and getattr(hf.config, "type_vocab_size", 0) >= 2:
        kw["token_type_ids"] = token_type_ids
    return hf.base_model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True,
                         **kw).last_hidden_state


class PretrainModule(torch.nn.Module):
    """Every enabled objective on one encoder: ``forward(batch) -> (weighted loss, metrics)``.

    One encoder pass over ``input_ids`` serves MLM and NSP; one pass over the stacked views serves
    the contrastive objective. DDP wraps this module; ``.hf`` is what gets exported."""

    def __init__(self, hf_model, objectives: dict[str, Objective], weights: dict[str, float],
                 pad_id: int = 0):
        super().__init__()
        self.hf = hf_model
        self.objectives = torch.nn.ModuleDict(objectives)
        self.weights = dict(weights)
        self.pad_id = pad_id

    @classmethod
    def from_config(cls, cfg: Config, hf_model, pad_id: int) -> "PretrainModule":
        o = cfg.objectives
        on = [n for n in OBJECTIVES if getattr(o, n)]
        return cls(hf_model, {n: OBJECTIVES[n].from_config(cfg, hf_model) for n in on},
                   {n: getattr(o, f"{n}_weight") for n in on}, pad_id)

    def encode(self, batch: dict) -> EncoderOutputs:
        out = EncoderOutputs()
        streams = {o.stream for o in self.objectives.values()}
        if "tokens" in streams:
            x = batch["input_ids"]                                    # (B, T)
            out.mask = (x != self.pad_id).long()
            out.hidden = encode(self.hf, x, out.mask, batch.get("token_type_ids"))
        if "views" in streams:
            v = torch.cat([batch["view_a"], batch["view_b"]])         # (2B, T): one pass
            out.view_mask = (v != self.pad_id).long()
            out.view_hidden = encode(self.hf, v, out.view_mask)
        return out

    def forward(self, batch: dict):
        out = self.encode(batch)
        total, metrics = None, {}
        for name, obj in self.objectives.items():
            loss, m = obj(out, batch)
            loss = loss * self.weights[name]
            total = loss if total is None else total + loss
            metrics.update(m)
        return total, metrics

    def extra_heads(self) -> dict[str, torch.Tensor]:
        """Trained heads that are not part of the HF model (NSP head), for the export."""
        out = {}
        if "nsp" in self.objectives:
            out.update({f"nsp_head.{k}": v.detach().cpu().contiguous()
                        for k, v in self.objectives["nsp"].head.state_dict().items()})
        return out


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token states over real tokens.  (B, T, H), (B, T) -> (B, H)"""
    return pool(hidden, attention_mask, "mean")


def unwrap(model) -> torch.nn.Module:
    """The Hugging Face model inside DDP / torch.compile / PretrainModule wrappers."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, PretrainModule):
            model = model.hf
        else:
            return model


def mlm_logits_at(hf, ids: torch.Tensor, mask: torch.Tensor, sel: torch.Tensor,
                  token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Vocabulary logits (M, V) at the selected positions ``sel`` (B, T)."""
    head = mlm_head(hf)
    if head is None:
        return hf(input_ids=ids, attention_mask=mask).logits[sel]
    return head(encode(hf, ids, mask, token_type_ids)[sel])


@torch.no_grad()
def evaluate_mlm(model, batches: Iterable[tuple[np.ndarray, np.ndarray]], pad_id: int,
                 batch_size: int = 64) -> dict[str, float]:
    """MLM loss/accuracy over (masked ids, labels) batches, masked at the fixed eval ratio/seed."""
    hf = unwrap(model)
    was_training = hf.training
    hf.eval()
    tot_loss, tot_correct, tot_n = 0.0, 0, 0
    dev = next(hf.parameters()).device
    for ids, labels in batches:
        for i in range(0, len(ids), batch_size):
            x = torch.as_tensor(np.asarray(ids[i:i + batch_size]), dtype=torch.long, device=dev)
            y = torch.as_tensor(np.asarray(labels[i:i + batch_size]), dtype=torch.long, device=dev)
            sel = y != IGNORE_INDEX
            if not sel.any():
                continue
            total, correct = mlm_loss(mlm_logits_at(hf, x, (x != pad_id).long(), sel), y[sel])
            tot_loss += float(total)
            tot_correct += int(correct)
            tot_n += int(sel.sum())
    hf.train(was_training)
    if tot_n == 0:
        return {"eval_mlm_loss": float("nan"), "eval_mlm_accuracy": float("nan"), "eval_tokens": 0}
    return {"eval_mlm_loss": tot_loss / tot_n, "eval_mlm_accuracy": tot_correct / tot_n,
            "eval_tokens": tot_n}


@torch.no_grad()
def evaluate_nsp(module: PretrainModule, batches: Iterable[dict], batch_size: int = 64) -> dict:
    """NSP accuracy over held-out pair rows (dicts with input_ids, token_type_ids, nsp_label)."""
    from ssl_core.objectives.nsp import nsp_loss
    if "nsp" not in module.objectives:
        return {}
    was = module.training
    module.eval()
    dev = next(module.parameters()).device
    correct = n = 0
    for b in batches:
        for i in range(0, len(b["input_ids"]), batch_size):
            t = {k: torch.as_tensor(np.asarray(b[k][i:i + batch_size]), dtype=torch.long, device=dev)
                 for k in ("input_ids", "token_type_ids", "nsp_label") if k in b}
            x = t["input_ids"]
            h = encode(module.hf, x, (x != module.pad_id).long(), t.get("token_type_ids"))
            _, c, s = nsp_loss(module.objectives["nsp"].head(h[:, 0]), t["nsp_label"])
            correct += int(c)
            n += int(s)
    module.train(was)
    return {"eval_nsp_accuracy": correct / n if n else float("nan"), "eval_nsp_pairs": n}
