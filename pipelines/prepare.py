"""What every job does before it trains or reads data: check the inputs, connect to Ray, find the
corpus and the tokenizer. Shared by ``sslpipe pretrain`` and ``sslpipe data``.

Everything the user can fix is an :class:`InputError`: one line, exit 2, before anything heavy.
"""
from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

from ssl_core.config import Config, parse_amounts
from ssl_core.errors import UserError
from ssl_core.log import say
from ssl_core.text import CorpusError, resolve_corpus, sample_documents
from ssl_core.tokenizer import train_wordpiece


class InputError(UserError):
    """Bad input the user can fix; the CLI prints it on one line and exits 2."""


def checked_tracking(workdir: str | Path | None) -> tuple[Path, str]:
    """(the resolved working directory, the MLflow tracking URI), the server checked reachable
    before anything heavy starts: InputError (one line) when it is not."""
    from pipelines import registry

    workdir = Path(workdir or os.getcwd()).resolve()
    uri = registry.tracking_uri(workdir)
    try:
        registry.check_tracking(uri)
    except registry.TrackingError as e:
        raise InputError(str(e)) from None
    return workdir, uri


def local_ray_defaults() -> None:
    """Settings for a Ray that runs on the user's own machine, started by this process (a
    ``RAY_*`` variable the user set wins):

    * ``RAY_worker_niceness=0``: Ray starts its workers at nice 15 so that on a cluster node they
      never slow its raylet and GCS down; on one machine that also puts the training below every
      other process of the user's session and below Ray's own daemons, whose wakeups then preempt
      the compute threads. A plain training script runs at nice 0: so do the workers here.
      ``benchmarks/train_overhead.py``, the Train worker at nice 0 vs 15 in alternate rounds
      (2026-12-02, Xeon with AMX): 126.2 / 126.8 / 120.9 vs 123.4 / 119.6 / 119.0 samples/s.
    * ``RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0``: Ray Train starts a ``PreemptionWatcher`` actor per
      run that polls for cloud nodes being drained; the one node of a local Ray is never drained,
      and each Ray worker process wakes the cores ~100 times/s even when idle (its main thread's
      10 ms signal check): in a ``perf sched`` trace of a Train run (2026-12-02, AMD EPYC), every
      such actor preempted the training threads ~50 times/s. Ray Train passes the variable on to
      its controller."""
    os.environ.setdefault("RAY_worker_niceness", "0")
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


def ensure_ray(cfg: Config) -> None:
    """Connect to ``RAY_ADDRESS`` if set, else start a local Ray (dashboard on 127.0.0.1)."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
        return
    local_ray_defaults()
    # Train workers + the tokenizer actors + Ray Data tasks must fit at once, or the pipeline
    # waits forever on 2-core machines: give local Ray enough logical CPUs.
    need = cfg.train.num_workers * cfg.train.cpus_per_worker + cfg.data.tokenize_actors + 1
    # a config made for a cluster (custom resources per node pool) runs on one machine too
    custom = {k: 1000.0 for k in {**parse_amounts(cfg.data.resources, "data.resources"),
                                  **parse_amounts(cfg.train.resources_per_worker, "train.resources_per_worker")}}
    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, int(need + 0.999)), resources=custom or None,
             dashboard_host="127.0.0.1", include_dashboard=True, log_to_driver=True)


def corpus_shards(cfg: Config):
    """The corpus's shards; InputError (one line) when it cannot be used."""
    try:
        return resolve_corpus(cfg.data.corpus, cfg.data.text_field)
    except CorpusError as e:
        raise InputError(str(e)) from None


def tokenizer_for(cfg: Config, shards, out_dir: Path) -> Path:
    """``tokenizer.path`` if given (``model.init_from``'s own for continued pretraining), else a
    WordPiece trained on a sample of the corpus into ``out_dir``. Checks first that the corpus has
    at least one usable document."""
    t0 = time.perf_counter()
    if cfg.model.init_from and not cfg.tokenizer.path:
        cfg = replace(cfg, tokenizer=replace(cfg.tokenizer, path=cfg.model.init_from))
    n_sample = 1 if cfg.tokenizer.path else cfg.tokenizer.sample_documents
    try:
        texts = sample_documents(shards, n_sample, cfg.data.min_chars)
    except CorpusError as e:
        raise InputError(str(e)) from None
    if not texts:
        raise InputError(f"corpus '{cfg.data.corpus}' has no document of at least "
                         f"{cfg.data.min_chars} characters (empty, whitespace only or binary): "
                         "nothing to train on")
    if cfg.tokenizer.path:
        tok_dir = Path(cfg.tokenizer.path)
        if not (tok_dir / "tokenizer.json").is_file():
            what = "model.init_from" if cfg.tokenizer.path == cfg.model.init_from else "tokenizer.path"
            raise InputError(f"{what} '{tok_dir}' has no tokenizer.json: give a Hugging Face "
                             "model/tokenizer directory" + ("" if what == "model.init_from" else
                                                           ", or leave tokenizer.path empty to train one"))
        return tok_dir
    tok_dir = train_wordpiece(texts, out_dir, cfg.tokenizer.vocab_size, cfg.tokenizer.lowercase,
                              cfg.tokenizer.min_frequency, model_max_length=cfg.data.max_seq_len)
    say(f"tokenizer: WordPiece, {cfg.tokenizer.vocab_size} pieces, trained on {len(texts)} "
        f"documents in {time.perf_counter() - t0:.1f}s -> {tok_dir}")
    return tok_dir


def check_enough_rows(cfg: Config, counts: dict) -> None:
    """InputError (one line, before training starts) when one pass over the corpus gives fewer
    rows or view pairs than one step of all workers needs (``counts``: the tokenizing pass's)."""
    w = cfg.train.num_workers
    needs = []
    if cfg.objectives.mlm or cfg.objectives.nsp:
        needs.append(("training rows", counts.get("train_rows", 0), cfg.train.batch_size, "train.batch_size"))
    if cfg.objectives.contrastive:
        needs.append(("contrastive view pairs", counts.get("train_examples_contrastive", 0),
                      cfg.contrastive.batch_size, "contrastive.batch_size"))
    for what, have, per_worker, key in needs:
        if have < w * per_worker:
            raise InputError(f"corpus '{cfg.data.corpus}' is too small: one pass gives {have} {what}, "
                             f"one step needs {w * per_worker} (train.num_workers {w} x {key} "
                             f"{per_worker}); use more text or lower {key}")

