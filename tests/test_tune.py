"""Ray Tune search, MLflow tracking of every trial, the registry's champion rule, and serving.

Real parts: `sslpipe tune --config tune-tiny` (its own local Ray, Optuna TPE + ASHA) against the
session's real `mlflow server`, killed after its first trial finished and resumed; the registry's
champion rule on that server; `mlflow models serve` of `models:/NAME@champion` on 127.0.0.1.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from conftest import free_port, run_cli, stop_session

pytestmark = pytest.mark.integration

NAME = "tune-tiny-test"


def one_error_line(res, *needles):
    assert res.returncode == 2, (res.returncode, res.stdout[-2000:], res.stderr[-2000:])
    assert "Traceback" not in res.stderr
    err = [l for l in res.stderr.splitlines() if l.startswith("sslpipe: error:")]
    assert len(err) == 1, res.stderr
    for n in needles:
        assert n in err[0], err[0]


def test_bad_search_input_is_one_line(tmp_path):
    one_error_line(run_cli("tune", "--config", "tune-tiny", "--set", "tune.mask_ratio=0.6,0.2", cwd=tmp_path),
                   "tune.mask_ratio", "below")
    one_error_line(run_cli("tune", "--config", "tune-tiny", "--set", "tune.mask_ratio=0.2,1.5", cwd=tmp_path),
                   "tune.mask_ratio", "(0, 1)")
    one_error_line(run_cli("tune", "--config", "tune-tiny", "--set", "tune.temperature=0,0.1", cwd=tmp_path),
                   "tune.temperature", "> 0")
    one_error_line(run_cli("tune", "--config", "tune-tiny", "--set", "tune.samples=3", cwd=tmp_path),
                   "tune.samples")
    one_error_line(run_cli("tune", "--config", "tune-tiny", "--set", "objectives.mlm=false",
                           "--set", "tune.metric=mlm_accuracy", cwd=tmp_path), "mlm_accuracy", "objectives.mlm")
    one_error_line(run_cli("tune", "--resume", cwd=tmp_path), "no search to resume")
    one_error_line(run_cli("promote", "no-such-model", "1", cwd=tmp_path), "no-such-model")


def _wait(pred, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="module")
def search(tmp_path_factory, mlflow_server):
    """`sslpipe tune --config tune-tiny`, its driver killed once the first trial finished, then
    `sslpipe tune --resume`; returns (workdir, search dir, the resume's stdout+stderr)."""
    wd = tmp_path_factory.mktemp("tune")
    env = dict(os.environ, MLFLOW_TRACKING_URI=mlflow_server, RAY_ADDRESS="",
               RAY_TMPDIR=str(Path(f"/tmp/rayt{os.getpid()}")))
    exe = Path(sys.executable).parent / "sslpipe"
    args = ["tune", "--config", "tune-tiny", "--set", f"mlflow.registered_model={NAME}",
            "--set", "mlflow.run_name=search",
            "--set", "embedding.whiten=true", "--set", "embedding.whiten_sentences=300"]
    with open(wd / "first.log", "w") as log:
        proc = subprocess.Popen([str(exe), *args], cwd=wd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    trials = wd / "outputs" / "search" / "trials"
    try:
        _wait(lambda: proc.poll() is not None or any(trials.glob("*/model/config.json")), 900,
              "the first trial to finish")
        assert proc.poll() is None, (wd / "first.log").read_text()[-4000:]
        proc.send_signal(signal.SIGKILL)                 # the driver only
        proc.wait(timeout=30)
    finally:
        stop_session(proc.pid)
    first_done = sorted(p.parent.parent.name for p in trials.glob("*/model/config.json"))
    assert len(first_done) == 1
    res = run_cli("tune", "--resume", cwd=wd, env={k: env[k] for k in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "RAY_TMPDIR")},
                  timeout=1800)
    text = res.stdout + res.stderr
    assert res.returncode == 0, text[-5000:]
    return wd, wd / "outputs" / "search", text, first_done[0]


@pytest.mark.timeout(2400)   # the module's search (two CLI runs of tune-tiny) is charged to this test
def test_search_tracks_every_trial_and_registers_the_best(search, mlflow_server):
    import mlflow
    from mlflow.tracking import MlflowClient

    wd, sdir, text, first = search
    assert "resuming search 'search'" in text and "restoring the Tune experiment" in text
    # ASHA compares the resumed trials with the finished one too: its milestone scores came back
    restored = re.search(r"ASHA: (\d+) milestone scores of earlier trials restored", text)
    assert restored and int(restored.group(1)) >= 2, text[-3000:]
    client = MlflowClient(mlflow_server)
    run_json = json.loads((sdir / "search.json").read_text())
    parent = client.get_run(run_json["parent_run_id"])
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    rows = json.loads(Path(client.download_artifacts(parent.info.run_id, "trials.json", str(wd))).read_text())
    # one child per trial, none duplicated by the resume; each with params and metrics
    assert len(rows) == 4 and len(children) == 4
    assert sorted(c.data.tags["sslpipe.trial"] for c in children) == sorted(r["trial"] for r in rows)
    for c in children:
        assert c.data.params["masking.ratio"] and c.data.params["contrastive.temperature"]
        assert "loss" in c.data.metrics and "eval_mlm_accuracy" in c.data.metrics
    statuses = {r["status"] for r in rows}
    assert "stopped early" in statuses and "done" in statuses, rows
    # the trial that had finished before the kill was not trained again: its steps were logged once
    first_run = next(c for c in children if c.data.tags["sslpipe.trial"] == first)
    steps = [m.step for m in client.get_metric_history(first_run.info.run_id, "loss")]
    assert len(steps) == len(set(steps)) and max(steps) == 30
    # a stopped trial keeps its last evaluation in the table
    stopped = [r for r in rows if r["status"] == "stopped early"]
    assert all(r["score"] is not None and r["step"] < 30 for r in stopped)
    # table, best config, plots (non-empty PNGs)
    assert "(best)" in (sdir / "trials.txt").read_text()
    arts = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"plots/asha_rungs.png", "plots/score_vs_masking_ratio.png",
            "plots/score_vs_contrastive_temperature.png"} <= arts
    for png in ("asha_rungs.png", "score_vs_masking_ratio.png"):
        data = (sdir / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    best = [r for r in rows if r.get("best")]
    assert len(best) == 1 and best[0]["score"] == max(r["score"] for r in rows if r["status"] == "done")
    # the best config is a config `sslpipe pretrain` accepts, with the best trial's values
    from pipelines.configs import load_config
    bcfg = load_config(str(sdir / "best.yaml"))
    assert bcfg.masking.ratio == pytest.approx(best[0]["masking.ratio"])
    # registered: candidate and (first version) champion, with the comparison written on it
    mlflow.set_tracking_uri(mlflow_server)
    mv = client.get_model_version_by_alias(NAME, "champion")
    assert client.get_model_version_by_alias(NAME, "candidate").version == mv.version
    assert mv.tags["sslpipe.champion_decision"].startswith("champion: the first version")
    assert mv.run_id == next(c for c in children if c.data.tags["sslpipe.trial"] == best[0]["trial"]).info.run_id
    assert f"models:/{NAME}/{mv.version}" in text
    # embedding.whiten: trials are compared raw; the registered best gets the map
    assert "whitening map fitted on 300 training-corpus sentences" in text
    assert (sdir / "trials" / best[0]["trial"] / "model" / "2_Dense" / "model.safetensors").is_file()


def test_champion_moves_only_on_improvement(search, mlflow_server, tmp_path):
    """Versions scored on the same evaluation: a worse one stays candidate (the tags say why), a
    better one becomes champion, `sslpipe promote` moves it by hand."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from pipelines import registry
    from pipelines.configs import load_config

    wd, sdir, _, _ = search
    client = MlflowClient(mlflow_server)
    champ = client.get_model_version_by_alias(NAME, "champion")
    score = float(champ.tags["sslpipe.score"])
    model_dir = next(sdir.glob("trials/*/model"))
    cfg = load_config(str(sdir / "best.yaml"))
    mlflow.set_tracking_uri(mlflow_server)
    mlflow.set_experiment("champion-test")
    with mlflow.start_run():
        worse, why = registry.register(model_dir, cfg, {"stsb_spearman": score - 0.05})
    v_worse = worse.rsplit("/", 1)[1]
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == str(champ.version)
    assert str(client.get_model_version_by_alias(NAME, "candidate").version) == v_worse
    tags = client.get_model_version(NAME, v_worse).tags
    assert tags["sslpipe.champion_decision"].startswith("candidate only") and f"{score:.4f}" in why
    with mlflow.start_run():
        better, why = registry.register(model_dir, cfg, {"stsb_spearman": score + 0.05})
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == better.rsplit("/", 1)[1]
    assert why.startswith("champion:") and f"{score:.4f}" in why
    res = run_cli("promote", NAME, v_worse, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": mlflow_server})
    assert res.returncode == 0, res.stderr
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == v_worse
    assert "promoted by hand" in client.get_model_version(NAME, v_worse).tags["sslpipe.champion_decision"]
    res = run_cli("evaluate", f"models:/{NAME}@champion", "--tasks", "stsb", "--json", cwd=tmp_path,
                  env={"MLFLOW_TRACKING_URI": mlflow_server})
    assert res.returncode == 0, res.stderr[-2000:]
    assert -1 <= json.loads(res.stdout)["stsb_spearman"] <= 1


def _post(url: str, payload: dict):
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())["predictions"]


def test_champion_is_served_over_http(search, mlflow_server, tmp_path):
    wd, _, _, _ = search
    port = free_port()
    # `mlflow models serve` execs `uvicorn` from PATH: the venv's bin, as with an activated venv
    env = dict(os.environ, MLFLOW_TRACKING_URI=mlflow_server,
               PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}@champion",
                             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                            cwd=tmp_path, env=env, stdout=open(tmp_path / "serve.log", "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        def up():
            try:
                with urllib.request.urlopen(url + "/ping", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return proc.poll() is not None
        _wait(up, 180, "mlflow models serve")
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
        # fill-mask on a sentence of the training text (the Python docs)
        top = _post(url + "/invocations", {"inputs": ["Return the [MASK] of the list."],
                                           "params": {"task": "fill-mask", "top_k": 5}})[0]
        assert len(top) == 5 and all(isinstance(t["token_str"], str) and 0 <= t["score"] <= 1 for t in top)
        assert sorted((t["score"] for t in top), reverse=True) == [t["score"] for t in top]
        sents = ["A man is playing the guitar.", "A man plays a guitar.", "The stock market crashed today."]
        emb = np.array(_post(url + "/invocations", {"inputs": sents, "params": {"task": "embed"}}))
        # the width is the served model's own: its whitening map's output (directions of ~zero
        # variance dropped: LayerNorm'd mean-pooled states can lie in H-1 dimensions), else hidden
        import mlflow
        mlflow.set_tracking_uri(mlflow_server)
        served = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}@champion", dst_path=str(tmp_path / "dl")))
        confs = [json.loads(p.read_text()) for p in served.rglob("config.json")]
        hidden = next(c["hidden_size"] for c in confs if "hidden_size" in c)
        dense = [json.loads(p.read_text()) for p in served.rglob("2_Dense/config.json")]
        width = dense[0]["out_features"] if dense else hidden
        assert len(dense) <= 1 and all(d["in_features"] == hidden for d in dense) and hidden - 2 <= width <= hidden
        assert emb.shape == (3, width) and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
        assert emb[0] @ emb[1] > emb[0] @ emb[2]          # the paraphrase ranks above the unrelated one
    finally:
        stop_session(proc.pid, grace=5)
