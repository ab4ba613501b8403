"""Processes of the local Ray that outlive ``ray.shutdown()``.

Ray 2.60's workers can hang in their own exit handlers (seen after ``sslpipe tune --resume``: a Ray
Data actor stuck in ``~CoreWorkerProcessImpl`` -> the publisher's destructor -> a mutex the io
scheduler's shutdown holds), and such a process stays alive, holding memory, after the CLI exits.
The CLI records the processes below it (the local Ray it started: GCS, raylet, workers) before it
shuts Ray down, waits for them to exit, and kills the ones that do not. Linux only (``/proc``);
elsewhere nothing is recorded. Under ``RAY_ADDRESS`` the cluster's processes are not below the
CLI and are left alone.
"""
from __future__ import annotations

import os
import signal
import time


def _stat(pid: int) -> tuple[bytes, int, int] | None:
    """(state, parent PID, start time in clock ticks) of ``pid``; None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1]), int(fields[19])   # stat's fields 3, 4 and 22


def descendants(root: int | None = None) -> dict[int, int]:
    """``{pid: start time}`` of every living process below ``root`` (this process by default)."""
    root = os.getpid() if root is None else root
    if not os.path.isdir("/proc/self"):
        return {}
    kids: dict[int, list[tuple[int, int]]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (st := _stat(int(name))) is not None:
            kids.setdefault(st[1], []).append((int(name), st[2]))
    out, stack = {}, [root]
    while stack:
        for pid, start in kids.get(stack.pop(), ()):
            if pid not in out:
                out[pid] = start
                stack.append(pid)
    return out


def _alive(procs: dict[int, int]) -> list[int]:
    """The PIDs of ``procs`` still running as the same process (a reused PID is not ours), zombies
    excluded (exited; only their parent's wait is missing)."""
    out = []
    for pid, start in procs.items():
        st = _stat(pid)
        if st is not None and st[2] == start and st[0] not in (b"Z", b"X"):
            out.append(pid)
    return out


def reap(procs: dict[int, int], grace: float = 10.0) -> list[int]:
    """Waits up to ``grace`` seconds for ``procs`` (from :func:`descendants`) to exit, then SIGKILLs
    the ones left. Returns the PIDs it killed (empty when everything exited by itself)."""
    deadline = time.monotonic() + grace
    while (left := _alive(procs)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return left
