"""The CLI's clean-up after ``ray.shutdown()``: processes recorded below it that outlive a grace
period are killed, nothing else (``pipelines.reap``). Real processes, Linux's /proc."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from pipelines.reap import _alive, descendants, reap

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")

# like raylet and a worker hung in its exit handlers: the parent exits, its child ignores SIGTERM
PARENT = r"""
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(600)"],
    stdout=subprocess.PIPE, text=True)
child.stdout.readline()
print(child.pid, flush=True)
time.sleep(1.0)
"""


def test_reap_kills_what_outlives_the_grace_and_only_that():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    orphan = int(parent.stdout.readline())
    found = descendants()
    assert parent.pid in found and orphan in found          # the child of a child is found too
    procs = {p: found[p] for p in (parent.pid, orphan)}     # not this test session's Ray or MLflow
    t0 = time.monotonic()
    killed = reap(procs, grace=4.0)
    waited = time.monotonic() - t0
    assert killed == [orphan] and 3.9 <= waited < 30        # the parent exited by itself in time
    assert parent.wait(timeout=10) == 0
    deadline = time.monotonic() + 10
    while _alive({orphan: procs[orphan]}) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _alive({orphan: procs[orphan]}) == []


def test_reap_returns_at_once_when_all_exited_and_never_kills_a_reused_pid():
    quick = subprocess.Popen([sys.executable, "-c", "pass"])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        found = descendants()
        assert quick.pid in found and other.pid in found
        quick.wait(timeout=30)
        t0 = time.monotonic()
        assert reap({quick.pid: found[quick.pid]}, grace=20.0) == []    # exited (a zombie, not alive)
        assert time.monotonic() - t0 < 5
        # the same PID with another start time is another process: left alone
        assert reap({other.pid: found[other.pid] + 1}, grace=0.2) == []
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()
