"""The training module: one encoder and every enabled objective on it.

    hf = build_model(cfg.model, vocab_size, max_seq_len, pad_id)        # ssl_core.encoder
    module = PretrainModule.from_config(cfg, hf, pad_id, builder)
    loss, sums = module(batch)                                          # batch: dict of tensors

One encoder pass over ``input_ids`` serves the objectives of the ``tokens`` stream (MLM, NSP), one
pass over the stacked views serves those of the ``views`` stream (contrastive). DDP wraps this
module; ``.hf`` is what gets exported.
"""
from __future__ import annotations

import numpy as np
import torch

from ssl_core.config import Config
from ssl_core.encoder import encode
from ssl_core.objectives import OBJECTIVES, EncoderOutputs, Objective
from ssl_core.objectives.base import STREAM_EXTRAS, STREAM_INPUTS


class PretrainModule(torch.nn.Module):
    """Every enabled objective on one encoder: ``forward(batch) -> (weighted loss, sums)``."""

    def __init__(self, hf_model, objectives: dict[str, Objective], weights: dict[str, float],
                 pad_id: int = 0):
        super().__init__()
        self.hf = hf_model
        self.objectives = torch.nn.ModuleDict(objectives)
        self.weights = dict(weights)
        self.pad_id = pad_id
        self._freeze_unused_head()

    def _freeze_unused_head(self) -> None:
        """When no objective trains the Hugging Face model's own head (MLM off: a contrastive stage
        on an MLM checkpoint), its parameters outside the encoder get no gradient and stay as they
        are: DDP fails on trainable parameters that no loss reaches."""
        if any(o.uses_hf_head for o in self.objectives.values()):
            return
        encoder = {id(p) for p in getattr(self.hf, "base_model", self.hf).parameters()}
        for p in self.hf.parameters():
            if id(p) not in encoder:
                p.requires_grad_(False)

    @classmethod
    def from_config(cls, cfg: Config, hf_model, pad_id: int, builder=None) -> "PretrainModule":
        """The objectives of ``OBJECTIVES`` that ``cfg`` enables; ``builder`` (the run's
        ``ExampleBuilder``) gives them the vocabulary (MLM's masker)."""
        on = {n: o for n, o in OBJECTIVES.items() if o.enabled(cfg)}
        return cls(hf_model, {n: o.from_config(cfg, hf_model, builder) for n, o in on.items()},
                   {n: o.weight(cfg) for n, o in on.items()}, pad_id)

    @property
    def streams(self) -> set[str]:
        return {o.stream for o in self.objectives.values()}

    def columns(self) -> list[str]:
        """Batch columns the enabled objectives read (as tensors)."""
        cols = [c for s in sorted(self.streams) for c in STREAM_INPUTS[s] + STREAM_EXTRAS[s]]
        cols += [c for o in self.objectives.values() for c in o.columns]
        return list(dict.fromkeys(cols))

    def stream_tokens(self, batch: dict) -> float:
        """Real (non-pad) tokens the encoder processes for this numpy batch, over all its passes
        (``input_ids``, and both views)."""
        return float(sum(int((np.asarray(batch[c]) != self.pad_id).sum())
                         for s in self.streams for c in STREAM_INPUTS[s]))

    def encode(self, batch: dict) -> EncoderOutputs:
        out = EncoderOutputs()
        if "tokens" in self.streams:
            x = batch["input_ids"]                                    # (B, T)
            out.mask = (x != self.pad_id).long()
            out.hidden = encode(self.hf, x, out.mask, batch.get("token_type_ids"))
        if "views" in self.streams and len(batch["view_a"]):          # empty: contrastive not started
            v = torch.cat([batch["view_a"], batch["view_b"]])         # (2B, T): one pass
            out.view_mask = (v != self.pad_id).long()
            out.view_hidden = encode(self.hf, v, out.view_mask)
        return out

    def forward(self, batch: dict):
        out = self.encode(batch)
        total, sums = None, {}
        for name, obj in self.objectives.items():
            loss, m = obj(out, batch)
            loss = loss * self.weights[name]
            total = loss if total is None else total + loss
            sums.update(m)
        return total, sums

    def evaluate(self, batches: list[dict]) -> dict[str, float]:
        """Held-out metrics of every objective (``eval_*``) on validation rows (numpy)."""
        out: dict[str, float] = {}
        for obj in self.objectives.values():
            out.update(obj.evaluate(self, batches))
        return out

    def extra_heads(self) -> dict[str, torch.Tensor]:
        """Trained heads that are not part of the HF model (NSP head), for the export."""
        out: dict[str, torch.Tensor] = {}
        for obj in self.objectives.values():
            out.update(obj.export_heads())
        return out
