"""Progress lines: ``[sslpipe] ...`` on the process's real stdout, flushed at once.

Written to ``sys.__stdout__`` so that Ray's worker-log forwarding and pytest's capture both see
each line once, whatever has replaced ``sys.stdout``."""
from __future__ import annotations

import sys


def say(msg: str) -> None:
    out = sys.__stdout__ or sys.stdout
    out.write(f"[sslpipe] {msg}\n")
    out.flush()
