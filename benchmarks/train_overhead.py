"""Ray Train overhead: our training loop under a real local Ray vs a plain PyTorch loop.

The same model (the ``default`` config: 4 layers, hidden 256, seq 128, WordPiece 8k trained here
on War and Peace), the same batch, the same precision (``auto``: bf16 on a CPU with native bf16),
the same tokenized documents (``local_documents``), batches built from them the same way
(``training.data.train_batches``), the same number of steps, two cores each side; runs
interleaved (plain, Ray, plain, Ray, ..., plain): every Ray run is compared with the mean of the two
plain runs around it, because the shared hosts here drift by ±15% in speed within minutes (two
invocations half an hour apart on one machine gave 0.958 and 0.862 from pooled medians).

* OURS:  ``pipelines.train.fit`` as ``sslpipe pretrain`` calls it: ``ray.init(num_cpus=4)``, a
         ``TorchTrainer`` with 1 worker (``cpus_per_worker=2``) running ``train_func`` on the
         documents as a materialized Ray dataset (``data.shuffle_buffer=0`` by default), metrics to
         an MLflow run (a sqlite store under /tmp, as the pipeline logs them), ``checkpoint_every=0``.
         Speed = the ``samples_per_s`` the loop logs every ``log_every`` steps (read back from
         MLflow), the first window (warm-up) dropped.
* PLAIN: one process, a bare ``for`` loop over the same batch stream calling the training loop's
         own ``build_state`` and ``train_step`` (same module, attention kernel, masks, precision,
         optimizer); samples/s over windows of ``log_every`` steps, the first dropped.

    python benchmarks/train_overhead.py [--steps 60] [--rounds 2] [--batch 16] [--shuffle-buffer 0]

Ends with ``RATIO train_overhead <median over rounds of: Ray samples/s ÷ the mean of the plain
runs just before and just after it>`` (window medians; the pooled ratio is printed above it).
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch

DATA = ROOT.parent / "shared" / "data"
THREADS = 2


def make_config(corpus: Path, args):
    from pipelines.configs import load_config
    return load_config(args.config, [
        f"data.corpus={corpus}", f"data.shuffle_buffer={args.shuffle_buffer}",
        f"train.batch_size={args.batch}", f"train.max_steps={args.steps}",
        f"train.cpus_per_worker={THREADS}", "train.num_workers=1", "train.use_gpu=false",
        "train.checkpoint_every=0", f"train.log_every={args.log_every}", "train.precision=auto",
        "eval.heldout_rows=64"])


def plain_loop(cfg, tok_dir: str, docs: list[dict], log_every: int) -> list[float]:
    """samples/s per window of ``log_every`` steps of the loop's own ``train_step``, no session."""
    from ssl_core.training import TrainJob, build_state, data, train_step

    ts = build_state(TrainJob(cfg, tok_dir), torch.device("cpu"), measure_peak=False)
    ts.module.train()
    batches = data.train_batches(cfg, ts.builder, lambda epoch: docs)
    out, t_win, n = [], time.perf_counter(), 0
    for step in range(cfg.train.max_steps):
        batch = next(batches)
        ts.progress.step = step
        sums, _ = train_step(ts, [batch], step / cfg.train.max_steps)
        _ = {k: float(v) for k, v in sums.items()}          # the loop reads its sums back too
        n += len(batch["input_ids"])
        if (step + 1) % log_every == 0:
            now = time.perf_counter()
            out.append(n / (now - t_win))
            t_win, n = now, 0
    return out


def ray_run(cfg, tok_dir: str, train_ds, val_ds, storage: Path, uri: str, name: str) -> list[float]:
    """``fit`` with an MLflow run; returns the samples_per_s the loop logged, window by window."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from pipelines.train import fit
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("train_overhead")
    with mlflow.start_run(run_name=name) as run:
        run_id = run.info.run_id
    t = time.perf_counter()
    result = fit(cfg, [train_ds], val_ds, tok_dir, str(storage), name, uri, run_id)
    wall = time.perf_counter() - t
    if result.error is not None:
        raise result.error
    client = MlflowClient(uri)
    hist = sorted(client.get_metric_history(run_id, "samples_per_s"), key=lambda m: m.step)
    wait = sorted(client.get_metric_history(run_id, "data_wait_frac"), key=lambda m: m.step)[1:]
    waited = f"; data wait {statistics.median(m.value for m in wait):.1%} of window time, median" if wait else ""
    print(f"  (fit() wall {wall:.1f}s for {cfg.train.max_steps} steps, Ray Train start/stop, eval and "
          f"final checkpoint included{waited})")
    return [m.value for m in hist]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="default")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--log-every", type=int, default=5)
    ap.add_argument("--shuffle-buffer", type=int, default=0)
    ap.add_argument("--corpus", default=str(DATA / "warpeace" / "train.txt"))
    args = ap.parse_args()
    corpus = Path(args.corpus)
    if not corpus.is_file():
        sys.exit(f"corpus {corpus} not found (the shared data folder is missing)")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    for name in ("ray.data", "ray.train", "ray.tune", "mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)

    import ray

    from ssl_core.text import resolve_corpus, sample_documents
    from ssl_core.tokenizer import train_wordpiece
    from ssl_core.training.local import local_documents

    tmp = Path(tempfile.mkdtemp(prefix="sslbench_overhead_"))
    cfg = make_config(corpus, args)
    texts = sample_documents(resolve_corpus(str(corpus)), cfg.tokenizer.sample_documents, cfg.data.min_chars)
    tok_dir = str(train_wordpiece(texts, tmp / "tok", cfg.tokenizer.vocab_size,
                                  model_max_length=cfg.data.max_seq_len))
    docs = local_documents(cfg, tok_dir, "train")
    val = local_documents(cfg, tok_dir, "val")
    as_items = lambda groups: [{k: g[k][i] for k in g} for g in groups for i in range(len(g["id"]))]
    from ssl_core.perf import choose_dtype, cpu_line
    print(cpu_line())
    print(f"precision {str(choose_dtype(cfg.train.precision, torch.device('cpu'))).replace('torch.', '')}; "
          f"{cfg.model.num_layers} layers x {cfg.model.hidden_size}, seq {cfg.data.max_seq_len}, "
          f"batch {args.batch}, {args.steps} steps, {THREADS} threads, {sum(len(g['id']) for g in docs):,} "
          f"documents, shuffle buffer {args.shuffle_buffer}")

    from pipelines.prepare import local_ray_defaults
    local_ray_defaults()                         # as `sslpipe pretrain` starts its local Ray
    ray.init(address="local", num_cpus=4, _temp_dir=str(tmp / "ray"), include_dashboard=False,
             log_to_driver=True)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        train_ds = ray.data.from_items(as_items(docs)).materialize()
        val_ds = ray.data.from_items(as_items(val)).materialize()
        uri = f"sqlite:///{tmp / 'mlflow.db'}"
        plain, ours, ratios = [], [], []
        p = plain_loop(cfg, tok_dir, docs, args.log_every)[1:]              # first window = warm-up
        for r in range(args.rounds):
            o = ray_run(cfg, tok_dir, train_ds, val_ds, tmp / "storage", uri, f"overhead{r}")[1:]
            after = plain_loop(cfg, tok_dir, docs, args.log_every)[1:]
            plain += p
            ours += o
            ratios.append(statistics.median(o) / ((statistics.median(p) + statistics.median(after)) / 2))
            print(f"round {r + 1}: plain median {statistics.median(p):6.1f} samples/s ({len(p)} windows) | "
                  f"Ray Train median {statistics.median(o):6.1f} samples/s ({len(o)} windows) | plain after "
                  f"{statistics.median(after):6.1f} -> Ray ÷ mean of the plain runs around it {ratios[-1]:.3f}",
                  flush=True)
            p = after
        plain += p
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    mp, mo = statistics.median(plain), statistics.median(ours)
    T = cfg.data.max_seq_len
    print(f"plain loop  median {mp:7.1f} samples/s ({mp * T:,.0f} slots/s) over {len(plain)} windows")
    print(f"Ray Train   median {mo:7.1f} samples/s ({mo * T:,.0f} slots/s) over {len(ours)} windows "
          f"(pooled: {mo / mp:.3f})")
    print(f"RATIO train_overhead {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
