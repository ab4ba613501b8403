"""The MLflow tracking server goes away in the middle of training and comes back: training goes
on, the worker says once that it keeps its metrics and once that they were logged, no metric value
is lost, and the model is registered at the end (real server process, stopped and restarted by its
PID, the same SQLite store)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import free_port, start_mlflow_server, stop_server, stop_session

pytestmark = pytest.mark.integration


def _wait_text(path: Path, needle: str, proc, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if needle in path.read_text():
            return
        assert proc.poll() is None, path.read_text()[-4000:]
        time.sleep(0.3)
    raise AssertionError(f"no '{needle}' after {timeout}s:\n{path.read_text()[-3000:]}")


def test_training_survives_the_tracking_server_going_away(tmp_path, shakespeare):
    from mlflow.tracking import MlflowClient

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    srv = start_mlflow_server(tmp_path / "server", port)
    steps, every = 400, 5
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, RAY_ADDRESS="", RAY_TMPDIR=f"/tmp/rayo{os.getpid()}")
    exe = Path(sys.executable).parent / "sslpipe"
    log = tmp_path / "job.log"
    with open(log, "w") as f:
        job = subprocess.Popen([str(exe), "pretrain", "--config", "tiny", "--set", f"data.corpus={shakespeare}",
                                "--set", f"train.max_steps={steps}", "--set", f"train.log_every={every}",
                                "--set", "eval.tasks=stsb", "--set", "mlflow.registered_model=outage-tiny",
                                "--set", "mlflow.run_name=outage"],
                               cwd=tmp_path, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_text(log, f"step {4 * every}/{steps}", job, 600)
        stop_server(srv)                                          # gone mid-run
        _wait_text(log, "MLflow tracking not reachable", job, 120)
        srv = start_mlflow_server(tmp_path / "server", port)      # back, same store
        assert job.wait(timeout=900) == 0, log.read_text()[-5000:]
    finally:
        stop_session(job.pid)
    text = log.read_text()
    assert text.count("MLflow tracking not reachable") == 1       # said once, not per step
    assert "reachable again" in text
    try:
        client = MlflowClient(uri)
        run = client.search_runs([client.get_experiment_by_name("sslpipe-tiny").experiment_id],
                                 filter_string="attributes.run_name = 'outage'")[0]
        assert run.info.status == "FINISHED"
        logged = sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss"))
        assert logged == list(range(every, steps + 1, every))     # nothing lost while it was away
        assert client.get_model_version_by_alias("outage-tiny", "champion").run_id == run.info.run_id
    finally:
        stop_server(srv)
