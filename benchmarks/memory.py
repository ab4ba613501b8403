"""Streaming check: peak memory of one data pass over a 1x and a 10x corpus (same pipeline).

The 10x corpus is the 1x corpus (WikiText-2 valid + Tiny Shakespeare + War and Peace, ~5 MB)
copied ten times under other file names. Each size runs in a fresh process with its own local
Ray; a sampler adds up the resident memory (RSS) of every process started for the run (driver,
raylet, workers, actors) every 0.1 s and keeps the peak. If reading streams, the 10x peak stays
close to the 1x peak while the work grows 10x.

    python benchmarks/memory.py

Ends with ``RATIO memory_10x <x>`` (peak 10x / peak 1x; lower is better, 1.0 = flat).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
FILES = [DATA / "wikitext2/wiki.valid.raw", DATA / "tinyshakespeare/input.txt", DATA / "warpeace/input.txt"]

CHILD = r"""
import os, sys, time
sys.path.insert(0, sys.argv[3])
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
import ray
from pipelines.data import examples, quiet_data_context
from ssl_core.config import load_config
from ssl_core.text import resolve_corpus
cfg = load_config(None, [f"data.corpus={sys.argv[1]}", "data.val_fraction=0", "data.tokenize_actors=2",
                         "data.max_seq_len=128"])
ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, object_store_memory=1 << 30)
quiet_data_context()
t = time.perf_counter()
rows = sum(len(b["num_tokens"]) for b in examples(cfg, resolve_corpus(sys.argv[1]), sys.argv[2], "train", 1)
           .iter_batches(batch_size=256, batch_format="numpy"))
print(f"ROWS {rows} SECONDS {time.perf_counter() - t:.1f}", flush=True)
ray.shutdown()
"""


def run(corpus: str, tok_dir: str) -> tuple[float, str]:
    import psutil

    start = time.time() - 1
    proc = subprocess.Popen([sys.executable, "-c", CHILD, corpus, tok_dir, str(ROOT)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak = 0.0
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            total = 0
            for p in psutil.process_iter(["create_time", "memory_info"]):
                try:
                    if p.info["create_time"] >= start and p.info["memory_info"]:
                        total += p.info["memory_info"].rss
                except (psutil.Error, TypeError):
                    pass
            peak = max(peak, total)
            time.sleep(0.1)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, _ = proc.communicate()
    done.set()
    th.join()
    line = [l for l in out.splitlines() if l.startswith("ROWS")]
    return peak / 2**20, line[0] if line else "(no result)"


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from ssl_core.perf import cpu_line
    print(cpu_line(), flush=True)
    from ssl_core.text import resolve_corpus, sample_documents
    from ssl_core.tokenizer import train_wordpiece

    with tempfile.TemporaryDirectory() as tmp:
        one, ten = Path(tmp) / "x1", Path(tmp) / "x10"
        one.mkdir()
        ten.mkdir()
        for f in FILES:
            shutil.copy(f, one / (f.parent.name + ".txt"))
            for i in range(10):
                shutil.copy(f, ten / f"{f.parent.name}-{i}.txt")
        tok = str(train_wordpiece(sample_documents(resolve_corpus(str(one)), 20000), Path(tmp) / "tok", 8000))
        p1, r1 = run(str(one), tok)
        print(f"1x  corpus: peak {p1:,.0f} MiB  {r1}", flush=True)
        p10, r10 = run(str(ten), tok)
        print(f"10x corpus: peak {p10:,.0f} MiB  {r10}", flush=True)
    print(f"RATIO memory_10x {p10 / p1:.2f}")


if __name__ == "__main__":
    main()
