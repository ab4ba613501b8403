"""The main job: corpus → tokenizer → Ray Data → Ray Train → MLflow registry.

    sslpipe pretrain [--config NAME_OR_PATH] [--set section.key=value ...]
    sslpipe pretrain --resume [RUN]      # continue a run whose driver died, from its last checkpoint

Each run lives in ``output_dir/RUN``: ``run.json`` (config, tokenizer, MLflow run id), the
tokenizer, Ray Train's checkpoints under ``ray/``, and at the end the exported ``model/``.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ssl_core.config import Config
from ssl_core.text import CorpusError, resolve_corpus, sample_documents
from ssl_core.tokenizer import train_wordpiece


class InputError(ValueError):
    """Bad input the user can fix; the CLI prints it on one line and exits 2."""


@dataclass
class PretrainResult:
    model_uri: str          # models:/NAME/VERSION
    model_dir: Path         # exported Hugging Face directory
    run_id: str
    metrics: dict


def _log(msg: str) -> None:
    print(f"[sslpipe] {msg}", flush=True)


def ensure_ray(cfg: Config) -> None:
    """Connect to ``RAY_ADDRESS`` if set, else start a local Ray (dashboard on 127.0.0.1)."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
        return
    # Train workers + the tokenizer actors + Ray Data tasks must fit at once, or the pipeline
    # waits forever on 2-core machines: give local Ray enough logical CPUs.
    need = cfg.train.num_workers * cfg.train.cpus_per_worker + cfg.data.tokenize_actors + 1
    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, int(need + 0.999)),
             dashboard_host="127.0.0.1",
             include_dashboard=True, log_to_driver=True)


def corpus_shards(cfg: Config):
    """The corpus's shards; InputError (one line) when it cannot be used."""
    try:
        return resolve_corpus(cfg.data.corpus, cfg.data.text_field)
    except CorpusError as e:
        raise InputError(str(e)) from None


def tokenizer_for(cfg: Config, shards, out_dir: Path) -> Path:
    """``tokenizer.path`` if given, else a WordPiece trained on a sample of the corpus into
    ``out_dir``. Checks first that the corpus has at least one usable document."""
    t0 = time.perf_counter()
    if cfg.model.init_from and not cfg.tokenizer.path:     # continued pretraining: its own tokenizer
        from dataclasses import replace
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
    _log(f"tokenizer: WordPiece, {cfg.tokenizer.vocab_size} pieces, trained on {len(texts)} "
         f"documents in {time.perf_counter() - t0:.1f}s -> {tok_dir}")
    return tok_dir


SMALL_CORPUS_BYTES = 5 << 20


def _check_enough_rows(cfg: Config, shards, tok_dir: str) -> None:
    """A small corpus (< 5 MB of files) gets one counting pass first, so that "too small for one
    batch" is a clear error before training starts instead of a failure inside the workers."""
    import fsspec
    from pipelines.data import examples

    if any(s.kind == "pydoc" for s in shards):
        return
    def nbytes(url: str) -> int:
        fs, path = fsspec.core.url_to_fs(url)
        return fs.size(path) or 0

    try:
        size = sum(nbytes(s.path) for s in shards)
    except Exception:   # sizes unknown: skip the check, the workers still fail clearly
        return
    if size >= SMALL_CORPUS_BYTES:
        return
    need = cfg.train.num_workers * cfg.train.batch_size
    rows = examples(cfg, shards, tok_dir, "train", 1).count()
    if rows < need:
        raise InputError(f"corpus '{cfg.data.corpus}' is too small: one pass gives {rows} training "
                         f"rows, one step needs {need} (train.num_workers {cfg.train.num_workers} x "
                         f"train.batch_size {cfg.train.batch_size}); use more text or lower "
                         "train.batch_size")


def find_run(cfg: Config, workdir: Path, name: str) -> Path:
    """The run directory to resume: ``name`` (a run name or a path), or the newest run under
    ``output_dir`` when ``name`` is "latest"."""
    root = Path(cfg.output_dir)
    root = root if root.is_absolute() else workdir / root
    if name != "latest":
        for cand in (Path(name), root / name):
            if (cand / "run.json").is_file():
                return cand.resolve()
        raise InputError(f"no run '{name}' to resume (looked for {root / name}/run.json); "
                         f"runs are directories under output_dir '{root}'")
    runs = sorted((p.parent for p in root.glob("*/run.json")), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise InputError(f"no run to resume under output_dir '{root}': start one with sslpipe pretrain")
    return runs[-1].resolve()


def prune_orphan_checkpoints(run_dir: Path) -> list[str]:
    """Remove checkpoint directories Ray Train never registered (a worker died while one was
    being written): keeps exactly the ``train.keep_checkpoints`` it tracks. Returns the removed."""
    import re
    snap = run_dir / "checkpoint_manager_snapshot.json"
    if not snap.is_file():
        return []
    known = set(re.findall(r"checkpoint_[0-9_.\-]+", snap.read_text()))
    removed = []
    for d in run_dir.glob("checkpoint_*"):
        if d.is_dir() and d.name not in known:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d.name)
    return removed


def evaluate_model(cfg: Config, model_dir: Path) -> tuple[dict, str]:
    """The evaluation suite of ``eval.tasks`` on the exported model: (metrics, printed table)."""
    tasks = [t.strip() for t in cfg.eval.tasks.split(",") if t.strip()]
    if not tasks:
        return {}, ""
    from ssl_core.evaluation import evaluate, format_table
    res = evaluate(model_dir, tasks, corpus=cfg.data.corpus, progress=lambda m: _log(f"eval: {m}"))
    return res, format_table(res)


def run_pretrain(cfg: Config, workdir: str | Path | None = None, resume: str | None = None) -> PretrainResult:
    """Train, export, evaluate, register. ``resume``: a run name/path or "latest" to continue a
    run from its last checkpoint (its saved config is used; ``cfg`` only locates output_dir)."""
    from pipelines import registry

    workdir = Path(workdir or os.getcwd()).resolve()
    # 1. fail fast on everything the user can fix, before anything heavy starts
    uri = registry.tracking_uri(workdir)
    try:
        registry.check_tracking(uri)
    except registry.TrackingError as e:
        raise InputError(str(e)) from None
    prior: dict = {}
    if resume:
        out_root = find_run(cfg, workdir, resume)
        prior = json.loads((out_root / "run.json").read_text())
        from ssl_core.config import _build
        cfg = _build(Config, prior["config"]).validate()
        run_name = prior["run_name"]
        _log(f"resuming run '{run_name}' from {out_root}")
    else:
        run_name = cfg.mlflow.run_name or dt.datetime.now().strftime("pretrain-%Y%m%d-%H%M%S")
        out_root = Path(cfg.output_dir)
        out_root = (out_root if out_root.is_absolute() else workdir / out_root) / run_name
    shards = corpus_shards(cfg)
    from ssl_core.model import ModelError, check_model_config
    try:
        check_model_config(cfg.model, cfg.data.max_seq_len)
    except ModelError as e:
        raise InputError(str(e)) from None
    if prior.get("tokenizer_dir") and Path(prior["tokenizer_dir"]).is_dir():
        tok_dir = Path(prior["tokenizer_dir"])
    else:
        tok_dir = tokenizer_for(cfg, shards, out_root / "tokenizer")

    # 3. Ray Data + Ray Train
    import mlflow
    ensure_ray(cfg)
    import ray
    from pipelines.data import build_datasets, report
    from pipelines.train import NO_BATCH, fit

    _check_enough_rows(cfg, shards, str(tok_dir))
    train_ds, val_ds, stats = build_datasets(cfg, shards, str(tok_dir))
    val_ds = val_ds.materialize()
    if val_ds.count() == 0:
        _log("warning: the validation split is empty (corpus too small for data.val_fraction)")

    registry.setup_experiment(uri, cfg.mlflow.experiment, workdir)
    run_ctx = mlflow.start_run(run_id=prior["mlflow_run_id"]) if prior.get("mlflow_run_id") \
        else mlflow.start_run(run_name=run_name)
    with run_ctx as run:
        if not prior:
            mlflow.log_params(registry.flatten(cfg.to_dict()))
            mlflow.log_dict(cfg.to_dict(), "config.json")
        out_root.mkdir(parents=True, exist_ok=True)
        (out_root / "run.json").write_text(json.dumps(
            {"run_name": run_name, "mlflow_run_id": run.info.run_id, "tracking_uri": uri,
             "tokenizer_dir": str(tok_dir), "config": cfg.to_dict()}, indent=2))
        _log(f"MLflow run {run.info.run_id} in experiment '{cfg.mlflow.experiment}' at {uri}")
        _log(f"training: {cfg.train.num_workers} workers x {cfg.train.batch_size} sequences of "
             f"{cfg.data.max_seq_len} tokens, {cfg.train.max_steps} steps; checkpoints in "
             f"{out_root / 'ray'} (resume with: sslpipe pretrain --resume {run_name})")
        try:
            result = fit(cfg, train_ds, val_ds, str(tok_dir), str(out_root / "ray"), run_name, uri,
                         run.info.run_id)
            error = result.error
        except Exception as e:   # Ray Train raises TrainingFailedError from fit()
            error = e
        if error is not None:
            if NO_BATCH in str(error):
                raise InputError(f"corpus '{cfg.data.corpus}' is too small: {NO_BATCH} of "
                                 f"{cfg.train.batch_size} sequences per worker for "
                                 f"{cfg.train.num_workers} workers; use more text or lower "
                                 "train.batch_size / train.num_workers") from None
            raise error
        metrics = dict(result.metrics or {})
        orphans = prune_orphan_checkpoints(out_root / "ray" / run_name)
        if orphans:
            _log(f"removed {len(orphans)} checkpoint(s) left unfinished by a failed worker: {', '.join(orphans)}")
        data_report = report(ray.get(stats.get.remote()), cfg.data.max_seq_len)
        mlflow.log_text(data_report, "data_report.txt")
        print(data_report, flush=True)
        # 4. export the Hugging Face directory from the final checkpoint
        model_dir = out_root / "model"
        if model_dir.exists():
            shutil.rmtree(model_dir)
        with result.checkpoint.as_directory() as d:
            shutil.copytree(Path(d) / "model", model_dir)
        # 5. the evaluation suite on the exported model
        scores, table = evaluate_model(cfg, model_dir)
        if scores:
            print(table, flush=True)
            mlflow.log_text(table, "evaluation.txt")
            mlflow.log_metrics({f"eval_{k}": float(v) for k, v in scores.items()
                                if isinstance(v, (int, float)) and not isinstance(v, bool)})
            metrics.update({f"eval_{k}": v for k, v in scores.items()})
        (out_root / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
        # 6. MLflow model + registry
        model_uri, _ = registry.log_and_register(model_dir, cfg.mlflow.registered_model)
        mlflow.set_tag("sslpipe.model_dir", str(model_dir))
    _log(f"registered model: {model_uri}")
    _log(f"exported Hugging Face directory: {model_dir}")
    return PretrainResult(model_uri, model_dir, run.info.run_id, metrics)
