"""Stopping a child process: SIGINT goes out first, SIGKILL after a grace period.

Shared by `loop run` (stories.py: a story's command) and `loop exec` (capture.py).
"""
from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable


def kill_after_grace(proc: subprocess.Popen, stop: threading.Event, grace: float, kill: Callable[[], None]) -> None:
    """Watch ``proc`` until it exits; once ``stop`` is set (the caller sent SIGINT), give it
    ``grace`` seconds to exit by itself, then call ``kill`` (SIGKILL to its process group)."""
    while proc.poll() is None:
        if stop.wait(0.2):
            deadline = time.monotonic() + grace
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if proc.poll() is None:
                kill()
            return
