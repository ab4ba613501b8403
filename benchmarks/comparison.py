"""Shared parts of the quality benchmarks (``quality_mlm.py``, ``quality_sts.py``): the comparison
corpus, the Hugging Face ``run_mlm.py`` recipe under a time budget, running ``sslpipe`` as a user
does, and scoring any model directory the same way.

The comparison corpus (from ../shared/data, written as plain .txt files, one document per
blank-line-separated block): WikiText-2 valid minus its last 60 articles (held out for the MLM
evaluation), War and Peace, Tiny Shakespeare, SST-2 train sentences and AG News dev (one document
per row). About 11 MB and 100k documents.
"""
from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
HELDOUT_ARTICLES = 60
MINI = ["model.hidden_size=256", "model.num_layers=4", "model.num_heads=4", "model.intermediate_size=1024",
        "tokenizer.vocab_size=8000", "data.max_seq_len=128"]


def _rows(path: Path, col: str) -> list[str]:
    with open(path, encoding="utf-8", newline="") as f:
        return [r[col] for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]


def build_corpus(out: Path) -> tuple[list[Path], Path]:
    """Write the comparison corpus under ``out``: (training files, held-out WikiText file)."""
    out.mkdir(parents=True, exist_ok=True)
    wiki = (DATA / "wikitext2" / "wiki.valid.raw").read_text(encoding="utf-8")
    starts = [m.start() for m in re.finditer(r"^ = [^=].* = $", wiki, flags=re.M)]
    cut = starts[-HELDOUT_ARTICLES]
    files = {"wiki_train.txt": wiki[:cut], "heldout.txt": wiki[cut:],
             "warpeace.txt": (DATA / "warpeace" / "input.txt").read_text(encoding="utf-8"),
             "shakespeare.txt": (DATA / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8"),
             "sst2_train.txt": "\n\n".join(_rows(DATA / "sst2" / "train.tsv", "sentence")) + "\n",
             "agnews_dev.txt": "\n\n".join(_rows(DATA / "agnews" / "dev.tsv", "text")) + "\n"}
    for name, text in files.items():
        (out / name).write_text(text, encoding="utf-8")
    return [out / n for n in files if n != "heldout.txt"], out / "heldout.txt"


def run_sslpipe(args: list[str], workdir: Path, log: Path) -> tuple[Path, dict]:
    """``sslpipe ARGS`` as a user runs it (own local Ray, SQLite MLflow store in ``workdir``);
    returns (exported model directory, metrics.json of the run)."""
    exe = Path(sys.executable).parent / "sslpipe"
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{workdir / 'mlflow.db'}", RAY_ADDRESS="")
    with open(log, "w") as f:
        rc = subprocess.run([str(exe), *args], cwd=workdir, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    text = log.read_text()
    if rc != 0:
        sys.exit(f"sslpipe {' '.join(args)} failed (exit {rc}):\n{text[-3000:]}")
    model_dir = Path(text.strip().splitlines()[-1])
    return model_dir, json.loads((model_dir.parent / "metrics.json").read_text())


def heldout_mlm(model_dir: Path, heldout: Path, tokenizer_dir: Path, max_rows: int = 2048) -> dict:
    """MLM loss/accuracy at the fixed 15% mask (EVAL_SEED) on every document of ``heldout``,
    packed into rows of 128 by our builder with the shared tokenizer: the same rows and masks for
    every model scored."""
    from transformers import AutoModelForMaskedLM

    from pipelines.configs import load_config
    from ssl_core.examples import ExampleBuilder
    from ssl_core.objectives.mlm import mlm_metrics
    from ssl_core.training.local import local_batches

    cfg = load_config("default", [f"data.corpus={heldout}", "data.val_fraction=0.0", *MINI])
    rows = list(local_batches(cfg, str(tokenizer_dir), "train", 1, batch_size=64, max_rows=max_rows))
    b = ExampleBuilder(cfg, str(tokenizer_dir))
    masked = [b.mask_for_eval({"input_ids": r["input_ids"]}) for r in rows]
    model = AutoModelForMaskedLM.from_pretrained(model_dir).eval()
    return mlm_metrics(model, masked, b.sp["pad"])


def shared_tokenizer(files: list[Path], out: Path) -> Path:
    """One WordPiece 8k for both sides, trained on 20,000 documents of the corpus."""
    from ssl_core.text import resolve_corpus, sample_documents
    from ssl_core.tokenizer import train_wordpiece
    texts = sample_documents(resolve_corpus(",".join(map(str, files))), 20000, 20)
    return train_wordpiece(texts, out, 8000, model_max_length=128)


def suite(model_dir: Path, tasks=("stsb", "sick", "sst2", "trec")) -> dict:
    from ssl_core.evaluation import evaluate, numeric
    return numeric(evaluate(model_dir, list(tasks), data_root=DATA, progress=None))


def time_budget(seconds: float):
    """A transformers ``TrainerCallback`` that stops training ``seconds`` after it began, and the
    dict it fills: ``t0`` (perf_counter at the start) and ``steps`` (optimizer steps done)."""
    from transformers import TrainerCallback

    clock = {"t0": None, "steps": 0}

    class Budget(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            clock["t0"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            clock["steps"] = state.global_step
            if time.perf_counter() - clock["t0"] >= seconds:
                control.should_training_stop = True

    return clock, Budget()


def hf_mlm(files: list[Path], tokenizer_dir: Path, out: Path, seconds: float, batch: int = 32,
           lr: float = 5e-4, warmup: int = 100, seed: int = 0) -> tuple[Path, dict]:
    """The ``run_mlm.py`` recipe for ``seconds`` of training: ``datasets`` text → tokenize per line
    → ``group_texts`` into 128-token blocks → ``Trainer`` + ``DataCollatorForLanguageModeling``
    (15%), AdamW, constant LR after ``warmup`` steps, fp32 (the Trainer's CPU default), a callback
    that stops at the budget. Tokenization happens before the clock starts. Returns (saved model
    directory, {steps, tokens, seconds})."""
    import torch
    from datasets import load_dataset
    from transformers import (AutoTokenizer, BertConfig, BertForMaskedLM,
                              DataCollatorForLanguageModeling, Trainer,
                              TrainingArguments)

    torch.set_num_threads(os.cpu_count() or 1)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    raw = load_dataset("text", data_files={"train": [str(f) for f in files]}, cache_dir=str(out / "cache"))["train"]
    tokenized = raw.map(lambda ex: tok(ex["text"], return_special_tokens_mask=True), batched=True,
                        remove_columns=["text"])
    seq = 128

    def group_texts(examples):
        concat = {k: sum(examples[k], []) for k in examples}
        total = (len(concat["input_ids"]) // seq) * seq
        return {k: [t[i:i + seq] for i in range(0, total, seq)] for k, t in concat.items()}

    ds = tokenized.map(group_texts, batched=True)
    torch.manual_seed(seed)
    model = BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=256, num_hidden_layers=4,
                                       num_attention_heads=4, intermediate_size=1024,
                                       max_position_embeddings=seq, pad_token_id=tok.pad_token_id))
    clock, budget = time_budget(seconds)

    targs = TrainingArguments(
        output_dir=str(out / "trainer"), per_device_train_batch_size=batch, learning_rate=lr,
        lr_scheduler_type="constant_with_warmup", warmup_steps=warmup, max_steps=10 ** 7,
        logging_strategy="no", save_strategy="no", report_to=[], use_cpu=True,
        dataloader_num_workers=0, seed=seed, disable_tqdm=True)
    trainer = Trainer(model=model, args=targs, train_dataset=ds,
                      data_collator=DataCollatorForLanguageModeling(tok, mlm_probability=0.15),
                      callbacks=[budget])
    trainer.train()
    wall = time.perf_counter() - clock["t0"]
    model_dir = out / "hf_model"
    trainer.model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    return model_dir, {"steps": clock["steps"], "tokens": clock["steps"] * batch * seq, "seconds": wall}
