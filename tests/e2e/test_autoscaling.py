"""Autoscaling on one machine with Ray's fake multi-node provider (what Ray's autoscaler tests
use; `ray.cluster_utils.AutoscalingCluster` builds the same config but runs `ray stop --force`,
which would kill every Ray on the machine, so the head is started here by hand).

The head offers no `sslpipe_train`; a `sslpipe pretrain` job whose two Train workers each ask for
one makes the autoscaler add two `train` nodes; the job completes; after the idle timeout the
nodes are gone again.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import ROOT, free_port, stop_session
from test_cluster_job import _poll, _ray

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

BIN = Path(sys.executable).parent


def fake_cluster_config(gcs: str) -> dict:
    return {
        "cluster_name": "sslpipe-fake", "max_workers": 2, "upscaling_speed": 1.0,
        "idle_timeout_minutes": 0.1,             # 6 s: nodes go away soon after the job
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": gcs},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 3}, "node_config": {}, "max_workers": 0},
            # as the GPU pool of cluster/*.yaml: one Train worker's slot per node
            "train": {"resources": {"CPU": 2, "sslpipe_train": 1, "object_store_memory": 200 << 20},
                      "node_config": {}, "min_workers": 0, "max_workers": 2},
        },
        "head_node_type": "ray.head.default", "auth": {}, "docker": {},
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [],
    }


@pytest.fixture()
def autoscaling_head(mlflow_server):
    tmp = Path(tempfile.mkdtemp(prefix="ra", dir="/tmp"))
    port, dash = free_port(), free_port()
    ip = subprocess.run([sys.executable, "-c", "import ray._private.services as s; print(s.get_node_ip_address())"],
                        capture_output=True, text=True, check=True).stdout.strip()
    cfg = tmp / "autoscaler.json"
    cfg.write_text(json.dumps(fake_cluster_config(f"{ip}:{port}")))
    env = dict(os.environ, RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1", RAY_AUTH_MODE="token",
               RAY_AUTH_TOKEN=secrets.token_hex(16), RAY_ADDRESS="", RAY_USAGE_STATS_ENABLED="0",
               MLFLOW_TRACKING_URI=mlflow_server, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    with open(tmp / "head.log", "wb") as log:
        head = subprocess.Popen([str(BIN / "ray"), "start", "--head", "--block", "--disable-usage-stats",
                                 f"--autoscaling-config={cfg}", f"--port={port}", "--num-cpus=3",
                                 "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                                 "--object-store-memory", str(200 << 20), f"--temp-dir={tmp / 'head'}",
                                 "--dashboard-agent-listen-port", str(free_port()),
                                 "--metrics-export-port", str(free_port())],
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        _poll(lambda: head.poll() is not None or len(alive(env, address)) == 1, 120, "the head node")
        assert head.poll() is None, (tmp / "head.log").read_text()[-3000:]
        yield env, address, tmp
    finally:
        if head.poll() is None:
            os.killpg(head.pid, signal.SIGTERM)
        stop_session(head.pid, grace=20)          # the fake nodes are the autoscaler's children
        shutil.rmtree(tmp, ignore_errors=True)


def alive(env: dict, address: str) -> list[dict]:
    r = _ray(env, "list", "nodes", "--address", address, "--format", "json", "-f", "state=ALIVE")
    return json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip().startswith("[") else []


@pytest.mark.timeout(1200)
def test_autoscaler_adds_train_nodes_for_a_job_and_removes_them_when_idle(autoscaling_head):
    env, address, tmp = autoscaling_head
    assert not any("sslpipe_train" in n.get("resources_total", {}) for n in alive(env, address))
    # no --working-dir here: the fake nodes share the head's session directory, and a node that
    # unpacks the job's package replaces the driver's working directory under it (the two-node
    # test in test_cluster_job.py submits with --working-dir, each node with its own temp dir)
    cmd = [str(BIN / "ray"), "job", "submit", "--address", address, "--",
           "sslpipe", "pretrain", "--config", "tiny", "--set", "mlflow.run_name=autoscale",
           "--set", "train.resources_per_worker=sslpipe_train:1", "--set", f"output_dir={tmp / 'outputs'}"]

    def submitted():         # the head's job agent registers a little after the node is alive
        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        return None if "No available agent to submit job" in res.stderr else res
    r = _poll(submitted, 120, "the job agent")
    (tmp / "job.out").write_text(r.stdout + r.stderr); shutil.copy(tmp / "job.out", "/tmp/autoscale_job.out")
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-3000:]
    assert "[sslpipe] step 40/40" in r.stdout and "registered model:" in r.stdout
    # the Train workers ran on nodes the autoscaler launched (the head has no sslpipe_train)
    actors = json.loads(_ray(env, "list", "actors", "--address", address, "--format", "json", "--detail",
                             "-f", "class_name=RayTrainWorker", "--limit", "1000").stdout)
    nodes = json.loads(_ray(env, "list", "nodes", "--address", address, "--format", "json", "--detail",
                            "--limit", "100").stdout)
    train_nodes = {n["node_id"] for n in nodes if "sslpipe_train" in n.get("resources_total", {})}
    assert len(train_nodes) == 2, nodes
    assert {a["node_id"] for a in actors} == train_nodes
    # idle: the autoscaler takes them away again
    _poll(lambda: len(alive(env, address)) == 1, 180, "the idle train nodes to be removed")
