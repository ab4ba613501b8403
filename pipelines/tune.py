"""``sslpipe tune``: Ray Tune searches the mask ratio and the temperature (and, if asked, the end of
the mask-ratio schedule and the learning rate), with Optuna's TPE sampler and ASHA early stopping.

    sslpipe tune [--config tune] [--set tune.num_samples=16 ...]
    sslpipe tune --resume [SEARCH]       # continue an interrupted search; finished trials stay done

Trials are compared on a metric that none of the searched knobs changes (``tune.metric``): MLM
accuracy at the fixed 15% evaluation mask and seed on the held-out split, the STS-B dev Spearman
of the pooled embedding, NSP accuracy, or a weighted sum; each trial evaluates every
``tune.eval_every`` steps (``ssl_core.training.evals``), which is what ASHA stops trials on.

What the search shares, made once before the first trial: the tokenizer and the corpus read and
tokenized by Ray Data (materialized), so every trial trains on the same documents with the same
vocabulary and their MLM accuracies compare. A trial is a function that builds and fits a Ray Train
``TorchTrainer`` (Train V2) with Ray Train's Tune callback; it logs into its own nested MLflow run
(tag ``mlflow.parentRunId``), found again by name when the trial restarts or the search resumes.

A search lives in ``output_dir/SEARCH``: ``search.json`` (what ``--resume`` reads), the tokenizer,
Tune's experiment state and the trials' checkpoints, ``trials/<trial>/model`` (each finished
trial's export), ``best.yaml`` (a config ``sslpipe pretrain --config`` accepts), the table and the
plots. The best finished trial's model is registered (alias ``candidate``; ``champion`` only if it
beats the champion on the same evaluation).
"""
from __future__ import annotations

import datetime as dt
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ssl_core.config import Config, parse_range
from ssl_core.log import say
from ssl_core.tokenizer import TokenizerFiles
from pipelines.prepare import InputError

# tune.<key> -> (the config key it searches, how)
SPACE = {"mask_ratio": ("masking.ratio", "uniform"), "ratio_end": ("masking.ratio_end", "uniform"),
         "temperature": ("contrastive.temperature", "loguniform"), "lr": ("train.lr", "loguniform")}


def search_space(cfg: Config) -> dict[str, tuple[str, float, float]]:
    """The searched config keys: key -> (distribution, low, high). InputError when a searched
    knob has nothing to act on or the metric is not produced by any enabled objective."""
    from ssl_core.training.evals import score_weights

    o, out = cfg.objectives, {}
    for name, (key, kind) in SPACE.items():
        r = parse_range(getattr(cfg.tune, name), f"tune.{name}")
        if r is None or (name == "temperature" and not o.contrastive):
            continue
        if name in ("mask_ratio", "ratio_end") and not o.mlm:
            continue
        out[key] = (kind, *r)
    if not out:
        raise InputError("nothing to search: set tune.mask_ratio (with objectives.mlm), tune.temperature "
                         "(with objectives.contrastive), tune.ratio_end or tune.lr to 'low,high'")
    need = {"mlm_accuracy": o.mlm, "nsp_accuracy": o.nsp, "stsb_spearman": True}
    for m in score_weights(cfg):
        if not need[m]:
            raise InputError(f"tune.metric: {m} needs objectives.{m.split('_')[0]}=true (no enabled "
                             "objective produces it)")
    return out


def trial_config(base: Config, params: dict) -> Config:
    """The base config with a trial's sampled values (dotted keys) and an evaluation every
    ``tune.eval_every`` steps (the reports ASHA reads)."""
    raw = base.to_dict()
    for key, value in params.items():
        section, name = key.split(".")
        raw[section][name] = float(value)
    if "masking.ratio_end" in params:
        raw["masking"]["schedule"] = "linear"
    raw["eval"]["every"] = base.tune.eval_every
    raw["train"]["checkpoint_every"] = 0        # every evaluation report carries a checkpoint
    return Config.from_dict(raw)


@dataclass
class SearchSetup:
    """What every trial needs; travels to the trials through ``tune.with_parameters``."""
    base: dict
    tokenizer_dir: TokenizerFiles        # by value: a trial may run on another node
    parts: list                      # tokenized training documents, one part per Train worker
    val: object                      # tokenized held-out documents
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    search_dir: str
    params: list = field(default_factory=list)
    one_at_a_time: bool = False      # trials run one after another (2-core default)


def _child_run(setup: SearchSetup, trial: str, cfg: Config, params: dict, name: str = "") -> str:
    """This trial's nested MLflow run (``trial``: its Tune trial id): the one made before (a
    restart or a resumed search logs into it again), else a new one with the trial's params."""
    import mlflow

    from pipelines import registry

    client = mlflow.MlflowClient(setup.tracking_uri)
    found = client.search_runs([setup.experiment_id], filter_string=(
        f"tags.`mlflow.parentRunId` = '{setup.parent_run_id}' and tags.`sslpipe.trial` = '{trial}'"))
    if found:
        return found[0].info.run_id
    run = client.create_run(setup.experiment_id, run_name=name or trial, tags={
        "mlflow.parentRunId": setup.parent_run_id, "sslpipe.trial": trial})
    params_ = [mlflow.entities.Param(k, str(v)[:6000]) for k, v in registry.flatten(cfg.to_dict()).items()]
    for i in range(0, len(params_), 100):                       # log_batch takes 100 params at most
        client.log_batch(run.info.run_id, params=params_[i:i + 100])
    for k, v in params.items():
        client.set_tag(run.info.run_id, f"sslpipe.searched.{k}", f"{float(v):.6g}")
    return run.info.run_id


def run_trial(config: dict, setup: SearchSetup) -> None:
    """One trial (a Tune function trainable): a TorchTrainer on the shared data with the trial's
    config; evaluations reach Tune through Ray Train's Tune callback."""
    import mlflow
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipelines.train import fit

    ctx = tune.get_context()
    trial = ctx.get_trial_id()
    base = Config.from_dict(setup.base)
    if setup.one_at_a_time:
        _remove_stale_train_groups(base)
    params = {k: config[k] for k in setup.params}
    cfg = trial_config(base, params)
    run_id = _child_run(setup, trial, cfg, params, ctx.get_trial_name())
    mlflow.set_tracking_uri(setup.tracking_uri)
    with mlflow.start_run(run_id=run_id, log_system_metrics=cfg.mlflow.system_metrics):
        storage = cfg.train.storage_path.strip().rstrip("/") or str(Path(setup.search_dir) / "train")
        result = fit(cfg, setup.parts, setup.val, setup.tokenizer_dir, storage, f"trial-{trial}",
                     setup.tracking_uri, run_id,
                     callbacks=[TuneReportCallback()])
        if result.error is not None:
            raise result.error
        out = Path(setup.search_dir) / "trials" / trial / "model"
        if out.exists():
            shutil.rmtree(out)
        with result.checkpoint.as_directory() as d:
            shutil.copytree(Path(d) / "model", out)
        mlflow.set_tag("sslpipe.model_dir", str(out))
        _log_curves(run_id, setup.tracking_uri, trial)


def _remove_stale_train_groups(cfg: Config) -> list[str]:
    """Trials one at a time: remove this job's Ray Train worker groups (placement groups of
    ``num_workers`` bundles of ``cpus_per_worker`` CPUs; Tune's own hold 0.01 CPU) before a trial
    starts its own.
    Ray Train V2 removes a stopped trial's worker group from a detached cleaner that polls the
    state API; on a loaded 2-core machine that was seen to lag for minutes, and the next trial's
    workers waited for the CPUs it held. A placement group id ends with its job's id."""
    import ray
    from ray.util import get_current_placement_group
    from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

    job = ray.get_runtime_context().get_job_id()
    own = get_current_placement_group()
    shape = [cfg.train.cpus_per_worker] * cfg.train.num_workers
    removed = []
    for pg_id, info in placement_group_table().items():
        cpus = [b.get("CPU", 0) for b in info["bundles"].values()]
        if info["state"] == "CREATED" and pg_id.endswith(job) and cpus == shape \
                and (own is None or pg_id != own.id.hex()):
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_id))))
            removed.append(pg_id)
    if removed:
        say(f"removed {len(removed)} placement group(s) left by an earlier trial")
    return removed


def _log_curves(run_id: str, uri: str, title: str) -> None:
    """The run's training curves and evaluations as ``curves.png`` (an artifact of the run)."""
    import tempfile

    import mlflow

    from pipelines.plots import run_curves, run_history

    with tempfile.TemporaryDirectory() as d:
        png = run_curves(run_history(uri, run_id), Path(d) / "curves.png", title)
        if png is not None:
            mlflow.MlflowClient(uri).log_artifact(run_id, str(png))


@dataclass
class TuneResult:
    rows: list[dict]               # one per trial, the table
    best: dict | None
    best_yaml: Path | None
    model_uri: str | None
    search_dir: Path
    table: str


def _setup_search(cfg: Config, workdir: Path, resume: str | None):
    """(config, search name, search dir, prior search.json)."""
    from pipelines.pretrain import find_run

    if resume:
        d = find_run(cfg, workdir, resume, marker="search.json")
        prior = json.loads((d / "search.json").read_text())
        say(f"resuming search '{prior['name']}' from {d}")
        return Config.from_dict(prior["config"]), prior["name"], d, prior
    name = cfg.mlflow.run_name or dt.datetime.now().strftime("tune-%Y%m%d-%H%M%S")
    root = Path(cfg.output_dir)
    return cfg, name, (root if root.is_absolute() else workdir / root) / name, {}


def concurrency(cfg: Config, trial_cpus: float) -> int:
    """``tune.max_concurrent_trials``, or (0) as many trials as the CPUs fit: the machine's cores
    for the local Ray the CLI starts, the cluster's CPUs under RAY_ADDRESS."""
    import ray

    if cfg.tune.max_concurrent_trials:
        return cfg.tune.max_concurrent_trials
    cpus = ray.cluster_resources().get("CPU", 1) if os.environ.get("RAY_ADDRESS") else (os.cpu_count() or 1)
    return max(1, int(cpus // max(trial_cpus, 1e-9)))


def run_tune(cfg: Config, workdir: str | Path | None = None, resume: str | None = None) -> TuneResult:
    """The search: shared tokenizer and data, trials, the table, plots, best config, registration."""
    import mlflow

    from pipelines import registry
    from pipelines.data import carried, report, tokenized_corpus
    from pipelines.prepare import check_enough_rows, checked_tracking, corpus_shards, ensure_ray, tokenizer_for
    from ssl_core.encoder import check_model_config

    workdir, uri = checked_tracking(workdir)
    cfg, name, search_dir, prior = _setup_search(cfg, workdir, resume)
    space = search_space(cfg)
    shards = corpus_shards(cfg)
    check_model_config(cfg.model, cfg.data.max_seq_len)
    tok_dir = Path(prior["tokenizer_dir"]) if prior.get("tokenizer_dir") else \
        tokenizer_for(cfg, shards, search_dir / "tokenizer")
    ensure_ray(cfg)
    corpus = tokenized_corpus(cfg, shards, str(tok_dir))
    print(report(corpus.counts, cfg.data.max_seq_len), flush=True)
    check_enough_rows(cfg, corpus.counts)
    exp_id = registry.setup_experiment(uri, cfg.mlflow.experiment, workdir)
    parent = mlflow.start_run(run_id=prior["parent_run_id"]) if prior.get("parent_run_id") else \
        mlflow.start_run(run_name=name, log_system_metrics=cfg.mlflow.system_metrics)
    with parent as run:
        if not prior:
            mlflow.log_params(registry.flatten(cfg.to_dict()))
            mlflow.set_tag("sslpipe.search", name)
            search_dir.mkdir(parents=True, exist_ok=True)
            (search_dir / "search.json").write_text(json.dumps(
                {"name": name, "parent_run_id": run.info.run_id, "tracking_uri": uri,
                 "tokenizer_dir": str(tok_dir), "config": cfg.to_dict()}, indent=2))
        setup = SearchSetup(cfg.to_dict(), carried(tok_dir), corpus.parts(cfg.train.num_workers), corpus.val,
                            uri, exp_id, run.info.run_id, str(search_dir), list(space),
                            concurrency(cfg, cfg.train.num_workers * cfg.train.cpus_per_worker) == 1)
        grid = _fit_search(cfg, space, setup, search_dir, resume=bool(prior))
        return _summarize(cfg, grid, space, setup, search_dir, run.info.run_id)


def _asha(path: Path, **kwargs):
    """ASHA whose rungs (every trial's score at each milestone) survive ``--resume``.

    Ray Tune restores the scheduler as it was pickled when the search started, with empty rungs:
    a resumed search compared the remaining trials only with each other, so a trial the
    uninterrupted search would stop (worse than the finished trials at a milestone) ran to the
    end. This one writes its rungs to ``path`` after each result and reads them back on its first
    call after a restore."""
    from ray.tune.schedulers import ASHAScheduler

    class ResumableASHA(ASHAScheduler):
        def __init__(self, path: str, **kw):
            super().__init__(**kw)
            self._rungs_path, self._loaded = path, False

        def _load(self) -> None:
            if self._loaded:
                return
            self._loaded = True
            try:
                saved = json.loads(Path(self._rungs_path).read_text())
            except (OSError, ValueError):
                return
            for bracket, rungs in zip(self._brackets, saved["brackets"]):
                for (milestone, recorded), (m, rec) in zip(bracket._rungs, rungs):
                    if milestone == m:
                        recorded.update(rec)
            self._num_stopped = saved.get("stopped", 0)
            say(f"ASHA: {sum(len(r[1]) for b in saved['brackets'] for r in b)} milestone scores of "
                "earlier trials restored")

        def _save(self) -> None:
            tmp = Path(self._rungs_path + ".tmp")
            tmp.write_text(json.dumps({"stopped": self._num_stopped, "brackets": [
                [[m, dict(rec)] for m, rec in b._rungs] for b in self._brackets]}))
            os.replace(tmp, self._rungs_path)

        def on_trial_add(self, tune_controller, trial):
            self._load()
            super().on_trial_add(tune_controller, trial)

        def on_trial_result(self, tune_controller, trial, result):
            self._load()
            action = super().on_trial_result(tune_controller, trial, result)
            self._save()
            return action

        def on_trial_complete(self, tune_controller, trial, result):
            self._load()
            super().on_trial_complete(tune_controller, trial, result)
            self._save()

    return ResumableASHA(str(path), **kwargs)


def _fit_search(cfg: Config, space: dict, setup: SearchSetup, search_dir: Path, resume: bool):
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    t = cfg.tune
    trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup), {"CPU": 0.01})
    tune_path = search_dir / "tune"
    if resume and tune.Tuner.can_restore(str(tune_path / "search")):
        say("restoring the Tune experiment: finished trials keep their results")
        tuner = tune.Tuner.restore(str(tune_path / "search"), trainable=trainable,
                                   resume_unfinished=True, restart_errored=True)
        return tuner.fit()
    (search_dir / "asha_rungs.json").unlink(missing_ok=True)      # a new search: no earlier rungs
    dist = {k: (tune.uniform(lo, hi) if kind == "uniform" else tune.loguniform(lo, hi))
            for k, (kind, lo, hi) in space.items()}
    max_t = _evaluations(cfg) + 1            # never reached: a trial ends by itself, after its export
    trial_cpus = cfg.train.num_workers * cfg.train.cpus_per_worker
    from optuna.samplers import TPESampler
    tuner = tune.Tuner(
        trainable, param_space=dist,
        tune_config=tune.TuneConfig(
            metric="score", mode="max", num_samples=t.num_samples,
            max_concurrent_trials=concurrency(cfg, trial_cpus),
            search_alg=OptunaSearch(sampler=TPESampler(seed=t.seed)),
            scheduler=_asha(search_dir / "asha_rungs.json", time_attr="training_iteration", max_t=max_t,
                            grace_period=min(t.grace_period, max_t - 1), reduction_factor=t.reduction_factor),
            time_budget_s=t.time_budget_minutes * 60 or None),
        run_config=tune.RunConfig(name="search", storage_path=str(tune_path), verbose=0))
    return tuner.fit()


def _status(result, cfg: Config) -> str:
    if result.error is not None:
        return "failed"
    step = (result.metrics or {}).get("step", 0)
    return "done" if step >= cfg.train.max_steps or (result.metrics or {}).get("stop_reason") else "stopped early"


def _summarize(cfg: Config, grid, space: dict, setup: SearchSetup, search_dir: Path,
               parent_run_id: str) -> TuneResult:
    import mlflow

    from pipelines import plots, registry
    from pipelines.pretrain import whiten

    rows = []
    for res in grid:
        m = res.metrics or {}
        df = res.metrics_dataframe
        trial = m.get("trial_id") or (str(df["trial_id"].iloc[-1]) if df is not None and "trial_id" in df else "?")
        hist = [] if df is None or "score" not in df else \
            [(int(i), float(x)) for i, x in df[["training_iteration", "score"]].dropna().itertuples(index=False)]
        row = {"trial": trial, "name": trial, "status": _status(res, cfg),
               "score": m.get("score"), "step": m.get("step"), "evaluations": m.get("training_iteration"),
               "history": hist, **{k: res.config.get(k) for k in space}}
        row.update({k: m[k] for k in m if k.startswith("eval_") and isinstance(m[k], float)})
        rows.append(row)
    _mark_children(setup, rows)
    done = [r for r in rows if r["status"] == "done" and r["score"] is not None
            and trial_model(search_dir, r["trial"]) is not None]
    best = max(done, key=lambda r: r["score"]) if done else None
    if best is not None:
        best["best"] = True
    table = format_table(rows, space)
    print(table, flush=True)
    (search_dir / "trials.txt").write_text(table + "\n")
    (search_dir / "trials.json").write_text(json.dumps(rows, indent=2, default=str))
    mlflow.log_text(table, "trials.txt")
    mlflow.log_text(json.dumps(rows, indent=2, default=str), "trials.json")
    metric = "score (" + " + ".join(k if w == 1 else f"{w:g}×{k}" for k, w in _weights(cfg).items()) + ")"
    for key in space:
        png = plots.search_scatter(rows, key, search_dir / f"score_vs_{key.replace('.', '_')}.png",
                                   metric, log=space[key][0] == "loguniform")
        if png:
            mlflow.log_artifact(str(png), "plots")
    rungs = _rungs(cfg)
    png = plots.asha_rungs(rows, search_dir / "asha_rungs.png", metric, rungs)
    if png:
        mlflow.log_artifact(str(png), "plots")
    best_yaml = model_uri = None
    if best is not None:
        best_cfg = trial_config(Config.from_dict(setup.base), {k: best[k] for k in space})
        best_yaml = search_dir / "best.yaml"
        import yaml
        raw = best_cfg.to_dict()
        raw["eval"]["every"] = 0
        best_yaml.write_text(f"# best trial {best['name']} of search {search_dir.name}: score "
                             f"{best['score']:.4f}\n" + yaml.safe_dump(raw, sort_keys=False))
        mlflow.log_artifact(str(best_yaml))
        mlflow.log_metric("best_score", best["score"])
        model_dir = trial_model(search_dir, best["name"])
        whiten(best_cfg, model_dir)           # trials were compared on the raw pooled embedding
        child = _child_run(setup, best["name"], best_cfg, {k: best[k] for k in space})
        with mlflow.start_run(run_id=child, nested=True):
            model_uri, decision = registry.retrying(
                lambda: registry.register(model_dir, best_cfg, best), "registering the best trial's model")
        mlflow.set_tag("sslpipe.best_trial", best["name"])
        mlflow.set_tag("sslpipe.registered_model", model_uri)
        say(f"registry: {decision}")
        say(f"best config: {best_yaml}")
        say(f"registered model: {model_uri}")
    else:
        say("no trial finished: nothing registered (see the table)")
    return TuneResult(rows, best, best_yaml, model_uri, search_dir, table)


def _mark_children(setup: SearchSetup, rows: list[dict]) -> None:
    """Each trial's run says how it ended: FINISHED (done), KILLED (stopped early: ASHA ended it,
    the run was left open), FAILED."""
    import mlflow

    client = mlflow.MlflowClient(setup.tracking_uri)
    runs = client.search_runs([setup.experiment_id],
                              filter_string=f"tags.`mlflow.parentRunId` = '{setup.parent_run_id}'")
    by_trial = {r.data.tags.get("sslpipe.trial"): r for r in runs}
    for row in rows:
        run = by_trial.get(row["trial"])
        if run is None:
            continue
        row["run_id"] = run.info.run_id
        client.set_tag(run.info.run_id, "sslpipe.trial_status", row["status"])
        if row["status"] != "done" and run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, "FAILED" if row["status"] == "failed" else "KILLED")


def _weights(cfg: Config) -> dict[str, float]:
    from ssl_core.training.evals import score_weights
    return score_weights(cfg)


def _evaluations(cfg: Config) -> int:
    """Reports a finished trial makes: one per evaluation, the last one at the end of training."""
    return max(1, math.ceil(cfg.train.max_steps / cfg.tune.eval_every))


def _rungs(cfg: Config) -> list[int]:
    t, n = cfg.tune, _evaluations(cfg)
    out, r = [], min(t.grace_period, n)
    while r < n:
        out.append(r)
        r *= t.reduction_factor
    return out


def trial_model(search_dir: Path, trial: str) -> Path | None:
    """A finished trial's exported model: copied by the trial, else in its final Train checkpoint."""
    copied = search_dir / "trials" / trial / "model"
    if (copied / "config.json").is_file():
        return copied
    ckpts = sorted((search_dir / "train" / f"trial-{trial}").glob("checkpoint_*/model/config.json"))
    return ckpts[-1].parent if ckpts else None


def format_table(rows: list[dict], space: dict) -> str:
    cols = list(space)
    evals = sorted({k for r in rows for k in r if k.startswith("eval_")
                    and not k.endswith(("_tokens", "_pairs", "_loss", "_initial"))})
    head = ["trial", *cols, "score", *[e[len("eval_"):] for e in evals], "step", "status"]
    lines = ["  ".join(f"{h:>14s}" for h in head)]
    for r in sorted(rows, key=lambda r: -(r["score"] if r["score"] is not None else -1e9)):
        vals = [r["name"][-14:], *[_num(r.get(c)) for c in cols], _num(r.get("score")),
                *[_num(r.get(e)) for e in evals], str(r.get("step") or "-"),
                r["status"] + (" (best)" if r.get("best") else "")]
        lines.append("  ".join(f"{v:>14s}" for v in vals))
    return "\n".join(lines)


def _num(v) -> str:
    return "-" if v is None else f"{float(v):.4g}"
