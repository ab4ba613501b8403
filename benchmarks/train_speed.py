"""Training speed on CPU: our training loop vs a plain Hugging Face BertForMaskedLM fp32 loop.

BERT-small (4 layers, hidden 512, 8 heads, intermediate 2048, WordPiece 8k trained here on War and
Peace), sequences of 128, the same packed rows (``local_batches``), the same batch size, the same
masks (15%, 80/10/10), both cores, in one process, interleaved step by step (one reference step,
one step of ours, ...: the machine is shared, a co-tenant's load then hits both sides alike).

* OURS:      ``ssl_core.training.train_loop`` through ``run_local`` (a ``LocalSession``, no Ray):
             ``train.cpus_per_worker=2`` (the loop sets the threads), ``precision=auto`` (bf16 on a
             CPU with native bf16), logits only at the masked positions, masks drawn in the loop;
             no eval (empty val list), ``checkpoint_every=0``, ``log_every=1``. Its batch iterator
             runs one reference step before each batch, which the loop counts as data wait: ours'
             speed = the loop's own window metrics, ``tokens_per_s / (1 - data_wait_frac)`` (real
             tokens ÷ its step time without the wait); the first ``--warmup`` steps of each run are
             dropped; the final checkpoint/export after the loop is in no window.
* REFERENCE: ``BertForMaskedLM`` fp32, ``model(input_ids, attention_mask, labels=labels)`` with
             dense logits, AdamW (PyTorch defaults), grad clipping at 1.0 like ours,
             ``torch.set_num_threads(2)``; per-step wall time, the first steps dropped.

MFU = ours' achieved model FLOP/s (``ssl_core.perf.encoder_flops``: encoder FLOPs per real token
+ head FLOPs per masked token) ÷ ``measure_peak_flops`` in bf16 with the same two threads (the
same call the loop makes). The formula is cross-checked once against
``torch.utils.flop_counter.FlopCounterMode`` on one training step.

    python benchmarks/train_speed.py [--batch 32] [--steps 10] [--rounds 2] [--warmup 2]
                                     [--profile]      # + a torch.profiler table of one step of ours

Ends with ``RATIO train_speed <ours tok/s ÷ reference tok/s>`` and ``RATIO mfu_cpu <x>``.
"""
from __future__ import annotations

import argparse
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

DATA = ROOT.parent / "shared" / "data"
THREADS = 2
SIZE = ["model.hidden_size=512", "model.num_layers=4", "model.num_heads=8",
        "model.intermediate_size=2048", "tokenizer.vocab_size=8000", "data.max_seq_len=128"]


def make_config(corpus: Path, batch: int, steps: int, log_every: int, extra=()):
    from pipelines.configs import load_config
    return load_config("default", SIZE + [
        f"data.corpus={corpus}", "data.shuffle_buffer=0", f"train.batch_size={batch}",
        f"train.max_steps={steps}", f"train.warmup_steps={max(1, steps // 10)}",
        f"train.cpus_per_worker={THREADS}", "train.num_workers=1", "train.checkpoint_every=0",
        f"train.log_every={log_every}", "train.precision=auto", *extra])


def tokenizer(corpus: Path, out: Path) -> str:
    from ssl_core.text import resolve_corpus, sample_documents
    from ssl_core.tokenizer import train_wordpiece
    texts = sample_documents(resolve_corpus(str(corpus)), 20000, min_chars=20)
    return str(train_wordpiece(texts, out, vocab_size=8000, model_max_length=128))


def masked_rows(cfg, tok_dir: str, rows: list[dict]):
    """The masks the loop draws (same masker, seed, keys), for the reference."""
    from ssl_core.examples import ExampleBuilder
    from ssl_core.masking import mask_rows
    masker = ExampleBuilder(cfg, tok_dir).masker()
    out = []
    for b in rows:
        ids, lab = mask_rows(masker, b, cfg.masking.seed, cfg.masking.ratio)
        out.append((torch.as_tensor(ids, dtype=torch.long), torch.as_tensor(lab, dtype=torch.long),
                    float(b["num_tokens"].sum())))
    return out


def run_interleaved(cfg, tok_dir: str, rows: list[dict], ref_step) -> list[dict]:
    """One ``run_local`` of ours whose batch iterator runs one reference step before handing over
    each batch (A B A B ... step by step, so that a co-tenant's load hits both alike). The loop
    counts that time as data wait; returns its window metrics with ``tokens_per_s_own`` = tokens
    ÷ (window time − wait), i.e. ours' step time alone."""
    from ssl_core.training import run_local

    def feed():
        for b in rows:
            ref_step()
            yield dict(b)

    _, sess = run_local(cfg, tok_dir, train_batches=feed(), val_batches=[], out_dir=None, device="cpu")
    seen, wins = set(), []
    for m in sess.logged:
        if "tokens_per_s" in m and m["step"] not in seen:
            seen.add(m["step"])
            m = dict(m, tokens_per_s_own=m["tokens_per_s"] / max(1e-9, 1.0 - m["data_wait_frac"]))
            wins.append(m)
    return wins


def reference_model(cfg, vocab: int, pad: int):
    from transformers import BertConfig, BertForMaskedLM
    mc = cfg.model
    conf = BertConfig(vocab_size=vocab, hidden_size=mc.hidden_size, num_hidden_layers=mc.num_layers,
                      num_attention_heads=mc.num_heads, intermediate_size=mc.intermediate_size,
                      hidden_dropout_prob=mc.dropout, attention_probs_dropout_prob=mc.dropout,
                      max_position_embeddings=max(cfg.data.max_seq_len, 64), type_vocab_size=2,
                      pad_token_id=pad)
    model = BertForMaskedLM(conf)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    return model, opt


class Reference:
    """The plain fp32 loop, one step per call; keeps (seconds, tokens) per step."""

    def __init__(self, model, opt, batches, pad: int):
        self.model, self.opt, self.batches, self.pad = model, opt, batches, pad
        self.times: list[tuple[float, float]] = []

    def __call__(self) -> None:
        torch.set_num_threads(THREADS)
        self.model.train()
        ids, labels, ntok = self.batches[len(self.times) % len(self.batches)]
        t = time.perf_counter()
        loss = self.model(input_ids=ids, attention_mask=(ids != self.pad).long(), labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.times.append((time.perf_counter() - t, ntok))


def cpu_state(cfg, tok_dir: str):
    """The training loop's own components (``build_state``), as a worker builds them on CPU."""
    from ssl_core.training import TrainJob, build_state
    return build_state(TrainJob(cfg, tok_dir), torch.device("cpu"), measure_peak=False)


def flop_check(cfg, tok_dir: str, rows: list[dict]) -> None:
    """encoder_flops vs FlopCounterMode on one training step (``train_step``, bf16 autocast)."""
    from torch.utils.flop_counter import FlopCounterMode

    from ssl_core.training import train_step
    ts = cpu_state(cfg, tok_dir)
    counter = FlopCounterMode(display=False)
    with counter:
        sums, _ = train_step(ts, [dict(rows[0])], 0.0)
    counted = counter.get_total_flops()
    by_op = {str(k).split(".")[-1]: v for k, v in counter.get_flop_counts().get("Global", {}).items()}
    ntok, n_masked = float(sums["tokens"]), int(sums["mlm_count"])
    slots = rows[0]["input_ids"].size
    H, L, T = cfg.model.hidden_size, cfg.model.num_layers, cfg.data.max_seq_len
    attn = 3 * 4 * L * T * H * slots                  # what the formula puts on attention
    f_tok, f_pred = ts.flops_per_token, ts.flops_per_prediction
    formula_slots = slots * f_tok + n_masked * f_pred
    formula_real = ntok * f_tok + n_masked * f_pred
    print(f"FLOP check, one train_step ({rows[0]['input_ids'].shape[0]}x{T}, {int(ntok)} real tokens, "
          f"{n_masked} masked, {ts.attention} attention):")
    print(f"  encoder_flops: {f_tok / 1e6:.1f} MFLOP/token + {f_pred / 1e6:.2f} MFLOP/masked token"
          f" -> {formula_real / 1e9:.1f} GFLOP (real tokens, as the loop counts) / "
          f"{formula_slots / 1e9:.1f} GFLOP (all slots)")
    print(f"  FlopCounterMode: {counted / 1e9:.1f} GFLOP  by op: " +
          ", ".join(f"{k} {v / 1e9:.1f}" for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])))
    if not any("scaled_dot_product" in k or k == "bmm" for k in by_op):
        print(f"  (FlopCounterMode has no formula for CPU SDPA kernels: attention, "
              f"{attn / 1e9:.1f} GFLOP by the formula, is missing from its count; "
              f"counted + attention = {(counted + attn) / 1e9:.1f} GFLOP, "
              f"{(counted + attn) / formula_slots:.3f} x the formula over all slots)")
    else:
        print(f"  counted / formula(all slots) = {counted / formula_slots:.3f}")


def profile_step(cfg, tok_dir: str, rows: list[dict], steps: int = 3) -> None:
    """torch.profiler over a few steps of ``train_step`` (the loop's own), phases labelled by it."""
    from torch.profiler import ProfilerActivity, profile

    from ssl_core.training import train_step
    ts = cpu_state(cfg, tok_dir)
    print(f"  profiled with {ts.attention} attention, {str(ts.dtype).replace('torch.', '')}")
    for bt in rows[:2]:
        train_step(ts, [dict(bt)], 0.5)                 # warm up (oneDNN kernels, optimizer state)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for bt in rows[2:2 + steps]:
            train_step(ts, [dict(bt)], 0.5)
    ev = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in ev)
    print(f"\nPROFILE: {steps} steps of ours, {total / 1e3 / steps:.0f} ms/step of self CPU time")
    print("  phases (wall, incl. children):")
    for e in sorted(ev, key=lambda e: -e.cpu_time_total):
        if e.key.startswith("## "):
            print(f"    {e.key[3:]:18s} {e.cpu_time_total / 1e3 / steps:8.1f} ms/step")
    print("  top ops by self CPU time:")
    for e in sorted(ev, key=lambda e: -e.self_cpu_time_total)[:22]:
        if e.key.startswith("## "):
            continue
        print(f"    {e.key[:52]:52s} {e.self_cpu_time_total / 1e3 / steps:8.1f} ms/step "
              f"{100 * e.self_cpu_time_total / total:5.1f}%  x{e.count // steps}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10, help="steps per round (each side)")
    ap.add_argument("--rounds", type=int, default=2, help="runs of ours (a fresh model each)")
    ap.add_argument("--warmup", type=int, default=2, help="first steps of each run not timed")
    ap.add_argument("--corpus", default=str(DATA / "warpeace" / "train.txt"))
    ap.add_argument("--profile", action="store_true", help="also profile a few steps of ours")
    args = ap.parse_args()
    corpus = Path(args.corpus)
    if not corpus.is_file():
        sys.exit(f"corpus {corpus} not found (the shared data folder is missing)")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.set_num_threads(THREADS)

    from ssl_core.perf import cpu_line, encoder_flops, measure_peak_flops
    from ssl_core.training import local_batches
    from ssl_core.tokenizer import load_fast, special_ids

    print(cpu_line(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        tok_dir = tokenizer(corpus, Path(tmp) / "tok")
        cfg = make_config(corpus, args.batch, args.steps, 1)
        n_rows = args.steps
        rows = list(local_batches(cfg, tok_dir, "train", 1, batch_size=args.batch, max_rows=args.batch * n_rows))
        assert len(rows) >= args.steps, f"only {len(rows)} batches of {args.batch} rows"
        pad = special_ids(load_fast(tok_dir))["pad"]
        vocab = load_fast(tok_dir).get_vocab_size()
        batches = masked_rows(cfg, tok_dir, rows)
        slots = rows[0]["input_ids"].size
        print(f"setup {time.perf_counter() - t0:.1f}s: WordPiece {vocab}, {len(rows)} batches of "
              f"{args.batch}x{cfg.data.max_seq_len}, packing "
              f"{np.mean([b[2] for b in batches]) / slots:.3f}, masked/token "
              f"{np.mean([(b[1] != -100).sum().item() / b[2] for b in batches]):.4f}, threads {THREADS}")

        flop_check(cfg, tok_dir, rows)

        ref_model, ref_opt = reference_model(cfg, vocab, pad)
        reference = Reference(ref_model, ref_opt, batches, pad)
        ours_tps, ours_raw, peaks, ours_mfu_metric, ours_step = [], [], [], [], []
        for r in range(args.rounds):
            torch.set_num_threads(THREADS)
            peaks.append(measure_peak_flops(torch.device("cpu"), torch.bfloat16))
            n_ref = len(reference.times)
            wins = run_interleaved(cfg, tok_dir, rows[:args.steps], reference)
            steady = [w for w in wins if w["step"] > args.warmup]      # first steps = warm-up
            ours_tps += [w["tokens_per_s_own"] for w in steady]
            ours_raw += [w["tokens_per_s"] for w in steady]
            ours_mfu_metric += [w["mfu"] / max(1e-9, 1.0 - w["data_wait_frac"]) for w in steady]
            ours_step += [w["step_time_s"] * (1.0 - w["data_wait_frac"]) for w in steady]
            rt = reference.times[max(n_ref, args.warmup):]                 # the model's first steps = warm-up
            print(f"round {r + 1}: ours {statistics.median(w['tokens_per_s_own'] for w in steady):,.0f} tok/s "
                  f"({len(steady)} steps) | reference {statistics.median(n / s for s, n in rt):,.0f} "
                  f"tok/s ({len(rt)} steps) | bf16 GEMM peak {peaks[-1] / 1e9:,.0f} GFLOP/s")
        ref_tps = [n / s for s, n in reference.times[args.warmup:]]
        ours, ref = statistics.median(ours_tps), statistics.median(ref_tps)
        f_tok, f_pred = encoder_flops(ref_model.config, cfg.data.max_seq_len)
        masked_per_tok = float(np.mean([(b[1] != -100).sum().item() / b[2] for b in batches]))
        achieved = ours * (f_tok + masked_per_tok * f_pred)
        peak = statistics.median(peaks)
        ref_dense = ref * (f_tok + f_pred)      # the reference's head runs on every token
        print(f"ours      median {ours:9,.0f} tok/s  step {statistics.median(ours_step):.3f}s  "
              f"{achieved / 1e9:6.1f} GFLOP/s  (loop's own mfu metric, wait removed: median {statistics.median(ours_mfu_metric):.3f}); "
              f"raw window tok/s incl. the reference steps: {statistics.median(ours_raw):,.0f}")
        print(f"reference median {ref:9,.0f} tok/s  step {args.batch * cfg.data.max_seq_len / ref:.3f}s  "
              f"{ref_dense / 1e9:6.1f} GFLOP/s incl. its dense head (fp32)")
        print(f"bf16 GEMM peak (measure_peak_flops, 1024^2, {THREADS} threads): median "
              f"{peak / 1e9:,.0f} GFLOP/s over rounds {[round(p / 1e9) for p in peaks]}")
        for n in (2048, 4096):
            p = measure_peak_flops(torch.device("cpu"), torch.bfloat16, n=n)
            print(f"  (bf16 peak at {n}^2: {p / 1e9:,.0f} GFLOP/s; MFU against it {achieved / p:.3f})")
        pf = measure_peak_flops(torch.device("cpu"), torch.float32)
        print(f"  (fp32 peak at 1024^2: {pf / 1e9:,.0f} GFLOP/s; reference's fp32 MFU {ref_dense / pf:.3f})")
        if args.profile:
            profile_step(cfg, tok_dir, rows)
        print(f"RATIO train_speed {ours / ref:.2f}")
        print(f"RATIO mfu_cpu {achieved / peak:.3f}")


if __name__ == "__main__":
    main()
