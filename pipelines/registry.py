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

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


class TrackingError(RuntimeError):
    """The MLflow tracking server cannot be used (unreachable, unhealthy)."""


class MetricLogger:
    """Metrics from the training worker (rank 0) into the MLflow run the driver opened, logged
    asynchronously: a training step never waits on the tracking store."""

    def __init__(self, uri: str, run_id: str):
        from ssl_core.log import say

        self.say, self.run_id, self.pending = say, run_id, []
        self.client = None
        try:
            from mlflow.tracking import MlflowClient
            self.client = MlflowClient(tracking_uri=uri)
        except Exception as e:  # mlflow missing on a bare GPU box
            say(f"MLflow logging from the worker disabled: {e}")

    def log(self, metrics: dict, step: int) -> None:
        if self.client is None:
            return
        from mlflow.entities import Metric
        ts = int(time.time() * 1000)
        batch = [Metric(k, float(v), ts, step) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))]
        try:
            self.pending.append(self.client.log_batch(self.run_id, metrics=batch, synchronous=False))
        except Exception as e:
            self.say(f"could not log metrics to MLflow at step {step}: {e}")

    def flush(self) -> None:
        for op in self.pending:
            try:
                op.wait()
            except Exception as e:
                self.say(f"could not log metrics to MLflow: {e}")
        self.pending.clear()


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


def log_and_register(model_dir: str | Path, registered_name: str,
                     example: str = "The [MASK] of the function is returned.") -> tuple[str, str]:
    """Log the HF directory as an MLflow ``transformers`` fill-mask model in the active run and
    register it. Returns (``models:/NAME/VERSION``, the logged model URI)."""
    import mlflow
    import tokenizers
    import torch
    import transformers

    pipe = transformers.pipeline("fill-mask", model=str(model_dir), tokenizer=str(model_dir),
                                 device="cpu")
    reqs = [f"transformers=={transformers.__version__}", f"tokenizers=={tokenizers.__version__}",
            f"torch=={torch.__version__.split('+')[0]}"]
    info = mlflow.transformers.log_model(
        transformers_model=pipe, name="model", pip_requirements=reqs,
        input_example=[example], registered_model_name=registered_name)
    log_side_files(model_dir, info.model_id)
    return f"models:/{registered_name}/{info.registered_model_version}", info.model_uri


def log_side_files(model_dir: str | Path, model_id: str) -> None:
    """Add what the transformers flavour does not save (sentence-transformers pooling files, the
    training config, extra heads) to the logged model under ``sslpipe/``: ``sslpipe evaluate
    models:/...`` puts them back beside the weights."""
    import shutil
    import tempfile

    import mlflow
    from ssl_core.export import SIDE_FILES

    present = [rel for rel in SIDE_FILES if (Path(model_dir) / rel).is_file()]
    if not present:
        return
    with tempfile.TemporaryDirectory() as d:
        for rel in present:
            (Path(d) / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(model_dir) / rel, Path(d) / rel)
        mlflow.MlflowClient().log_model_artifacts(model_id, d, "sslpipe")
