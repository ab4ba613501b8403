"""Shared fixtures: real text from ../shared/data, one local Ray per session, a real MLflow server.

All state that Ray, MLflow and Hugging Face would write under $HOME, /tmp/ray or ./mlruns goes to
temporary directories of this test session, and every process a fixture starts is stopped.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SSLPIPE_SHARED_DATA", ROOT.parent / "shared" / "data"))

# Point every tool's state at this session's own directory, before anything imports them.
_SESSION_TMP = Path(tempfile.mkdtemp(prefix="sslpipe-tests-"))
os.environ["HOME"] = str(_SESSION_TMP / "home")
os.makedirs(os.environ["HOME"], exist_ok=True)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("RAY_ADDRESS", None)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_TMP, ignore_errors=True)


@pytest.fixture(autouse=True)
def _tracking_uri_per_test():
    """``mlflow.set_tracking_uri`` is process-wide and exports MLFLOW_TRACKING_URI to subprocesses:
    a test that points MLflow at its server must not point the next test's clients and CLIs there."""
    yield
    if "mlflow" in sys.modules:
        sys.modules["mlflow"].set_tracking_uri(None)
    os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(scope="session")
def session_tmp() -> Path:
    return _SESSION_TMP


def shared(*parts: str) -> Path:
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared data {p} is missing (expected ../shared/data beside the checkout)")
    return p


@pytest.fixture(scope="session")
def wikitext() -> Path:
    return shared("wikitext2", "wiki.valid.raw")


@pytest.fixture(scope="session")
def shakespeare() -> Path:
    return shared("tinyshakespeare", "input.txt")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_session(session_tmp):
    """One real local Ray for the whole session (4 logical CPUs on a 2-core machine)."""
    import ray

    tmp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))   # short: Ray's socket paths are limited
    ray.init(num_cpus=4, address="local", _temp_dir=str(tmp), include_dashboard=True,
             dashboard_host="127.0.0.1", object_store_memory=1 << 30, log_to_driver=True)
    yield ray
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


def start_mlflow_server(d: Path, port: int) -> subprocess.Popen:
    """`mlflow server` on 127.0.0.1:``port``, SQLite registry and artifacts under ``d``, in its own
    session (stopped by its PID); returns once /health answers."""
    d.mkdir(parents=True, exist_ok=True)
    uri = f"http://127.0.0.1:{port}"
    log = open(d / "server.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{d / 'mlflow.db'}",
         "--artifacts-destination", str(d / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, cwd=d, start_new_session=True)
    log.close()
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            stop_server(proc)
            raise RuntimeError("mlflow server did not start:\n" + (d / "server.log").read_text()[-3000:])
        time.sleep(0.5)


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


@pytest.fixture(scope="session")
def mlflow_server(session_tmp):
    """A real `mlflow server` on 127.0.0.1 with a SQLite registry; yields its URI."""
    port = free_port()
    proc = start_mlflow_server(session_tmp / "mlflow-server", port)
    yield f"http://127.0.0.1:{port}"
    stop_server(proc)


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: int = 600):
    """Run the installed `sslpipe` console script in a session of its own; returns
    CompletedProcess (text). Whatever it started and left behind is killed when it ends: Ray 2.60's
    workers can hang in their exit handlers (a Ray Data actor stuck in ``~CoreWorkerProcessImpl``
    after ``sslpipe tune`` ended was seen in CI), and a timed-out CLI leaves its Ray running."""
    exe = Path(sys.executable).parent / "sslpipe"
    e = dict(os.environ)
    e.update(env or {})
    cmd = [str(exe), *args]
    proc = subprocess.Popen(cmd, cwd=cwd, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    finally:
        left = stop_session(proc.pid, grace=10)
        if left:
            warnings.warn(f"`sslpipe {' '.join(args[:1])}` left {len(left)} process(es) behind, killed: {left}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.fixture(scope="session")
def s3_server(session_tmp):
    """A local S3-compatible server (moto) on 127.0.0.1 that checks credentials: the first three
    requests (no auth) create an IAM user with full rights and its key; every later request must
    be signed with that key. Yields the standard AWS environment a client needs."""
    pytest.importorskip("s3fs")
    import boto3

    port = free_port()
    exe = Path(sys.executable).parent / "moto_server"
    log = open(session_tmp / "moto.log", "wb")
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True,
                            env=dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3"))
    deadline = time.time() + 60
    while True:                      # wait for the port without spending an unauthenticated request
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("moto_server did not start:\n" + (session_tmp / "moto.log").read_text())
            time.sleep(0.3)
    endpoint = f"http://127.0.0.1:{port}"
    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                       aws_access_key_id="setup", aws_secret_access_key="setup")
    iam.create_user(UserName="sslpipe")
    iam.put_user_policy(UserName="sslpipe", PolicyName="all", PolicyDocument=(
        '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}'))
    key = iam.create_access_key(UserName="sslpipe")["AccessKey"]
    env = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}
    yield env
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=20)
    log.close()


def session_processes(sid: int) -> list[int]:
    """PIDs of the live (not zombie) processes in session ``sid``: a process the test started with
    ``start_new_session=True`` and everything it started (Ray's processes do not leave it)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()        # after "pid (comm) "
        if fields[0] != "Z" and int(fields[3]) == sid:
            pids.append(int(d.name))
    return pids


def stop_session(sid: int, grace: float = 30.0) -> list[int]:
    """Wait up to ``grace`` seconds for the processes of session ``sid`` to exit (Ray's processes
    die with their parent), then SIGKILL those left, by PID. Returns the PIDs that had to be killed."""
    deadline = time.time() + grace
    while session_processes(sid) and time.time() < deadline:
        time.sleep(0.2)
    left = session_processes(sid)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left
