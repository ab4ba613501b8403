"""Ingest speed: read -> tokenize -> pack/group -> mask -> batches, same corpus, same 2 cores.

* ours:      sslpipe's Ray Data pipeline (read tasks, example-building actor pool of 2, masks drawn
             per batch as the training worker does), consumed as (32, 128) numpy batches.
* reference: HF ``datasets`` (load_dataset("text") -> map(tokenize, num_proc=2) ->
             map(group_texts, num_proc=2), the run_mlm.py recipe) + ``DataCollatorForLanguageModeling``
             through a torch DataLoader, caching off.

Both use the same WordPiece tokenizer (ours, trained once beforehand) and count real tokens in the
training rows they produce. Needs the `bench` extra (``pip install -e .[bench]``).

    python benchmarks/ingest.py [--corpus PATHS] [--repeats 3]

Ends with ``RATIO ingest <x>`` (ours tokens/s / reference tokens/s, median over repeats).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

DATA = ROOT.parent / "shared" / "data"
DEFAULT = ",".join(str(DATA / p) for p in ("wikitext2/wiki.valid.raw", "tinyshakespeare/input.txt",
                                           "warpeace/input.txt"))
T, B = 128, 32


def ours(cfg, shards, tok_dir) -> tuple[float, int]:
    from pipelines.data import examples
    from ssl_core.examples import ExampleBuilder
    from ssl_core.masking import mask_rows

    masker = ExampleBuilder(cfg, tok_dir).masker()
    t = time.perf_counter()
    tokens = 0
    ds = examples(cfg, shards, tok_dir, "train", 1)
    for b in ds.iter_batches(batch_size=B, batch_format="numpy", drop_last=True):
        ids, labels = mask_rows(masker, b, seed=0)
        tokens += int(b["num_tokens"].sum())
    return time.perf_counter() - t, tokens


def reference(files: list[str], tok_dir: str, cache: str) -> tuple[float, int]:
    import datasets
    import torch
    from transformers import AutoTokenizer, DataCollatorForLanguageModeling

    datasets.disable_caching()
    tok = AutoTokenizer.from_pretrained(tok_dir)
    collator = DataCollatorForLanguageModeling(tok, mlm_probability=0.15)
    t = time.perf_counter()
    raw = datasets.load_dataset("text", data_files={"train": files}, cache_dir=cache)["train"]
    tokd = raw.map(lambda b: tok(b["text"], return_special_tokens_mask=True), batched=True, num_proc=2,
                   remove_columns=["text"])

    def group_texts(ex):
        cat = {k: sum(ex[k], []) for k in ex}
        n = (len(cat["input_ids"]) // T) * T
        return {k: [v[i:i + T] for i in range(0, n, T)] for k, v in cat.items()}

    grouped = tokd.map(group_texts, batched=True, num_proc=2)
    loader = torch.utils.data.DataLoader(grouped, batch_size=B, collate_fn=collator, drop_last=True)
    tokens = 0
    for batch in loader:
        tokens += int(batch["attention_mask"].sum())
    return time.perf_counter() - t, tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default=DEFAULT)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from ssl_core.perf import cpu_line
    print(cpu_line(), flush=True)

    import ray
    from pipelines.data import quiet_data_context
    from ssl_core.config import load_config
    from ssl_core.text import resolve_corpus, sample_documents
    from ssl_core.tokenizer import train_wordpiece

    cfg = load_config(None, [f"data.corpus={args.corpus}", "data.val_fraction=0", "data.tokenize_actors=2",
                             f"data.max_seq_len={T}", "data.min_chars=1"])
    shards = resolve_corpus(cfg.data.corpus)
    files = [s.path for s in shards]
    with tempfile.TemporaryDirectory() as tmp:
        tok_dir = str(train_wordpiece(sample_documents(shards, 20000), Path(tmp) / "tok", 8000))
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
        quiet_data_context()
        r_ours, r_ref = [], []
        for i in range(args.repeats):
            dt, n = ours(cfg, shards, tok_dir)
            r_ours.append(n / dt)
            print(f"ours      run {i}: {n:,} tokens in {dt:.2f}s = {n / dt:,.0f} tok/s", flush=True)
            dt, n = reference(files, tok_dir, str(Path(tmp) / f"hf{i}"))
            r_ref.append(n / dt)
            print(f"reference run {i}: {n:,} tokens in {dt:.2f}s = {n / dt:,.0f} tok/s", flush=True)
        ray.shutdown()
    print(f"median: ours {statistics.median(r_ours):,.0f} tok/s, reference {statistics.median(r_ref):,.0f} tok/s")
    print(f"RATIO ingest {statistics.median(r_ours) / statistics.median(r_ref):.2f}")


if __name__ == "__main__":
    main()
