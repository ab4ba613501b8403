"""BERT-base pretraining speed on one GPU: our training loop without Ray (samples/s, tokens/s, MFU).

``ssl_core.training.train_loop`` through ``run_local`` (a ``LocalSession``, no Ray, no MLflow: this
script imports neither, and checks at the end that nothing it ran did) on a BERT-base (12 layers,
hidden 768, 12 heads, intermediate 3072, WordPiece trained here on the Python docs that ship
with Python, ``--vocab`` 30522 asked), seq 128, bf16 autocast, MLM (15%, logits at the masked
positions only), ``--steps`` steps on rows packed in memory before the clock starts
(``local_batches``, cycled with a new epoch, hence new masks, when there are fewer), no eval,
``checkpoint_every=0`` (the final checkpoint + export after the loop is outside every window).

Speed = the loop's own window metrics (every ``--log-every`` steps), the first window (warm-up,
cuDNN/cuBLAS autotuning, compile) dropped; MFU = model FLOPs (``ssl_core.perf.encoder_flops``,
as the loop counts them) ÷ the measured bf16 GEMM peak of the device (``measure_peak_flops``,
8192² on CUDA), both as the loop reports it and recomputed here from tokens/s.

    python benchmarks/gpu_bert_base.py [--steps 100] [--batch 64] [--compile]      # on a GPU
    python benchmarks/gpu_bert_base.py --device cpu --size tiny --steps 3          # CPU smoke run

Ends with ``RESULT`` lines (no reference side: there is no ratio to print).
"""
from __future__ import annotations

import argparse
import itertools
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np
import torch

SIZES = {   # layers, hidden, heads, intermediate
    "base": (12, 768, 12, 3072),
    "small": (4, 512, 8, 2048),
    "tiny": (2, 64, 2, 256),
}


def make_config(args, device: str):
    from ssl_core.config import load_config     # no shipped YAML needed: defaults + overrides
    L, H, A, I = SIZES[args.size]
    return load_config("", [
        f"data.corpus={args.corpus}", "data.max_seq_len=128", "data.shuffle_buffer=0",
        f"model.num_layers={L}", f"model.hidden_size={H}", f"model.num_heads={A}",
        f"model.intermediate_size={I}", f"tokenizer.vocab_size={args.vocab}",
        f"train.batch_size={args.batch}", f"train.max_steps={args.steps}",
        f"train.warmup_steps={max(1, args.steps // 10)}", f"train.log_every={args.log_every}",
        "train.checkpoint_every=0", "train.num_workers=1", f"train.use_gpu={device == 'cuda'}",
        f"train.cpus_per_worker={max(1, min(os.cpu_count() or 1, 8)) if device == 'cpu' else 1}",
        f"train.precision={'bf16' if device == 'cuda' else 'auto'}", f"train.compile={args.compile}"])


def feed(rows: list[dict], steps: int):
    """``steps`` batches: the rows in order, again with the next epoch (new masks) when short."""
    for n, (epoch, b) in enumerate((e, b) for e in itertools.count() for b in rows):
        if n >= steps:
            return
        yield dict(b, epoch=np.full_like(b["epoch"], epoch))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", choices=sorted(SIZES), default="base")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=30522)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--rows", type=int, default=4096, help="distinct rows packed in memory (cycled)")
    ap.add_argument("--corpus", default="builtin:python-docs")
    ap.add_argument("--compile", action="store_true", help="train.compile=true (torch.compile)")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --device cpu --size tiny --steps 3 for a smoke run")
    if args.device == "cpu" and args.size == "base":
        print("note: BERT-base on CPU is slow; --size tiny for a smoke run", flush=True)
    args.log_every = min(args.log_every, max(1, args.steps // 3)) if args.device == "cpu" else args.log_every
    logging.getLogger("transformers").setLevel(logging.ERROR)

    from ssl_core.training import local_batches, run_local
    from ssl_core.perf import choose_dtype, encoder_flops, measure_peak_flops
    from ssl_core.text import resolve_corpus, sample_documents
    from ssl_core.tokenizer import load_fast, train_wordpiece

    dev = torch.device(args.device)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        cfg = make_config(args, args.device)
        texts = sample_documents(resolve_corpus(cfg.data.corpus), cfg.tokenizer.sample_documents, cfg.data.min_chars)
        tok_dir = str(train_wordpiece(texts, Path(d) / "tok", cfg.tokenizer.vocab_size,
                                      model_max_length=cfg.data.max_seq_len))
        vocab = load_fast(tok_dir).get_vocab_size()
        rows = list(local_batches(cfg, tok_dir, "train", 1, batch_size=args.batch,
                                  max_rows=min(args.rows, args.batch * args.steps)))
        if not rows:
            sys.exit(f"corpus {cfg.data.corpus} gives no full batch of {args.batch}")
        print(f"setup {time.perf_counter() - t0:.1f}s: {args.size} ({cfg.model.num_layers} layers x "
              f"{cfg.model.hidden_size}), WordPiece {vocab} (asked {args.vocab}), {len(rows)} distinct batches "
              f"of {args.batch}x{cfg.data.max_seq_len}, {args.steps} steps on {args.device}"
              + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else ""), flush=True)

        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        final, sess = run_local(cfg, tok_dir, train_batches=feed(rows, args.steps), val_batches=[],
                                out_dir=None, device=args.device)
        wall = time.perf_counter() - t

    wins = {}
    for m in sess.logged:
        if "samples_per_s" in m:
            wins[m["step"]] = m
    wins = [wins[k] for k in sorted(wins)]
    steady = wins[1:] or wins                      # the first window holds the warm-up
    med = lambda k: statistics.median(w[k] for w in steady)
    f_tok, f_pred = encoder_flops(final_config(cfg, vocab), cfg.data.max_seq_len)
    peak = measure_peak_flops(dev, choose_dtype(cfg.train.precision, dev))
    masked = 0.15 * med("packing_efficiency")      # predicted tokens per token (15% of non-special)
    achieved = med("tokens_per_s") * (f_tok + masked * f_pred)
    print(f"windows (steady): {[round(w['samples_per_s'], 1) for w in steady]} samples/s")
    print(f"samples/s median {med('samples_per_s'):,.1f} | tokens/s median {med('tokens_per_s'):,.0f} | "
          f"step {med('step_time_s') * 1e3:,.0f} ms | data wait {med('data_wait_frac'):.1%} | "
          f"packing {med('packing_efficiency'):.3f}")
    print(f"model FLOPs: {f_tok / 1e9:.3f} GFLOP/token + {f_pred / 1e9:.3f} GFLOP/masked token -> "
          f"{achieved / 1e12:,.2f} TFLOP/s achieved")
    print(f"{str(choose_dtype(cfg.train.precision, dev))[6:]} GEMM peak measured here {peak / 1e12:,.1f} TFLOP/s -> MFU {achieved / peak:.3f} "
          f"(the loop's own mfu metric: median {med('mfu'):.3f})")
    if args.device == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    print(f"run_local wall {wall:.1f}s (model build, peak measurement, final checkpoint+export included); "
          f"final loss {final.get('loss', float('nan')):.3f}")
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("ray", "mlflow"))
    print(f"ray/mlflow modules imported: {leaked or 'none'}")
    print(f"RESULT gpu_bert_base_samples_per_s {med('samples_per_s'):.1f}")
    print(f"RESULT gpu_bert_base_tokens_per_s {med('tokens_per_s'):.0f}")
    print(f"RESULT gpu_bert_base_mfu {achieved / peak:.3f}")


def final_config(cfg, vocab: int):
    """The encoder's hf config as build_model makes it (for encoder_flops)."""
    from types import SimpleNamespace
    m = cfg.model
    return SimpleNamespace(hidden_size=m.hidden_size, num_hidden_layers=m.num_layers,
                           intermediate_size=m.intermediate_size, vocab_size=vocab)


if __name__ == "__main__":
    main()
