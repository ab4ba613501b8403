"""The evaluation report of a run: ``report.md`` + ``curves.png`` beside the exported model (in the
run directory) and as MLflow artifacts of the run.

It holds the training curves per objective and the held-out evaluations over steps (the plot), the
evaluation table, a few fill-mask predictions, and the nearest neighbours of a few sentences among
STS-B dev sentences (what the embedding puts together).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

QUERIES = ("A man is playing a guitar.", "The stock market fell sharply today.",
           "A woman is slicing an onion.", "Two dogs are running through a field.")
FILL = ("The [MASK] of the function is returned.", "He went to the [MASK] to buy some milk.",
        "She opened the [MASK] and walked into the room.")


def _fill_mask(lm, k: int = 5) -> list[tuple[str, list[str]]]:
    import torch

    if lm.mlm is None or lm.tokenizer.mask_token is None:
        return []
    out = []
    for sent in FILL:
        text = sent.replace("[MASK]", lm.tokenizer.mask_token)
        enc = lm.tokenizer(text, return_tensors="pt")
        where = (enc["input_ids"][0] == lm.tokenizer.mask_token_id).nonzero()
        if not len(where):
            continue
        with torch.no_grad():
            logits = lm.mlm(**enc).logits[0, int(where[0, 0])]
        out.append((sent, [lm.tokenizer.decode([t]).strip() for t in logits.topk(k).indices.tolist()]))
    return out


def _neighbours(lm, n_pool: int = 1000, k: int = 3) -> list[tuple[str, list[tuple[str, float]]]]:
    from ssl_core.evaluation import stsb_dev

    s1, s2, _ = stsb_dev()
    pool = [s for s in dict.fromkeys(s1 + s2) if s not in QUERIES][:n_pool]
    emb = lm.encode(list(QUERIES) + pool)
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    q, p = emb[:len(QUERIES)], emb[len(QUERIES):]
    sims = q @ p.T
    return [(QUERIES[i], [(pool[j], float(sims[i, j])) for j in np.argsort(-sims[i])[:k]])
            for i in range(len(QUERIES))]


def write(out_dir: Path, model_dir: Path, title: str, history: dict, table: str) -> Path:
    """Write ``report.md`` (+ ``curves.png``) into ``out_dir``; returns the markdown path."""
    from ssl_core.evaluation import LoadedModel
    from pipelines.plots import run_curves

    out_dir.mkdir(parents=True, exist_ok=True)
    png = run_curves(history, out_dir / "curves.png", title)
    lm = LoadedModel(model_dir)
    lines = [f"# {title}", "", f"Model: `{model_dir}` (pooling {lm.pooling}, max_seq_len {lm.max_len})", ""]
    if png is not None:
        lines += ["## Training", "", "![training curves and held-out evaluations](curves.png)", ""]
    if table:
        lines += ["## Evaluation", "", "```", table, "```", ""]
    fill = _fill_mask(lm)
    if fill:
        lines += ["## Fill-mask (top 5)", "", "| sentence | predictions |", "|---|---|"]
        lines += [f"| {s} | {', '.join(w)} |" for s, w in fill] + [""]
    lines += ["## Nearest neighbours (cosine of the pooled embedding, among 1,000 STS-B dev sentences)", ""]
    for q, nn in _neighbours(lm):
        lines.append(f"- **{q}**")
        lines += [f"  - {s} ({c:.3f})" for s, c in nn]
    md = out_dir / "report.md"
    md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return md
