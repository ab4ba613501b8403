"""`ray job submit` on a real two-node Ray cluster on this machine, as a user runs the pipeline.

`ray start --head` and a second `ray start --address=...` (each in its own session, stopped by
its PIDs), token authentication on, a real `mlflow server`, checkpoints on the moto S3 server
(`train.storage_path=s3://...`). Train workers ask for the custom resource `sslpipe_train` and
spread over both nodes; Ray Data work asks for `sslpipe_data`, which only the head offers (as the
CPU pool in cluster/*.yaml). The node-loss test kills the second node during a job.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import shutil
from pathlib import Path

import pytest

from conftest import ROOT, free_port, session_processes, stop_session

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

BIN = Path(sys.executable).parent
TOKEN = secrets.token_hex(16)              # Ray's auth token: must never reach a log or the store
SECRET = "sslpipe-never-log-" + secrets.token_hex(8)
BUCKET = "sslpipe-ckpt"


def _ray(env: dict, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *args], env=env, capture_output=True, text=True, timeout=timeout)


def _poll(pred, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


class Node:
    """One `ray start --block` in its own session: its PIDs are exactly that session's."""

    def __init__(self, tmp: Path, env: dict, args: list[str], name: str):
        self.log = tmp / f"{name}.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([str(BIN / "ray"), "start", "--block", "--disable-usage-stats",
                                          "--object-store-memory", str(200 << 20),
                                          "--dashboard-agent-listen-port", str(free_port()),
                                          "--metrics-export-port", str(free_port()), *args],
                                         env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> list[int]:
        """SIGKILL every process of the node at once (a machine lost), by PID."""
        pids = session_processes(self.proc.pid)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=30)
        return pids

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        stop_session(self.proc.pid, grace=20)


class Cluster:
    def __init__(self, tmp: Path, env: dict):
        self.tmp, self.env = tmp, env
        self.port, self.dash = free_port(), free_port()
        self.address = f"http://127.0.0.1:{self.dash}"
        self.head = Node(tmp, env, ["--head", "--node-ip-address=127.0.0.1", f"--port={self.port}",
                                    "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                                    f"--dashboard-port={self.dash}", "--num-cpus=3",
                                    '--resources={"sslpipe_train": 1, "sslpipe_data": 100}',
                                    f"--temp-dir={tmp / 'head'}"], "head")
        self.workers: dict[str, Node] = {}        # by a custom resource only that node offers

    def add_worker(self) -> str:
        """One more node: 2 CPUs and one Train worker's slot (as a GPU node of cluster/*.yaml)."""
        name = f"node_w{len(self.workers) + 1}"
        self.workers[name] = Node(self.tmp, self.env, [
            f"--address=127.0.0.1:{self.port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
            f"--resources={json.dumps({'sslpipe_train': 1, name: 1})}",
            f"--temp-dir={self.tmp / name}"], name)
        n = len(self.workers) + 1
        _poll(lambda: len(self.alive_nodes()) == n or self.workers[name].proc.poll() is not None, 120, name)
        assert self.workers[name].proc.poll() is None, self.workers[name].log.read_text()[-3000:]
        return name

    def alive_nodes(self) -> list[dict]:
        r = _ray(self.env, "list", "nodes", "--address", self.address, "--format", "json", "--detail",
                 "-f", "state=ALIVE")
        return json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip().startswith("[") else []

    def job(self, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
        return _ray(self.env, "job", *args, "--address", self.address, timeout=timeout)

    def stop(self) -> None:
        for n in (*self.workers.values(), self.head):
            n.stop()


@pytest.fixture(scope="module")
def cluster(mlflow_server, s3_server):
    import boto3

    boto3.client("s3", endpoint_url=s3_server["AWS_ENDPOINT_URL"], region_name="us-east-1",
                 aws_access_key_id=s3_server["AWS_ACCESS_KEY_ID"],
                 aws_secret_access_key=s3_server["AWS_SECRET_ACCESS_KEY"]).create_bucket(Bucket=BUCKET)
    tmp = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))       # short: Ray's socket paths are limited
    # the cluster's own environment holds the secrets (as instance roles / k8s Secrets would)
    env = dict(os.environ, **s3_server, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=TOKEN, RAY_ADDRESS="",
               RAY_USAGE_STATS_ENABLED="0", MLFLOW_TRACKING_URI=mlflow_server,
               MLFLOW_TRACKING_PASSWORD=SECRET, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    c = Cluster(tmp, env)
    try:
        _poll(lambda: len(c.alive_nodes()) == 1 or c.head.proc.poll() is not None, 120, "the head node")
        assert c.head.proc.poll() is None, c.head.log.read_text()[-3000:]
        c.add_worker()
        yield c
    finally:
        c.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def submit(c: Cluster, sid: str, *sets: str) -> None:
    """`ray job submit --working-dir .` from the repo root, the shipped runtime env, `sslpipe pretrain`."""
    r = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", c.address, "--no-wait",
                        "--submission-id", sid, "--working-dir", ".",
                        "--runtime-env", "cluster/runtime_env.json", "--",
                        "sslpipe", "pretrain", "--config", "tiny", "--set", f"mlflow.run_name={sid}",
                        "--set", "train.resources_per_worker=sslpipe_train:1", "--set", "train.placement=SPREAD",
                        "--set", "data.resources=sslpipe_data:1", "--set", f"train.storage_path=s3://{BUCKET}/ckpt",
                        "--set", f"output_dir={c.tmp / 'outputs'}", *[a for s in sets for a in ("--set", s)]],
                       cwd=ROOT, env=c.env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def wait_job(c: Cluster, sid: str, timeout: float) -> str:
    def done():
        out = c.job("status", sid).stdout.lower()       # "Job 'ID' succeeded" when it ended
        return next((s.upper() for s in ("succeeded", "failed", "stopped") if f"job '{sid}' {s}" in out), None)
    try:
        state = _poll(done, timeout, f"job {sid}")
    except AssertionError as e:
        raise AssertionError(f"{e}\n{c.job('status', sid).stdout}\n{c.job('logs', sid).stdout[-6000:]}") from None
    logs = c.job("logs", sid).stdout
    assert state == "SUCCEEDED", logs[-6000:]
    return logs


def train_worker_nodes(c: Cluster, *filters: str) -> set[str]:
    r = _ray(c.env, "list", "actors", "--address", c.address, "--format", "json", "--detail",
             "-f", "class_name=RayTrainWorker", *[x for f in filters for x in ("-f", f)], "--limit", "1000")
    assert r.returncode == 0, r.stderr
    return {a["node_id"] for a in json.loads(r.stdout)}


def checkpoints(s3_env: dict, sid: str) -> set[str]:
    import boto3
    s3 = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                      aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"])
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"ckpt/{sid}/")
            for o in page.get("Contents", [])]
    return {k.split("/")[2] for k in keys if k.split("/")[2].startswith("checkpoint_")}


@pytest.mark.timeout(1500)
def test_job_submit_trains_on_both_nodes_and_registers(cluster, mlflow_server, s3_server, session_tmp):
    import mlflow
    from mlflow.tracking import MlflowClient

    submit(cluster, "e2e-job")
    logs = wait_job(cluster, "e2e-job", 400)
    assert "[sslpipe] step 40/40" in logs and "registered model: models:/sslpipe-tiny/" in logs
    # Train workers ran on both nodes (one per sslpipe_train slot, spread)
    nodes = {n["node_id"] for n in cluster.alive_nodes()}
    assert train_worker_nodes(cluster) == nodes and len(nodes) == 2
    # checkpoints went to the S3 storage path, through every node's own credentials
    assert checkpoints(s3_server, "e2e-job")
    # the registered version loads on the client side, from the server (no shared disk)
    version = logs.split("registered model: models:/sslpipe-tiny/")[1].split()[0]
    client = MlflowClient(mlflow_server)
    mv = client.get_model_version("sslpipe-tiny", version)
    assert client.get_run(mv.run_id).data.tags["mlflow.runName"] == "e2e-job"
    mlflow.set_tracking_uri(mlflow_server)
    model = mlflow.pyfunc.load_model(f"models:/sslpipe-tiny/{version}")
    emb = model.predict(["a sentence about python", "another one"], params={"task": "embed"})
    assert len(emb) == 2
    # no secret of the cluster's environment in the job's logs or anywhere in the MLflow store
    store = session_tmp / "mlflow-server"
    blobs = [logs.encode()]
    with sqlite3.connect(store / "mlflow.db") as db:
        blobs.append("\n".join(db.iterdump()).encode())
    blobs += [p.read_bytes() for p in (store / "artifacts").rglob("*") if p.is_file()]
    for value in (TOKEN, SECRET, s3_server["AWS_SECRET_ACCESS_KEY"]):
        assert not any(value.encode() in b for b in blobs), "a secret leaked into the logs or the MLflow store"


@pytest.mark.timeout(1500)
def test_job_survives_losing_a_node(cluster, mlflow_server, s3_server):
    """Three nodes, one Train slot each; the node of a Train worker other than the head is killed
    (all its processes, by PID); the two left hold the restarted group."""
    from mlflow.tracking import MlflowClient

    cluster.add_worker()
    submit(cluster, "e2e-loss", "train.max_steps=600", "train.checkpoint_every=20", "train.max_failures=3",
           "train.log_every=20")
    _poll(lambda: checkpoints(s3_server, "e2e-loss"), 600, "the first checkpoint")
    by_node = {n["node_id"]: next((k for k in n["resources_total"] if k.startswith("node_w")), "head")
               for n in cluster.alive_nodes()}
    hosts = [by_node[n] for n in train_worker_nodes(cluster, "state=ALIVE")]
    victim = next(h for h in hosts if h != "head")          # the head offers one slot of two
    assert cluster.workers[victim].kill()
    logs = wait_job(cluster, "e2e-loss", 900)
    assert "resumed from checkpoint at step" in logs, logs[-5000:]
    assert "[sslpipe] step 600/600" in logs
    assert checkpoints(s3_server, "e2e-loss"), "no checkpoint left on storage"
    # the registered model is the finished run's: its logged steps reach max_steps
    version = logs.split("registered model: models:/sslpipe-tiny/")[1].split()[0]
    client = MlflowClient(mlflow_server)
    run = client.get_run(client.get_model_version("sslpipe-tiny", version).run_id)
    assert run.data.tags["mlflow.runName"] == "e2e-loss"
    assert max(m.step for m in client.get_metric_history(run.info.run_id, "loss")) == 600
