"""MLflow side: where runs go, params and artifacts, metrics from the training worker, and the
model in the Model Registry.

``MLFLOW_TRACKING_URI`` wins; without it runs go to a SQLite store in the working directory
(``./mlflow.db``, artifacts in ``./mlruns``): the registry needs a database-backed store.
"""
from __future__ import annotations

import math
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from ssl_core.errors import UserError

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


class TrackingError(UserError):
    """The MLflow tracking server or registry cannot be used as asked (unreachable, no such
    version)."""


# our own retry loops decide how long to wait for a tracking server that went away; MLflow's
# default HTTP retries (7, with backoff) would block each call for minutes
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")


class MetricLogger:
    """Metrics from the training worker (rank 0) into the MLflow run the driver opened, from a
    background thread: a training step never waits on the tracking store. When the store cannot
    be reached, the values are kept (up to ``keep``) and sent when it is back; that it is gone,
    and back, is said once each."""

    def __init__(self, uri: str, run_id: str, keep: int = 200_000):
        import queue
        import threading

        from ssl_core.log import say

        self.say, self.run_id, self.keep = say, run_id, keep
        self.q: "queue.Queue" = queue.Queue()
        self.client, self.failing, self.dropped = None, False, 0
        try:
            from mlflow.tracking import MlflowClient
            self.client = MlflowClient(tracking_uri=uri)
        except Exception as e:  # mlflow missing on a bare GPU box
            say(f"MLflow logging from the worker disabled: {e}")
            return
        self.thread = threading.Thread(target=self._run, name="sslpipe-mlflow", daemon=True)
        self.thread.start()

    def log(self, metrics: dict, step: int) -> None:
        if self.client is None:
            return
        from mlflow.entities import Metric
        ts = int(time.time() * 1000)
        self.q.put([Metric(k, float(v), ts, step) for k, v in metrics.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))])

    def _send(self, pending: list) -> None:
        while pending:
            self.client.log_batch(self.run_id, metrics=pending[:1000])
            del pending[:1000]

    def _run(self) -> None:
        import queue
        pending: list = []
        stop = False
        while not stop or pending:
            try:
                item = self.q.get(timeout=5.0 if pending else None)
                if item is None:
                    stop = True
                else:
                    pending.extend(item)
            except queue.Empty:
                pass
            try:
                self._send(pending)
                if self.failing:
                    self.say("MLflow tracking reachable again: the kept metrics were logged")
                    self.failing = False
            except Exception as e:
                if not self.failing:
                    self.say(f"MLflow tracking not reachable ({str(e).splitlines()[0][:160]}): training "
                             "goes on, metrics are kept and logged when it is back")
                    self.failing = True
                if len(pending) > self.keep:
                    self.dropped += len(pending) - self.keep
                    del pending[:len(pending) - self.keep]
                if stop:
                    break
                time.sleep(2.0)
        if pending:
            self.say(f"could not log {len(pending) + self.dropped} metric values to MLflow (tracking "
                     "not reachable at the end of training)")

    def flush(self, timeout: float = 120.0) -> None:
        """Send what is queued (waiting up to ``timeout`` seconds for the store)."""
        if self.client is None:
            return
        self.q.put(None)
        self.thread.join(timeout)


def retrying(fn, what: str, seconds: float = 300.0, every: float = 5.0):
    """``fn()``, tried again for up to ``seconds`` while the tracking store cannot be reached
    (said once); then a TrackingError naming ``what``."""
    from ssl_core.log import say

    t_end, warned = time.time() + seconds, False
    while True:
        try:
            return fn()
        except Exception as e:                         # MlflowException, requests/urllib errors
            if not _unreachable(e) or time.time() > t_end:
                if _unreachable(e):
                    raise TrackingError(f"{what}: the MLflow tracking store was not reachable for "
                                        f"{seconds:.0f}s ({_first_line(e)})") from None
                raise
            if not warned:
                say(f"{what}: MLflow tracking not reachable ({_first_line(e)}); retrying for up to {seconds:.0f}s")
                warned = True
            time.sleep(every)


def _first_line(e: Exception) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:200]


def _unreachable(e: Exception) -> bool:
    text = f"{type(e).__name__} {e}".lower()
    return any(k in text for k in ("connection", "max retries", "timed out", "timeout", "unreachable",
                                   "refused", "temporarily unavailable", "502", "503", "504"))


def tracking_uri(workdir: str | Path | None = None) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if uri:
        return uri
    wd = Path(workdir or os.getcwd()).resolve()
    return f"sqlite:///{wd / 'mlflow.db'}"


def check_tracking(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before any training, when an HTTP tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        if uri.startswith("sqlite:///"):
            db = Path(uri[len("sqlite:///"):])
            if not db.parent.exists():
                raise TrackingError(f"MLflow store '{uri}': directory {db.parent} does not exist")
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            if r.status != 200:
                raise TrackingError(f"MLflow tracking server {uri} answered {r.status} on /health")
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", e)
        raise TrackingError(
            f"MLflow tracking server {uri} is not reachable ({reason}): start it "
            f"(see infra/) or unset MLFLOW_TRACKING_URI to use the local store ./mlflow.db") from None


def setup_experiment(uri: str, name: str, workdir: str | Path | None = None) -> str:
    import mlflow

    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        loc = None
        if uri.startswith("sqlite:"):
            loc = (Path(workdir or os.getcwd()).resolve() / "mlruns").as_uri()
        exp_id = mlflow.create_experiment(name, artifact_location=loc)
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


SERVING_CODE = Path(__file__).with_name("serving.py")
EXAMPLE = "The [MASK] of the function is returned."
CANDIDATE, CHAMPION = "candidate", "champion"


def log_model(model_dir: str | Path, registered_name: str) -> tuple[str, str]:
    """Log the exported directory as the pyfunc model of ``serving.py`` (fill-mask and sentence
    embedding; safetensors weights as an artifact, the model's code as a file: nothing pickled) in
    the active run, with a signature, an input example and pinned requirements, and register it.
    Returns (version, the logged model URI)."""
    import mlflow
    import pandas as pd
    import tokenizers
    import torch
    import transformers
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    example = [EXAMPLE]                         # texts: a list of strings (or a one-column frame)
    signature = ModelSignature(
        inputs=Schema([ColSpec("string")]),
        params=ParamSchema([ParamSpec("task", "string", "fill-mask"), ParamSpec("top_k", "long", 5)]))
    reqs = [f"mlflow=={mlflow.__version__}", f"transformers=={transformers.__version__}",
            f"tokenizers=={tokenizers.__version__}", f"torch=={torch.__version__.split('+')[0]}",
            f"pandas=={pd.__version__}", f"safetensors=={_version('safetensors')}"]
    info = mlflow.pyfunc.log_model(
        name="model", python_model=str(SERVING_CODE), artifacts={"model": str(model_dir)},
        signature=signature, input_example=example, pip_requirements=reqs,
        registered_model_name=registered_name)
    return str(info.registered_model_version), info.model_uri


def _version(dist: str) -> str:
    from importlib.metadata import version
    return version(dist)


def champion_metric(cfg) -> str:
    m = cfg.mlflow.champion_metric
    return "stsb_spearman" if m == "auto" else m


def eval_spec(cfg, metric: str) -> str:
    """What a score was measured on: versions are compared only when this is the same."""
    from ssl_core.masking import EVAL_RATIO, EVAL_SEED
    if metric == "stsb_spearman":
        return "STS-B dev (shipped with sslpipe), cosine of the pooled embedding"
    if metric == "sick_spearman":
        return "SICK dev, cosine of the pooled embedding"
    d = cfg.data
    return (f"held-out split of {d.corpus} (val_fraction {d.val_fraction}, max_documents "
            f"{d.max_documents}), {metric} at a {EVAL_RATIO:.0%} mask seed {EVAL_SEED}")


def register(model_dir: str | Path, cfg, scores: dict) -> tuple[str, str]:
    """Log and register a trained model: the new version gets the alias ``candidate``;
    ``champion`` moves to it only when its score (``mlflow.champion_metric``, on the same
    evaluation) beats the current champion's, or when there is none. The decision, with both
    numbers, is written on the version (tags and description). Returns (models:/NAME/VERSION, the
    decision)."""
    import mlflow

    name = cfg.mlflow.registered_model
    version, _ = log_model(model_dir, name)
    client = mlflow.MlflowClient()
    metric = champion_metric(cfg)
    score = scores.get(metric, scores.get(f"eval_{metric}"))
    spec = eval_spec(cfg, metric)
    tags = {"sslpipe.metric": metric, "sslpipe.eval_spec": spec}
    if score is not None:
        tags["sslpipe.score"] = f"{float(score):.6f}"
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, v)
    client.set_registered_model_alias(name, CANDIDATE, version)
    decision = _decide(client, name, version, metric, spec, score)
    client.set_model_version_tag(name, version, "sslpipe.champion_decision", decision)
    client.update_model_version(name, version, description=decision)
    return f"models:/{name}/{version}", decision


def _decide(client, name: str, version: str, metric: str, spec: str, score) -> str:
    from mlflow.exceptions import MlflowException
    try:
        champ = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        champ = None
    if champ is None:
        client.set_registered_model_alias(name, CHAMPION, version)
        return f"champion: the first version of {name} ({metric} {_fmt(score)})"
    old = champ.tags.get("sslpipe.score")
    if score is None:
        return f"candidate only: no {metric} for this version; champion stays version {champ.version}"
    if champ.tags.get("sslpipe.metric") != metric or champ.tags.get("sslpipe.eval_spec") != spec or old is None:
        return (f"candidate only: champion version {champ.version} was scored on another evaluation "
                f"({champ.tags.get('sslpipe.metric')}: {champ.tags.get('sslpipe.eval_spec')}); "
                f"promote by hand with: sslpipe promote {name} {version}")
    if float(score) > float(old):
        client.set_registered_model_alias(name, CHAMPION, version)
        return f"champion: {metric} {_fmt(score)} > {_fmt(old)} of version {champ.version}"
    return f"candidate only: {metric} {_fmt(score)} <= {_fmt(old)} of champion version {champ.version}"


def _fmt(v) -> str:
    return "n/a" if v is None else f"{float(v):.4f}"


def promote(name: str, version: str) -> str:
    """Move ``champion`` to ``name`` ``version`` by hand (the decision is written on the version)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        client.get_model_version(name, version)
    except MlflowException as e:
        msg = str(getattr(e, "message", e)).splitlines()[0]
        raise TrackingError(f"no version {version} of registered model '{name}' at "
                            f"{mlflow.get_tracking_uri()}: {msg}") from None
    client.set_registered_model_alias(name, CHAMPION, version)
    decision = f"champion: promoted by hand (sslpipe promote {name} {version})"
    client.set_model_version_tag(name, version, "sslpipe.champion_decision", decision)
    client.update_model_version(name, version, description=decision)
    return decision
