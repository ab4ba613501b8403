"""The main job: corpus → tokenizer → Ray Data → Ray Train → evaluation → MLflow registry.

    sslpipe pretrain [--config NAME_OR_PATH] [--set section.key=value ...]
    sslpipe pretrain --resume [RUN]      # continue a run whose driver died, from its last checkpoint

In three parts that other jobs (a Tune trial, a cluster job) reuse:

    run = prepare(cfg, workdir, resume)         # inputs checked, run directory, tokenizer
    result, counts = train(run, mlflow_run_id)  # Ray Data (tokenize once) + Ray Train
    out = publish(run, result, counts)          # data report, export, evaluation, MLflow model + registry

Each run lives in ``output_dir/RUN``: ``run.json`` (config, tokenizer, MLflow run id), the
tokenizer, Ray Train's checkpoints under ``ray/``, and at the end the exported ``model/``.
"""
from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from ssl_core.config import Config
from ssl_core.encoder import check_model_config
from ssl_core.log import say
from pipelines.prepare import (InputError, check_enough_rows, checked_tracking, corpus_shards, ensure_ray,
                              tokenizer_for)


@dataclass
class PretrainResult:
    model_uri: str          # models:/NAME/VERSION
    model_dir: Path         # exported Hugging Face directory
    run_id: str
    metrics: dict


@dataclass
class PreparedRun:
    """A run whose inputs are checked: where it lives, what it trains on, where it logs."""
    cfg: Config
    run_name: str
    out_root: Path                     # output_dir/RUN
    shards: list
    tokenizer_dir: Path
    tracking_uri: str
    workdir: Path
    prior: dict = field(default_factory=dict)    # run.json of a run being resumed

    @property
    def storage(self) -> str:
        """Where Ray Train keeps checkpoints (under RUN/ in it): ``train.storage_path``, a path or
        URI every node reaches, else ``output_dir/RUN/ray`` on the driver's disk."""
        sp = self.cfg.train.storage_path.strip()
        if not sp:
            return str(self.out_root / "ray")
        return sp.rstrip("/") if "://" in sp else str((self.workdir / sp).resolve())


def find_run(cfg: Config, workdir: Path, name: str, marker: str = "run.json") -> Path:
    """The run (or search: ``marker`` search.json) directory to resume: ``name`` (a name or a
    path), or the newest one under ``output_dir`` when ``name`` is "latest"."""
    root = Path(cfg.output_dir)
    root = root if root.is_absolute() else workdir / root
    what, cmd = ("search", "sslpipe tune") if marker == "search.json" else ("run", "sslpipe pretrain")
    if name != "latest":
        for cand in (Path(name), root / name):
            if (cand / marker).is_file():
                return cand.resolve()
        raise InputError(f"no {what} '{name}' to resume (looked for {root / name}/{marker}); "
                         f"they are directories under output_dir '{root}'")
    runs = sorted((p.parent for p in root.glob(f"*/{marker}")), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise InputError(f"no {what} to resume under output_dir '{root}': start one with {cmd}")
    return runs[-1].resolve()


def prune_orphan_checkpoints(run_dir: Path) -> list[str]:
    """Remove checkpoint directories Ray Train never registered (a worker died while one was
    being written): keeps exactly the ``train.keep_checkpoints`` it tracks. Returns the removed."""
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


def prepare(cfg: Config, workdir: str | Path | None = None, resume: str | None = None) -> PreparedRun:
    """Check everything the user can fix, before anything heavy starts (InputError / UserError:
    one line); locate or create the run; find or train the tokenizer. ``resume``: a run name or
    path, or "latest": its saved config is used (``cfg`` only locates output_dir)."""
    workdir, uri = checked_tracking(workdir)
    prior: dict = {}
    if resume:
        out_root = find_run(cfg, workdir, resume)
        prior = json.loads((out_root / "run.json").read_text())
        cfg = Config.from_dict(prior["config"])
        run_name = prior["run_name"]
        say(f"resuming run '{run_name}' from {out_root}")
    else:
        run_name = cfg.mlflow.run_name or dt.datetime.now().strftime("pretrain-%Y%m%d-%H%M%S")
        out_root = Path(cfg.output_dir)
        out_root = (out_root if out_root.is_absolute() else workdir / out_root) / run_name
    shards = corpus_shards(cfg)
    check_model_config(cfg.model, cfg.data.max_seq_len)
    if prior.get("tokenizer_dir") and Path(prior["tokenizer_dir"]).is_dir():
        tok_dir = Path(prior["tokenizer_dir"])
    else:
        tok_dir = tokenizer_for(cfg, shards, out_root / "tokenizer")
    return PreparedRun(cfg, run_name, out_root, shards, tok_dir, uri, workdir, prior)


def warn_local_storage(run: PreparedRun) -> None:
    """Checkpoints on the driver's disk with Train workers on other machines: say so (a node's
    checkpoint would stay on that node unless the path is a shared filesystem)."""
    import ray
    if "://" in run.storage:
        return
    hosts = {n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")}
    if len(hosts) > 1:
        say(f"warning: checkpoints go to {run.storage} on the driver's machine and the cluster has "
            f"{len(hosts)} machines; unless that is a shared filesystem, set train.storage_path to "
            "an s3:// or gs:// URI")


def train(run: PreparedRun, mlflow_run_id: str | None):
    """Ray Data (the corpus read and tokenized once) + Ray Train for a prepared run; returns (Ray
    Train's Result, the data report's counts). InputError when the corpus is too small."""
    ensure_ray(run.cfg)
    from pipelines.data import report, tokenized_corpus
    from pipelines.train import fit
    from ssl_core.training import NO_BATCH

    cfg = run.cfg
    t0 = time.perf_counter()
    corpus = tokenized_corpus(cfg, run.shards, str(run.tokenizer_dir))
    counts = corpus.counts
    say(f"corpus read and tokenized once in {time.perf_counter() - t0:.1f}s: "
        f"{counts.get('train_documents', 0):,} training and {counts.get('val_documents', 0):,} "
        f"held-out documents, {counts.get('train_tokens', 0):,} training tokens")
    print(report(counts, cfg.data.max_seq_len), flush=True)
    check_enough_rows(cfg, counts)
    if not counts.get("val_documents"):
        say("warning: the validation split is empty (corpus too small for data.val_fraction)")
    say(f"training: {cfg.train.num_workers} workers x {cfg.train.batch_size} sequences of "
        f"{cfg.data.max_seq_len} tokens, {cfg.train.max_steps} steps; checkpoints in "
        f"{run.storage} (resume with: sslpipe pretrain --resume {run.run_name})")
    warn_local_storage(run)
    try:
        result = fit(cfg, corpus.parts(cfg.train.num_workers), corpus.val, str(run.tokenizer_dir),
                     str(run.storage), run.run_name, run.tracking_uri, mlflow_run_id)
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
    orphans = [] if "://" in run.storage else prune_orphan_checkpoints(Path(run.storage) / run.run_name)
    if orphans:
        say(f"removed {len(orphans)} checkpoint(s) left unfinished by a failed worker: {', '.join(orphans)}")
    return result, counts


def whiten(cfg: Config, model_dir: Path) -> dict:
    """``embedding.whiten``: the exported model's sentence embedding gets a whitening map fitted on
    training-corpus sentences (``ssl_core.whitening``); returns the metric to log."""
    if not cfg.embedding.whiten:
        return {}
    from ssl_core.errors import UserError
    from ssl_core.export import DENSE_DIR
    from ssl_core.whitening import whiten_model_dir

    t0 = time.perf_counter()
    try:
        n = whiten_model_dir(model_dir, cfg.data, cfg.embedding.whiten_sentences, cfg.train.seed)
    except UserError as e:               # after training: the model is kept, without the map
        say(f"warning: embedding: whitening skipped, the model is exported without it: {e}")
        return {"whiten_sentences": 0}
    say(f"embedding: whitening map fitted on {n:,} training-corpus sentences in "
        f"{time.perf_counter() - t0:.1f}s -> {model_dir / DENSE_DIR}")
    return {"whiten_sentences": n}


def evaluate_model(cfg: Config, model_dir: Path) -> tuple[dict, str]:
    """The evaluation suite of ``eval.tasks`` on the exported model: (metrics, printed table)."""
    tasks = [t.strip() for t in cfg.eval.tasks.split(",") if t.strip()]
    if not tasks:
        return {}, ""
    from ssl_core.evaluation import evaluate, format_table
    res = evaluate(model_dir, tasks, corpus=cfg.data.corpus, data_root=cfg.eval.data_root or None,
                   progress=lambda m: say(f"eval: {m}"))
    return res, format_table(res)


def publish(run: PreparedRun, result, counts: dict, run_id: str) -> tuple[str, Path, dict]:
    """In the active MLflow run: the data report, the exported model (from the final checkpoint),
    the evaluation suite, metrics.json, the evaluation report (markdown + PNG), the MLflow model
    and its registered version. Every call to the tracking store is retried while it is not
    reachable (``registry.retrying``): the exported directory is on disk whatever happens.
    Returns (models:/NAME/VERSION, exported directory, metrics)."""
    import mlflow

    from pipelines import plots, registry
    from pipelines import report as eval_report
    from pipelines.data import report

    cfg = run.cfg
    metrics = dict(result.metrics or {})
    retry = registry.retrying
    retry(lambda: mlflow.log_text(report(counts, cfg.data.max_seq_len), "data_report.txt"),
          "logging the data report")
    model_dir = run.out_root / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    with result.checkpoint.as_directory() as d:
        shutil.copytree(Path(d) / "model", model_dir)
    metrics.update(whiten(cfg, model_dir))
    scores, table = evaluate_model(cfg, model_dir)
    if scores:
        print(table, flush=True)
        retry(lambda: mlflow.log_text(table, "evaluation.txt"), "logging the evaluation")
        retry(lambda: mlflow.log_metrics({f"eval_{k}": float(v) for k, v in scores.items()
                                          if isinstance(v, (int, float)) and not isinstance(v, bool)}),
              "logging the evaluation")
        metrics.update({f"eval_{k}": v for k, v in scores.items()})
    (run.out_root / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    history = retry(lambda: plots.run_history(run.tracking_uri, run_id), "reading the run's metrics")
    md = eval_report.write(run.out_root, model_dir, run.run_name, history, table)
    retry(lambda: [mlflow.log_artifact(str(p), "report") for p in (md, md.parent / "curves.png")
                   if p.is_file()], "logging the evaluation report")
    say(f"evaluation report: {md}")
    model_uri, decision = retry(lambda: registry.register(model_dir, cfg, metrics), "registering the model")
    retry(lambda: mlflow.set_tag("sslpipe.model_dir", str(model_dir)), "tagging the run")
    say(f"registry: {decision}")
    return model_uri, model_dir, metrics


def run_pretrain(cfg: Config, workdir: str | Path | None = None, resume: str | None = None) -> PretrainResult:
    """Train, export, evaluate, register: ``prepare`` → ``train`` → ``publish`` in one MLflow run
    (the resumed run's own when ``resume`` is given)."""
    import mlflow

    from pipelines import registry

    run = prepare(cfg, workdir, resume)
    cfg = run.cfg
    registry.setup_experiment(run.tracking_uri, cfg.mlflow.experiment, run.workdir)
    sysm = cfg.mlflow.system_metrics
    run_ctx = mlflow.start_run(run_id=run.prior["mlflow_run_id"], log_system_metrics=sysm) \
        if run.prior.get("mlflow_run_id") else mlflow.start_run(run_name=run.run_name, log_system_metrics=sysm)
    with run_ctx as mrun:
        if not run.prior:
            mlflow.log_params(registry.flatten(cfg.to_dict()))
            mlflow.log_dict(cfg.to_dict(), "config.json")
        run.out_root.mkdir(parents=True, exist_ok=True)
        (run.out_root / "run.json").write_text(json.dumps(
            {"run_name": run.run_name, "mlflow_run_id": mrun.info.run_id, "tracking_uri": run.tracking_uri,
             "tokenizer_dir": str(run.tokenizer_dir), "config": cfg.to_dict()}, indent=2))
        say(f"MLflow run {mrun.info.run_id} in experiment '{cfg.mlflow.experiment}' at {run.tracking_uri}")
        result, counts = train(run, mrun.info.run_id)
        model_uri, model_dir, metrics = publish(run, result, counts, mrun.info.run_id)
    say(f"registered model: {model_uri}")
    say(f"exported Hugging Face directory: {model_dir}")
    return PretrainResult(model_uri, model_dir, mrun.info.run_id, metrics)
