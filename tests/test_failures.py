"""Failures with real processes and real kills.

1. A Ray Train worker process is SIGKILLed mid-run (its PID from the Ray state API): Ray Train
   restarts the worker group, the loop resumes from the last checkpoint and reaches the target step.
2. The driver (`sslpipe pretrain`) is SIGKILLed mid-run; `sslpipe pretrain --resume` continues the
   run from its last checkpoint, not from step 0, in the same MLflow run.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import stop_session

pytestmark = pytest.mark.integration


def _checkpoints(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("**/checkpoint_*") if (p / "trainer_state.json").is_file())


def _step(ckpt: Path) -> int:
    return json.loads((ckpt / "trainer_state.json").read_text())["step"]


def _registered_step(root: Path) -> int | None:
    """Step of the latest checkpoint in Ray Train's checkpoint manager snapshot, if any."""
    for snap in root.glob("**/checkpoint_manager_snapshot.json"):
        try:
            latest = json.loads(snap.read_text()).get("latest_checkpoint_result")
        except (OSError, ValueError):      # being written
            continue
        if latest and (snap.parent / latest["checkpoint_dir_name"] / "trainer_state.json").is_file():
            return _step(snap.parent / latest["checkpoint_dir_name"])
    return None


def _wait_for(pred, timeout: float, what: str, poll: float = 0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def test_worker_killed_mid_run_resumes_from_checkpoint(tmp_path, ray_session, shakespeare,
                                                       monkeypatch):
    from ray.util.state import list_actors

    from pipelines.configs import load_config
    from pipelines.pretrain import run_pretrain

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    steps, every = 300, 20        # long enough that the kill lands mid-run under load
    cfg = load_config("tiny", [f"data.corpus={shakespeare}", f"train.max_steps={steps}",
                               f"train.checkpoint_every={every}", "train.keep_checkpoints=2",
                               "train.max_failures=2", "eval.tasks=",
                               "mlflow.run_name=killworker", "mlflow.registered_model=kill-tiny"])
    out: dict = {}

    def run():
        try:
            out["res"] = run_pretrain(cfg, workdir=tmp_path)
        except BaseException as e:   # surfaced by the assertions below
            out["err"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    ray_dir = tmp_path / "outputs" / "killworker" / "ray"
    # a checkpoint counts once Ray Train's controller has registered it (it polls the workers every
    # couple of seconds; under load a checkpoint on disk was seen unregistered when the kill came):
    # wait until its snapshot names one, then kill
    killed_after = _wait_for(lambda: _registered_step(ray_dir), 600, "a registered checkpoint")
    workers = [a for a in list_actors(filters=[("class_name", "=", "RayTrainWorker"),
                                               ("state", "=", "ALIVE")])]
    assert len(workers) == 2, workers
    victim = workers[1]["pid"]
    os.kill(victim, signal.SIGKILL)
    t.join(timeout=900)
    assert not t.is_alive(), "training did not finish after the worker was killed"
    assert "err" not in out, out.get("err")
    res = out["res"]
    assert res.metrics["step"] == steps
    # where the restarted workers resumed, from their final report (the "resumed from checkpoint"
    # line reaches this process through Ray's log monitor, asynchronously: under load it was seen
    # to arrive after the run had returned)
    resumed = res.metrics["resumed_from_step"]
    assert resumed >= killed_after > 0, res.metrics
    assert resumed % every == 0 and resumed < steps
    ckpts = _checkpoints(ray_dir)
    assert len(ckpts) == 2       # keep_checkpoints (unregistered leftovers of the dead attempt removed)
    assert _step(ckpts[-1]) == steps and (ckpts[-1] / "model" / "config.json").is_file()
    assert res.model_dir.is_dir()
    alive = {a["pid"] for a in list_actors(filters=[("class_name", "=", "RayTrainWorker"),
                                                    ("state", "=", "ALIVE")])}
    assert victim not in alive


def _start(args: list[str], cwd: Path, env: dict, log: Path) -> subprocess.Popen:
    """`sslpipe ARGS` in a new session (its Ray processes stay in it: stopped by PID later);
    stdout to ``log``, stderr to ``log`` + ".err"."""
    exe = Path(sys.executable).parent / "sslpipe"
    with open(log, "w") as out, open(f"{log}.err", "w") as err:
        return subprocess.Popen([str(exe), *args], cwd=cwd, env=dict(os.environ, **env),
                                stdout=out, stderr=err, start_new_session=True)


def test_driver_killed_then_resume(tmp_path, shakespeare):
    ray_tmp = Path(f"/tmp/rayd{os.getpid()}")       # short: Ray's socket paths are limited
    # explicit store: an earlier in-process run may have left MLFLOW_TRACKING_URI in os.environ
    env = {"RAY_TMPDIR": str(ray_tmp), "RAY_ADDRESS": "",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    steps, every = 200, 20
    args = ["pretrain", "--config", "tiny", "--set", f"data.corpus={shakespeare}",
            "--set", f"train.max_steps={steps}", "--set", f"train.checkpoint_every={every}",
            "--set", "eval.tasks=", "--set", "mlflow.run_name=killdriver",
            "--set", "mlflow.registered_model=resume-tiny"]
    proc = _start(args, tmp_path, env, tmp_path / "first.log")
    try:
        ray_dir = tmp_path / "outputs" / "killdriver" / "ray"
        _wait_for(lambda: proc.poll() is not None or len(_checkpoints(ray_dir)) >= 2, 600,
                  "two checkpoints")
        assert proc.poll() is None, (tmp_path / "first.log.err").read_text()[-3000:]
        proc.send_signal(signal.SIGKILL)                 # the driver only, not its process group
        proc.wait(timeout=30)
    finally:
        stop_session(proc.pid)                           # what it started dies with it, or is killed
    killed_at = sorted(_step(c) for c in _checkpoints(ray_dir))[-2]   # registered for sure
    assert 0 < killed_at < steps
    assert not (tmp_path / "outputs" / "killdriver" / "model").exists()

    again = _start(["pretrain", "--resume", "killdriver"], tmp_path, env, tmp_path / "resume.log")
    try:
        rc = again.wait(timeout=900)
    finally:
        stop_session(again.pid)
    stdout = (tmp_path / "resume.log").read_text()
    text = stdout + (tmp_path / "resume.log.err").read_text()
    assert rc == 0, text[-4000:]
    assert "resuming run 'killdriver'" in text
    resumed = [int(line.split("resumed from checkpoint at step ")[1].split()[0])
               for line in text.splitlines() if "resumed from checkpoint at step " in line]
    assert resumed and resumed[0] >= killed_at, text[-3000:]
    assert f"step {steps}/{steps}" in text
    assert f"step {every}/{steps} |" not in text             # the early steps were not trained again
    model_dir = Path(stdout.strip().splitlines()[-1])
    assert (model_dir / "config.json").is_file()
    run = json.loads((tmp_path / "outputs" / "killdriver" / "run.json").read_text())
    import mlflow
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    r = client.get_run(run["mlflow_run_id"])
    assert r.info.status == "FINISHED"                        # the same MLflow run, finished
    hist = sorted(m.step for m in client.get_metric_history(r.info.run_id, "loss"))
    assert hist[0] <= killed_at and hist[-1] == steps
    shutil.rmtree(ray_tmp, ignore_errors=True)
