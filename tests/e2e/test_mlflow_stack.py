"""The production-shaped MLflow stack of infra/mlflow/, run here on real parts.

`infra/mlflow/serve.sh` (the command the docker-compose `mlflow` service runs) is started against a
real PostgreSQL server (Debian's binaries: initdb + pg_ctl in a temp dir, on a free port, the
databases made as the postgres image makes them) and the moto S3 server, with MLflow's basic-auth
app on. `sslpipe pretrain --config tiny` logs and registers through it with
MLFLOW_TRACKING_USERNAME/PASSWORD; a request without credentials is refused; the model's files are
objects in the bucket; and no credential of the run's environment is anywhere in the database
dump, the bucket or the logs. Everything started here is stopped by its PID, also on failure.
"""
from __future__ import annotations

import base64
import glob
import json
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, free_port, stop_server, stop_session

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

INFRA = ROOT / "infra" / "mlflow"
BIN = Path(sys.executable).parent
BUCKET = "mlflow-artifacts"
ADMIN = "admin"                              # admin_username in basic_auth.ini
MODEL = "stack-tiny"
# What infra/mlflow/README.md tells this stack's clients to set: every artifact goes through the
# server (MLflow 3.17 clients otherwise fetch files from presigned URLs of the S3 endpoint, which
# the clients of the compose stack cannot reach, and that moto with IAM checks answers with 500).
CLIENT_ENV = {"MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "false", "MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD": "false"}


def _pg_bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    if shutil.which("pg_config"):
        d = Path(subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True).stdout.strip())
        if (d / "initdb").is_file():
            return d
    pytest.skip("no PostgreSQL server binaries (Debian: apt-get install postgresql; .ci/run does)")


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"{url} did not answer:\n" + log.read_text()[-4000:])
        time.sleep(0.3)


def _get(url: str, auth: tuple[str, str] | None = None) -> int:
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            json.loads(r.read())
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _sql(db: dict, dbname: str, statement: str, args: tuple = ()) -> list[tuple]:
    """One statement outside a transaction (CREATE DATABASE needs that); its rows, if any."""
    import psycopg2

    conn = psycopg2.connect(dbname=dbname, **{k: db[k] for k in ("host", "port", "user", "password")})
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(statement, args or None)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


@pytest.fixture(scope="module")
def postgres():
    """A real PostgreSQL server on 127.0.0.1 (password auth) with the databases of the compose
    stack: `mlflow`, made by its bootstrap superuser `mlflow` (POSTGRES_USER/POSTGRES_DB of the
    image), and `mlflow_auth`, made by infra/mlflow/initdb/*.sql as the image runs it."""
    bindir = _pg_bindir()
    as_user: list[str] = []
    if os.geteuid() == 0:                                       # postgres refuses to run as root
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run the server as")
        as_user = ["runuser", "-u", "postgres", "--"]
    tmp = Path(tempfile.mkdtemp(prefix="pg", dir="/tmp"))        # short: the socket path is limited
    db = {"host": "127.0.0.1", "port": free_port(), "user": "mlflow", "password": secrets.token_hex(16)}
    run = lambda *a: subprocess.run(as_user + [str(bindir / a[0]), *a[1:]], capture_output=True,  # noqa: E731
                                    text=True, timeout=120, cwd=tmp)
    try:
        pwfile = tmp / "pwfile"
        pwfile.write_text(db["password"] + "\n")
        for p in (tmp, pwfile) if as_user else ():
            os.chown(p, pw.pw_uid, pw.pw_gid)
        res = run("initdb", "-D", str(tmp / "data"), "-U", db["user"], "--auth=scram-sha-256",
                  f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C.UTF-8")
        assert res.returncode == 0, res.stdout + res.stderr
        pwfile.unlink()
        res = run("pg_ctl", "-D", str(tmp / "data"), "-l", str(tmp / "server.log"), "-w", "-t", "60", "-o",
                  f"-c listen_addresses=127.0.0.1 -p {db['port']} -k {tmp}", "start")
        assert res.returncode == 0, res.stdout + res.stderr + (tmp / "server.log").read_text()
        _sql(db, "postgres", "CREATE DATABASE mlflow")
        for sql in sorted((INFRA / "initdb").glob("*.sql")):
            _sql(db, "mlflow", sql.read_text())
        yield dict(db, bindir=bindir)
    finally:
        if (tmp / "data" / "postmaster.pid").exists():
            run("pg_ctl", "-D", str(tmp / "data"), "-m", "fast", "-w", "stop")
        shutil.rmtree(tmp, ignore_errors=True)


def _s3(s3_env: dict, service: str = "s3"):
    """A boto3 client of the moto server, signed with the key in ``s3_env``."""
    import boto3

    return boto3.client(service, endpoint_url=s3_env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                        aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"])


def _pg_env(db: dict) -> dict:
    return {"PGHOST": db["host"], "PGPORT": str(db["port"]), "PGUSER": db["user"], "PGPASSWORD": db["password"]}


@pytest.fixture(scope="module")
def stack(postgres, s3_server, tmp_path_factory):
    """infra/mlflow/serve.sh with the environment the compose file gives it (a database URI without
    password, PG* for libpq, the S3 endpoint and key, the admin password, the CSRF key); HOST left
    to its default. Yields what a client needs."""
    _s3(s3_server).create_bucket(Bucket=BUCKET)
    d = tmp_path_factory.mktemp("mlflow-stack")
    port = free_port()
    admin_password = "pw-sentinel-" + secrets.token_hex(12)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING_", "AWS_"))}
    env.update(s3_server)
    env.update(_pg_env(postgres))
    pg = f"{postgres['user']}@{postgres['host']}:{postgres['port']}"          # no password: PGPASSWORD
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
               BACKEND_STORE_URI=f"postgresql+psycopg2://{pg}/mlflow",
               ARTIFACTS_DESTINATION=f"s3://{BUCKET}", MLFLOW_S3_ENDPOINT_URL=s3_server["AWS_ENDPOINT_URL"],
               MLFLOW_AUTH_CONFIG_PATH=str(INFRA / "basic_auth.ini"), MLFLOW_AUTH_ADMIN_PASSWORD=admin_password,
               MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(24), PORT=str(port), WORKERS="1")
    env.pop("HOST", None)
    log = d / "server.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(["/bin/sh", str(INFRA / "serve.sh")], cwd=d, env=env, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", proc, log, 180)
        yield {"uri": f"http://127.0.0.1:{port}", "port": port, "proc": proc, "log": log,
               "auth": (ADMIN, admin_password), "s3": s3_server}
    finally:
        stop_server(proc)


def _client_aws_env(s3_server: dict) -> dict:
    """The run's own AWS key (an IAM user of its own on moto): a real, distinctive secret."""
    iam = _s3(s3_server, "iam")
    iam.create_user(UserName="mlflow-stack-run")
    key = iam.create_access_key(UserName="mlflow-stack-run")["AccessKey"]
    return dict(s3_server, AWS_ACCESS_KEY_ID=key["AccessKeyId"], AWS_SECRET_ACCESS_KEY=key["SecretAccessKey"])


@pytest.fixture(scope="module")
def pretrain(stack, tmp_path_factory):
    """`sslpipe pretrain --config tiny` as a user runs it against the stack, once for the module,
    with credentials and a token in its environment. Yields (stdout, stderr, sentinels)."""
    wd = tmp_path_factory.mktemp("pretrain")
    sentinels = {"MLFLOW_TRACKING_PASSWORD": stack["auth"][1],
                 "SSLPIPE_TEST_TOKEN": "tok-sentinel-" + secrets.token_hex(12)}
    env = dict(os.environ, **_client_aws_env(stack["s3"]), **CLIENT_ENV, MLFLOW_TRACKING_URI=stack["uri"],
               MLFLOW_TRACKING_USERNAME=stack["auth"][0], RAY_ADDRESS="",
               RAY_TMPDIR=tempfile.mkdtemp(prefix="raym", dir="/tmp"), **sentinels)
    sentinels["AWS_SECRET_ACCESS_KEY"] = env["AWS_SECRET_ACCESS_KEY"]
    proc = subprocess.Popen([str(BIN / "sslpipe"), "pretrain", "--config", "tiny",
                             "--set", f"mlflow.registered_model={MODEL}", "--set", "mlflow.run_name=stack"],
                            cwd=wd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        stop_session(proc.pid)
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    assert proc.returncode == 0, out[-4000:] + err[-4000:]
    yield out, err, sentinels


def test_the_compose_stack_runs_the_tested_command():
    """What the test runs is what the compose file ships: serve.sh in the image the Dockerfile
    builds with this MLflow, the port published on 127.0.0.1 only, every secret from the env."""
    import mlflow

    compose = yaml.safe_load((INFRA / "docker-compose.yml").read_text())
    svc = compose["services"]
    assert {"postgres", "minio", "mlflow"} <= set(svc)
    assert svc["mlflow"]["ports"] == ["127.0.0.1:5000:5000"]
    assert all("ports" not in s for name, s in svc.items() if name != "mlflow")
    for name, s in svc.items():
        if "image" in s and "build" not in s:
            assert ":" in s["image"] and not s["image"].endswith(":latest"), name
        for k, v in (s.get("environment") or {}).items():
            if any(w in k for w in ("PASSWORD", "SECRET", "KEY")):
                assert str(v).startswith("${") and str(v).endswith("}"), (name, k)
    env = svc["mlflow"]["environment"]
    assert env["HOST"] == "0.0.0.0" and env["ARTIFACTS_DESTINATION"] == f"s3://{BUCKET}"
    assert env["BACKEND_STORE_URI"].startswith("postgresql+psycopg2://") and "PGPASSWORD" in env
    docker = (INFRA / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in docker and f"mlflow[auth]=={mlflow.__version__}" in docker
    assert 'ENTRYPOINT ["/app/serve.sh"]' in docker and "basic_auth.ini" in docker
    assert (INFRA / ".env.example").is_file()


def test_serve_sh_refuses_a_password_on_its_command_line(tmp_path):
    """A database password in BACKEND_STORE_URI would show in `ps` and in MLflow's logs: serve.sh
    stops before starting anything, without echoing it; a missing setting is named."""
    env = {"PATH": os.environ["PATH"], "ARTIFACTS_DESTINATION": f"s3://{BUCKET}",
           "MLFLOW_FLASK_SERVER_SECRET_KEY": "k" * 32}
    res = subprocess.run(["/bin/sh", str(INFRA / "serve.sh")], cwd=tmp_path, capture_output=True, text=True,
                         env=dict(env, BACKEND_STORE_URI="postgresql+psycopg2://mlflow:hunter2-db@db:5432/mlflow"))
    assert res.returncode == 2 and "PGPASSWORD" in res.stderr and "hunter2-db" not in res.stdout + res.stderr
    res = subprocess.run(["/bin/sh", str(INFRA / "serve.sh")], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert res.returncode != 0 and "BACKEND_STORE_URI" in res.stderr


def test_the_server_refuses_requests_without_credentials(stack):
    import psutil

    url = stack["uri"] + "/api/2.0/mlflow/experiments/search?max_results=5"
    assert _get(url) == 401
    assert _get(url, (ADMIN, "not-the-password-123")) == 401
    assert _get(url, stack["auth"]) == 200
    # bound to the loopback interface only (serve.sh's default HOST)
    pids = {stack["proc"].pid} | {c.pid for c in psutil.Process(stack["proc"].pid).children(recursive=True)}
    listening = {c.laddr.ip for c in psutil.net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == stack["port"] and c.pid in pids}
    assert listening == {"127.0.0.1"}


def _model_keys(stack, client, version) -> tuple[str, dict]:
    """The S3 prefix of the registered version's logged model and its objects (key -> size)."""
    location = client.get_model_version_download_uri(MODEL, version)
    assert location.startswith("mlflow-artifacts:/"), location        # proxied: the client never saw S3
    prefix = location[len("mlflow-artifacts:/"):].strip("/") + "/"
    s3 = _s3(stack["s3"])
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return prefix, {o["Key"]: o["Size"] for p in pages for o in p.get("Contents", [])}


@pytest.fixture
def client(stack, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", stack["auth"][0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", stack["auth"][1])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", stack["uri"])
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")       # fail, don't retry for minutes
    for k, v in CLIENT_ENV.items():
        monkeypatch.setenv(k, v)
    return MlflowClient(stack["uri"])


def _registered(pretrain) -> tuple[str, Path]:
    out = pretrain[0].strip().splitlines()
    uri, model_dir = out[-2], Path(out[-1])
    assert uri.startswith(f"models:/{MODEL}/"), out[-5:]
    return uri.rsplit("/", 1)[1], model_dir


def test_pretrain_logs_and_registers_in_postgres(pretrain, postgres, client):
    version, _ = _registered(pretrain)
    mv = client.get_model_version(MODEL, version)
    assert mv.status == "READY"
    assert client.get_model_version_by_alias(MODEL, "champion").version == mv.version
    run = client.get_run(mv.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "stack"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")   # artifacts go through the server
    assert len(client.get_metric_history(mv.run_id, "loss")) >= 4
    # the tracking store is the PostgreSQL database, not a file beside the run
    assert _sql(postgres, "mlflow", "SELECT status FROM runs WHERE run_uuid = %s", (mv.run_id,)) == [("FINISHED",)]
    versions = _sql(postgres, "mlflow", "SELECT version FROM model_versions WHERE name = %s", (MODEL,))
    assert [str(v) for (v,) in versions] == [version]
    # the user store is the other database: the admin made from the env's password, nobody else
    assert _sql(postgres, "mlflow_auth", "SELECT username, is_admin FROM users") == [(ADMIN, True)]


def test_the_model_files_are_objects_in_the_bucket(pretrain, stack, client, tmp_path):
    import mlflow

    version, model_dir = _registered(pretrain)
    prefix, keys = _model_keys(stack, client, version)
    assert prefix + "MLmodel" in keys, sorted(keys)
    weights = [k for k in keys if k.endswith("/model.safetensors")]
    assert len(weights) == 1, sorted(keys)
    s3 = _s3(stack["s3"])
    stored = s3.get_object(Bucket=BUCKET, Key=weights[0])["Body"].read()
    assert stored == (model_dir / "model.safetensors").read_bytes()  # the trained weights, whole
    # and a client reads them back through the server (authenticated), from the bucket
    mv = client.get_model_version(MODEL, version)
    got = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL}/{version}", dst_path=str(tmp_path)))
    assert (got / "MLmodel").read_bytes() == s3.get_object(Bucket=BUCKET, Key=prefix + "MLmodel")["Body"].read()
    assert mv.run_id in (got / "MLmodel").read_text()


def _haystacks(pretrain, postgres, stack) -> dict[str, bytes]:
    """Everything the run left in the MLflow stack, and the logs: both databases as SQL text, every
    object in the bucket, the CLI's output and the server's log."""
    env = dict(os.environ, **_pg_env(postgres))
    out = {}
    for db in ("mlflow", "mlflow_auth"):
        res = subprocess.run([str(postgres["bindir"] / "pg_dump"), "--dbname", db], env=env,
                             capture_output=True, timeout=120)
        assert res.returncode == 0, res.stderr.decode()[-2000:]
        out[f"pg_dump {db}"] = res.stdout
    s3 = _s3(stack["s3"])
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for o in page.get("Contents", []):
            out[f"s3://{BUCKET}/{o['Key']}"] = s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()
    out["sslpipe stdout"], out["sslpipe stderr"] = pretrain[0].encode(), pretrain[1].encode()
    out["server log"] = stack["log"].read_bytes()
    return out


def test_no_credential_of_the_run_is_in_the_store_or_the_logs(pretrain, postgres, stack):
    hay = _haystacks(pretrain, postgres, stack)
    # the search is over the real thing: the run, the registered model, the admin user, the files
    assert MODEL.encode() in hay["pg_dump mlflow"] and b"FINISHED" in hay["pg_dump mlflow"]
    assert ADMIN.encode() in hay["pg_dump mlflow_auth"]
    assert sum(k.endswith("/model.safetensors") for k in hay) >= 1 and sum(k.startswith("s3://") for k in hay) > 5
    sentinels = pretrain[2]
    assert set(sentinels) == {"AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD", "SSLPIPE_TEST_TOKEN"}
    leaks = [f"{var} in {where}" for var, value in sentinels.items() for where, data in hay.items()
             if value.encode() in data]
    assert not leaks, leaks
