"""Evaluation inside the training loop (rank 0), on metrics that do not depend on what a search
varies: every objective's held-out evaluator (MLM at the fixed 15% eval mask and seed, NSP) and the
STS-B dev Spearman of the pooled embedding (the data ships with the package), plus the ``score``
a Tune search compares trials on (``tune.metric``).

    m = evaluate_now(ts, val_batches)      # eval_mlm_accuracy, eval_stsb_spearman, ..., score
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ssl_core.config import Config
from ssl_core.encoder import encode, pool
from ssl_core.evaluation import stsb_dev, sts_spearman
from ssl_core.training.state import TrainState


def score_weights(cfg: Config) -> dict[str, float]:
    """What ``tune.metric`` means for this config: metric name -> weight (``auto``: held-out MLM
    accuracy when MLM is on, else STS-B dev Spearman)."""
    t = cfg.tune
    if t.metric == "weighted":
        return t.weight_map()
    if t.metric == "auto":
        return {"mlm_accuracy": 1.0} if cfg.objectives.mlm else {"stsb_spearman": 1.0}
    return {t.metric: 1.0}


def embedder(ts: TrainState, batch_size: int = 128) -> Callable[[list[str]], np.ndarray]:
    """Sentences -> pooled embeddings (N, H) of the current encoder, pooled as trained, with the
    run's tokenizer (truncated at ``data.max_seq_len``), in eval mode, fp32."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(ts.builder.tok.to_str())
    tok.no_padding()
    tok.enable_truncation(ts.cfg.data.max_seq_len)
    pad, hf, mode = ts.builder.sp["pad"], ts.module.hf, ts.cfg.contrastive.pooling

    @torch.no_grad()
    def embed(sentences: list[str]) -> np.ndarray:
        was = hf.training
        hf.eval()
        order = np.argsort([-len(s) for s in sentences], kind="stable")
        out = np.zeros((len(sentences), hf.config.hidden_size), dtype=np.float32)
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            encs = tok.encode_batch([sentences[j] for j in idx])
            width = max(len(e.ids) for e in encs)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            for r, e in enumerate(encs):
                ids[r, :len(e.ids)] = torch.tensor(e.ids)
            ids = ids.to(ts.device)
            mask = (ids != pad).long()
            out[idx] = pool(encode(hf, ids, mask), mask, mode).float().cpu().numpy()
        hf.train(was)
        return out

    return embed


def evaluate_now(ts: TrainState, val: list[dict]) -> dict[str, float]:
    """Held-out metrics of every objective, STS-B dev Spearman, and the search ``score``."""
    m = ts.module.evaluate(val) if val else {}
    m["eval_stsb_spearman"] = sts_spearman(embedder(ts), *stsb_dev())
    w = score_weights(ts.cfg)
    if all(f"eval_{k}" in m for k in w):
        m["score"] = sum(v * m[f"eval_{k}"] for k, v in w.items())
    return m
