"""Checkpoints: what a run needs to continue exactly where it stopped, in one directory.

    module.safetensors    the training module (encoder + objective heads), safetensors
    optimizer.pt          AdamW state (torch.load with weights_only)
    trainer_state.json    ``Progress``: step, micro-batches consumed per worker, elapsed, tokens
    model/                (final checkpoint only) the exported Hugging Face directory

No RNG state is saved: MLM masks are a function of (seed, epoch, row) and dropout is seeded per
step (``schedule.step_seed``), so a resumed run draws what the uninterrupted run drew.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from ssl_core.export import export_model
from ssl_core.training.state import Progress, TrainState


def save(d: Path, ts: TrainState) -> None:
    from safetensors.torch import save_model

    d.mkdir(parents=True, exist_ok=True)
    save_model(ts.module, str(d / "module.safetensors"))
    torch.save({"optimizer": ts.opt.state_dict()}, d / "optimizer.pt")
    (d / "trainer_state.json").write_text(json.dumps(ts.progress.to_dict(), indent=2))


def load(d: Path, ts: TrainState) -> Progress:
    """Restore module and optimizer from ``d`` into ``ts``; returns the saved progress."""
    from safetensors.torch import load_model

    load_model(ts.module, str(d / "module.safetensors"), device=str(ts.device))
    ts.opt.load_state_dict(torch.load(d / "optimizer.pt", map_location=ts.device,
                                      weights_only=True)["optimizer"])
    saved = json.loads((d / "trainer_state.json").read_text())
    return Progress(**{k: saved[k] for k in Progress().to_dict() if k in saved})


def export(ts: TrainState, out: Path) -> Path:
    """The trained encoder as a Hugging Face + sentence-transformers directory, with the objective
    heads the HF model does not hold and the training config beside it."""
    cfg = ts.cfg
    return export_model(ts.module.hf, ts.job.tokenizer_dir, out, pooling=cfg.contrastive.pooling,
                        max_seq_len=cfg.data.max_seq_len,
                        extra_heads=ts.module.extra_heads() or None, config_dict=cfg.to_dict())


def report(session, ts: TrainState, metrics: dict, final: bool) -> None:
    """Every rank reports ``metrics``; rank 0 attaches a checkpoint (the final one with the
    exported model under ``model/``)."""
    metrics = dict(metrics, step=ts.progress.step)
    if ts.rank != 0:
        session.report(metrics)
        return
    with tempfile.TemporaryDirectory() as d:
        save(Path(d), ts)
        if final:
            export(ts, Path(d) / "model")
        session.report(metrics, checkpoint_dir=d)
