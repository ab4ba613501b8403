"""Pretraining in a fixed wall-clock budget: ours vs the Hugging Face ``run_mlm.py`` recipe.

The same corpus (War and Peace ``train.txt``), the same WordPiece 8k tokenizer (trained here with
``ssl_core.tokenizer.train_wordpiece``), the same model (the ``default`` config: BERT, 4 layers,
hidden 256, 4 heads, intermediate 1024, seq 128, same init), the same batch (16), lr (7e-4), weight
decay (0.01), grad clipping (1.0), the same LR schedule (linear warmup over the first 6% of the
budget, then linear decay to 0 at the budget: ``ssl_core.training.lr_factor`` on elapsed/budget for
both), two threads, the same budget (``--seconds``, 90 by default) each.

* OURS: ``run_local`` (``train_loop`` without Ray): ``train.max_minutes`` = the budget, precision
        ``auto`` (bf16 on a CPU with native bf16), logits at the masked positions only, masks drawn
        per batch (15%, 80/10/10, new each epoch); rows packed by ``local_batches`` before the
        clock starts, shuffled per epoch (as the pipeline's local shuffle buffer would).
* HF:   ``run_mlm.py``'s recipe: ``datasets`` text → ``tokenizer(...)`` per line →
        ``group_texts`` into blocks of 128 → ``Trainer`` + ``DataCollatorForLanguageModeling(0.15)``,
        fp32 (run_mlm's default on CPU), a callback stops it at the budget; tokenization happens
        before the clock starts, as in run_mlm.

Tokens/s = tokens trained ÷ training wall time (ours: real tokens incl. [CLS]/[SEP] of its packed
rows; HF: every token of its blocks, incl. the [CLS]/[SEP] run_mlm adds to every line, which
favours it). Both final models are then scored by the same function (``ssl_core.objectives.mlm.mlm_metrics``,
fp32) on the same held-out text (War and Peace ``val.txt``, packed rows masked once at 15% with
the keyed masker at EVAL_RATIO/EVAL_SEED).

    python benchmarks/train_vs_hf.py [--seconds 90] [--rounds 1] [--eval-rows 512]

Ends with ``RATIO train_vs_hf <tokens/s ours ÷ HF>`` and ``RATIO train_vs_hf_mlm_acc <acc ours ÷ acc HF>``.
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
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np
import torch

DATA = ROOT.parent / "shared" / "data"
THREADS = 2
WARMUP_SHARE = 0.06
BIG = 10 ** 7          # max_steps of both: the time budget ends training


def make_config(corpus: Path, seconds: float, batch: int):
    from pipelines.configs import load_config
    return load_config("default", [
        f"data.corpus={corpus}", "data.val_fraction=0.0", f"train.batch_size={batch}",
        f"train.max_steps={BIG}", f"train.warmup_steps={int(BIG * WARMUP_SHARE)}",
        f"train.max_minutes={seconds / 60.0}", "train.lr_schedule=linear", "train.num_workers=1",
        f"train.cpus_per_worker={THREADS}", "train.checkpoint_every=0", "train.log_every=50",
        "train.precision=auto"])


def eval_set(cfg, tok_dir: str, val_txt: Path, rows: int):
    """val.txt packed like training rows, masked once at 15% (keyed, EVAL_SEED)."""
    from dataclasses import replace

    from ssl_core.examples import ExampleBuilder
    from ssl_core.training import local_batches
    vcfg = replace(cfg, data=replace(cfg.data, corpus=str(val_txt)))
    ids = np.concatenate([b["input_ids"] for b in local_batches(vcfg, tok_dir, "train", 1, batch_size=64,
                                                                max_rows=rows)])
    return ExampleBuilder(vcfg, tok_dir).mask_for_eval({"input_ids": ids})


def ours_feed(rows0: list[dict], batch: int, seed: int = 0):
    """Epochs end to end, the rows shuffled each epoch, ``epoch`` set (new masks each epoch)."""
    cols = {k: np.concatenate([b[k] for b in rows0]) for k in rows0[0]}
    n = len(cols["input_ids"])
    rng = np.random.default_rng(seed)
    for epoch in range(10_000):
        perm = rng.permutation(n)
        for i in range(0, n - batch + 1, batch):
            idx = perm[i:i + batch]
            b = {k: v[idx] for k, v in cols.items()}
            b["epoch"] = np.full(batch, epoch, dtype=b["epoch"].dtype)
            yield b


def run_ours(cfg, tok_dir: str, rows0: list[dict], out: Path):
    from transformers import AutoModelForMaskedLM

    from ssl_core.training import run_local
    final, sess = run_local(cfg, tok_dir, train_batches=ours_feed(rows0, cfg.train.batch_size),
                            val_batches=[], out_dir=out, device="cpu")
    tps = final["tokens_seen"] / final["elapsed_s"]
    model = AutoModelForMaskedLM.from_pretrained(sess.final_dir / "model")
    return model, tps, final


def hf_dataset(tok_dir: str, train_txt: Path, seq: int, cache: Path):
    """run_mlm.py (not line_by_line): tokenize every line, concatenate, cut into blocks of ``seq``."""
    from datasets import load_dataset
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tok_dir)
    raw = load_dataset("text", data_files={"train": str(train_txt)}, cache_dir=str(cache))["train"]
    tokenized = raw.map(lambda ex: tok(ex["text"], return_special_tokens_mask=True), batched=True,
                        remove_columns=["text"])

    def group_texts(examples):
        concat = {k: sum(examples[k], []) for k in examples}
        total = (len(concat["input_ids"]) // seq) * seq
        return {k: [t[i:i + seq] for i in range(0, total, seq)] for k, t in concat.items()}

    return tok, tokenized.map(group_texts, batched=True)


def run_hf(cfg, tok, ds, seconds: float, out: Path, vocab: int, pad: int):
    from torch.optim.lr_scheduler import LambdaLR
    from transformers import (DataCollatorForLanguageModeling, Trainer, TrainerCallback,
                              TrainingArguments)

    from ssl_core.encoder import build_model
    from ssl_core.training import lr_factor
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, vocab, cfg.data.max_seq_len, pad)      # same BertForMaskedLM config
    clock = {"t0": None, "steps": 0}

    def elapsed() -> float:
        return 0.0 if clock["t0"] is None else time.perf_counter() - clock["t0"]

    class Budget(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            clock["t0"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            clock["steps"] = state.global_step
            if elapsed() >= seconds:
                control.should_training_stop = True

    class BudgetTrainer(Trainer):
        def create_scheduler(self, num_training_steps, optimizer=None):
            self.lr_scheduler = LambdaLR(optimizer or self.optimizer,
                                         lambda _: lr_factor(min(1.0, elapsed() / seconds), WARMUP_SHARE, "linear"))
            return self.lr_scheduler

    targs = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=cfg.train.batch_size,
        learning_rate=cfg.train.lr, weight_decay=cfg.train.weight_decay, max_grad_norm=cfg.train.grad_clip,
        max_steps=BIG, logging_strategy="no", save_strategy="no", report_to=[], use_cpu=True,
        dataloader_num_workers=0, seed=cfg.train.seed, disable_tqdm=True)
    collator = DataCollatorForLanguageModeling(tok, mlm_probability=0.15)
    trainer = BudgetTrainer(model=model, args=targs, train_dataset=ds, data_collator=collator,
                            callbacks=[Budget()])
    trainer.train()
    wall = elapsed()
    tokens = clock["steps"] * cfg.train.batch_size * cfg.data.max_seq_len
    return trainer.model, tokens / wall, {"steps": clock["steps"], "elapsed_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=90.0, help="training budget of each side")
    ap.add_argument("--rounds", type=int, default=1, help="(ours, HF) pairs, interleaved")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--eval-rows", type=int, default=512, help="held-out rows of 128 tokens")
    ap.add_argument("--train", default=str(DATA / "warpeace" / "train.txt"))
    ap.add_argument("--val", default=str(DATA / "warpeace" / "val.txt"))
    args = ap.parse_args()
    from ssl_core.perf import cpu_line
    print(cpu_line(), flush=True)
    train_txt, val_txt = Path(args.train), Path(args.val)
    if not (train_txt.is_file() and val_txt.is_file()):
        sys.exit(f"{train_txt} / {val_txt} not found (the shared data folder is missing)")
    for name in ("transformers", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import accelerate  # noqa: F401  (the HF Trainer needs it)
    except ImportError:
        sys.exit("the HF side (transformers.Trainer) needs accelerate>=1.1: pip install accelerate")
    import datasets
    datasets.disable_progress_bars()
    torch.set_num_threads(THREADS)

    from ssl_core.objectives.mlm import mlm_metrics
    from ssl_core.training import local_batches
    from ssl_core.text import resolve_corpus, sample_documents
    from ssl_core.tokenizer import load_fast, special_ids, train_wordpiece

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        t0 = time.perf_counter()
        cfg = make_config(train_txt, args.seconds, args.batch)
        texts = sample_documents(resolve_corpus(str(train_txt)), cfg.tokenizer.sample_documents, cfg.data.min_chars)
        tok_dir = str(train_wordpiece(texts, tmp / "tok", cfg.tokenizer.vocab_size,
                                      model_max_length=cfg.data.max_seq_len))
        fast = load_fast(tok_dir)
        vocab, pad = fast.get_vocab_size(), special_ids(fast)["pad"]
        rows0 = list(local_batches(cfg, tok_dir, "train", 1, batch_size=args.batch))
        evalset = eval_set(cfg, tok_dir, val_txt, args.eval_rows)
        eval_ids, eval_labels = evalset["input_ids"], evalset["labels"]
        hf_tok, hf_ds = hf_dataset(tok_dir, train_txt, cfg.data.max_seq_len, tmp / "hf_cache")
        n_ours = sum(float(b["num_tokens"].sum()) for b in rows0)
        print(f"setup {time.perf_counter() - t0:.1f}s: WordPiece {vocab}; ours {len(rows0) * args.batch} rows "
              f"({n_ours:,.0f} tokens/epoch), HF {len(hf_ds)} blocks ({len(hf_ds) * cfg.data.max_seq_len:,} "
              f"tokens/epoch); eval {len(eval_ids)} rows, {(eval_labels != -100).sum()} masked tokens; "
              f"budget {args.seconds:.0f}s each, {THREADS} threads")

        res = {"ours": [], "hf": []}
        for r in range(args.rounds):
            m, tps, info = run_ours(cfg, tok_dir, rows0, tmp / f"ours{r}")
            ev = mlm_metrics(m, [evalset], pad)
            res["ours"].append((tps, ev["mlm_accuracy"], ev["mlm_loss"]))
            print(f"round {r + 1} ours: {tps:,.0f} tok/s, step {info['step']}, {info['tokens_seen']:,.0f} tokens "
                  f"in {info['elapsed_s']:.1f}s | eval mlm_acc {ev['mlm_accuracy']:.4f} "
                  f"loss {ev['mlm_loss']:.3f}", flush=True)
            m, tps, info = run_hf(cfg, hf_tok, hf_ds, args.seconds, tmp / f"hf{r}", vocab, pad)
            ev = mlm_metrics(m, [evalset], pad)
            res["hf"].append((tps, ev["mlm_accuracy"], ev["mlm_loss"]))
            print(f"round {r + 1} HF:   {tps:,.0f} tok/s, step {info['steps']}, "
                  f"{info['steps'] * args.batch * cfg.data.max_seq_len:,} tokens in {info['elapsed_s']:.1f}s | "
                  f"eval mlm_acc {ev['mlm_accuracy']:.4f} loss {ev['mlm_loss']:.3f}", flush=True)

    med = {k: [statistics.median(x[i] for x in v) for i in range(3)] for k, v in res.items()}
    for k, (tps, acc, loss) in med.items():
        print(f"{k:5s} median {tps:8,.0f} tok/s | held-out MLM accuracy @15% {acc:.4f} | loss {loss:.3f}")
    print(f"RATIO train_vs_hf {med['ours'][0] / med['hf'][0]:.2f}")
    print(f"RATIO train_vs_hf_mlm_acc {med['ours'][1] / med['hf'][1]:.2f}")


if __name__ == "__main__":
    main()
