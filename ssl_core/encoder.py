"""The encoder: a ``transformers`` masked-LM model, built from a config or loaded for continued
pretraining, and the few things every other module needs to know about it.

    hf = build_model(cfg.model, vocab_size, max_seq_len, pad_id)    # from a config, or init_from
    set_attention(hf, attention_impl(cfg.model.attention, "cpu"))  # the training kernel
    h = encode(hf, input_ids, attention_mask)                       # (B, T, H) last hidden states
    logits = mlm_head(hf)(h[sel])                                   # (M, V) at selected positions

Any ``AutoModelForMaskedLM`` model type works (``model.arch``: bert by default, roberta,
distilbert, electra, ...). It is built with SDPA attention, which is what the exported directory
loads with; the training loop switches the kernel per device (``attention_impl``). The saved model
is a plain Hugging Face directory: ``AutoModelForMaskedLM`` / ``AutoModel`` / ``AutoTokenizer``
load it with no code of ours.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ssl_core.config import ModelConfig
from ssl_core.errors import UserError

ROBERTA_LIKE = ("roberta", "xlm-roberta", "camembert")   # position ids start after the padding index


class ModelError(UserError):
    """A model setting the user can fix (unknown arch, bad init_from directory)."""


def build_model(cfg: ModelConfig, vocab_size: int, max_seq_len: int, pad_id: int):
    """A masked-LM model: loaded from ``cfg.init_from`` or built from scratch for ``cfg.arch``."""
    from transformers import AutoConfig, AutoModelForMaskedLM

    check_model_config(cfg, max_seq_len)
    if cfg.init_from:     # sizes are the checkpoint's; dropout is a training setting: ours
        return AutoModelForMaskedLM.from_pretrained(
            cfg.init_from, attn_implementation="sdpa", hidden_dropout_prob=cfg.dropout,
            attention_probs_dropout_prob=cfg.attention_dropout)
    positions = max(max_seq_len, 64)
    kw = dict(vocab_size=vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
              num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
              hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.attention_dropout,
              max_position_embeddings=positions, type_vocab_size=2, pad_token_id=pad_id)
    if cfg.arch in ROBERTA_LIKE:
        kw["max_position_embeddings"] = positions + pad_id + 2
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


def check_model_config(cfg: ModelConfig, max_seq_len: int) -> None:
    """ModelError (one line) for a model setting that cannot work, without building the model."""
    from transformers import AutoConfig

    if cfg.init_from:
        f = Path(cfg.init_from) / "config.json"
        if not f.is_file():
            raise ModelError(f"model.init_from '{cfg.init_from}' is not a Hugging Face model "
                             "directory (no config.json)")
        conf = json.loads(f.read_text())
        limit = usable_positions(conf) or max_seq_len
        if max_seq_len > limit:
            raise ModelError(f"data.max_seq_len {max_seq_len} exceeds the {limit} positions of "
                             f"model.init_from '{cfg.init_from}'")
        return
    try:
        AutoConfig.for_model(cfg.arch)
    except ValueError:
        raise ModelError(f"model.arch '{cfg.arch}' is not a transformers model type "
                         "(bert, roberta, ...)") from None


def usable_positions(config) -> int | None:
    """How many tokens a sequence may have: ``max_position_embeddings``, less the offset that
    RoBERTa-style models add to position ids (pad_token_id + 1). ``config``: a transformers config
    or its dict."""
    get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
    n = get("max_position_embeddings")
    if not n:
        return None
    if get("model_type", "") in ROBERTA_LIKE:
        n -= (get("pad_token_id") or 0) + 1
    return int(n)


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
    """Last hidden states (B, T, H) of the encoder inside a masked-LM model (or of a bare
    encoder); segment ids are passed only to models that have segment embeddings for them."""
    kw = {}
    if token_type_ids is not None and getattr(hf.config, "type_vocab_size", 0) >= 2:
        kw["token_type_ids"] = token_type_ids
    base = getattr(hf, "base_model", hf)
    return base(input_ids=input_ids, attention_mask=attention_mask, return_dict=True,
                **kw).last_hidden_state


def hidden_dropouts(hf) -> list[torch.nn.Dropout]:
    """The dropout modules on hidden states (what ``model.dropout`` sets), not those on attention
    probabilities (``model.attention_dropout``: owned by a module with query/key projections)."""
    out = []
    for parent in hf.modules():
        if any(hasattr(parent, k) for k in ("query", "q_lin", "q_proj")):
            continue
        out += [c for c in parent.children() if isinstance(c, torch.nn.Dropout)]
    return out


class CpuDropout(torch.nn.Dropout):
    """``nn.Dropout`` that draws its CPU mask from full-range int64 random numbers, four 16-bit
    quarters per draw (an element is kept iff its quarter is >= p * 65536 - 32768: p exact to
    1/65536), instead of torch's CPU ``bernoulli_``, a float draw per element: the mask of 2M
    elements costs ~1.5 ms instead of ~10 ms on 2 cores.
    Same seeding (the default generator: per-step seeds keep runs reproducible); off the CPU, in
    eval, or at p = 0 it is ``nn.Dropout``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or self.inplace or x.device.type != "cpu":
            return super().forward(x)
        n = x.numel()
        bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-2 ** 63, None)
        keep = bits.view(torch.int16)[:n].view(x.shape) >= round(self.p * 65536) - 32768
        return x * keep.to(x.dtype).mul_(1.0 / (1.0 - self.p))


def use_cpu_dropout(hf) -> int:
    """Give the hidden-state dropouts of ``hf`` (``hidden_dropouts``) the faster CPU mask, in
    place (same modules, same ``p``: what sets their rate later still reaches them); returns how
    many. Attention-probability dropout stays inside the attention kernel."""
    mods = [m for m in hidden_dropouts(hf) if type(m) is torch.nn.Dropout]
    for m in mods:
        m.__class__ = CpuDropout
    return len(mods)


def bf16_stream(hf) -> bool:
    """Under CPU bf16 autocast, keep the encoder's residual stream in bf16: the embeddings' output
    (fp32: fp32 tables) is cast once, so residual adds stay bf16 and LayerNorm (not an fp32 op of
    CPU autocast) returns bf16. Left alone, the stream is fp32 and every projection re-casts it
    (~60 casts of a (B, T, H) tensor per BERT-small step): 1.10x per step on 2 cores. A forward
    hook, a no-op outside CPU autocast; False when the model has no ``embeddings`` module.
    ``train.bf16_stream``, off by default (not shown to give a better encoder per minute)."""
    emb = getattr(getattr(hf, "base_model", hf), "embeddings", None)
    if emb is None:
        return False

    def cast(module, args, out):
        if torch.is_autocast_enabled("cpu") and isinstance(out, torch.Tensor) and out.is_floating_point():
            return out.to(torch.get_autocast_dtype("cpu"))
        return out

    emb.register_forward_hook(cast)
    return True


def mlm_logits_at(hf, ids: torch.Tensor, mask: torch.Tensor, sel: torch.Tensor,
                  token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Vocabulary logits (M, V) at the selected positions ``sel`` (B, T): the head runs only there."""
    head = mlm_head(hf)
    if head is None:
        return hf(input_ids=ids, attention_mask=mask).logits[sel]
    return head(encode(hf, ids, mask, token_type_ids)[sel])


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str = "mean") -> torch.Tensor:
    """Sentence embedding from token states: (B, T, H), (B, T) -> (B, H). ``mean`` over real
    tokens, the ``cls`` (first) state, or ``max`` over real tokens; in fp32 (a bf16 residual
    stream is averaged at full precision)."""
    hidden = hidden.float()
    if mode == "cls":
        return hidden[:, 0]
    m = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "max":
        return hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).max(1).values
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


def unwrap(model) -> torch.nn.Module:
    """The Hugging Face model inside DDP (``.module``), ``torch.compile`` (``._orig_mod``) and
    training (``.hf``) wrappers."""
    while not hasattr(model, "save_pretrained"):
        for attr in ("module", "_orig_mod", "hf"):
            if hasattr(model, attr):
                model = getattr(model, attr)
                break
        else:
            raise TypeError(f"{type(model).__name__} is not a Hugging Face model (no save_pretrained)")
    return model
