"""The sidecar `loop run` starts when none answers: detached, and it outlives the run.

It runs in its own session (setsid) with its output in a log file, so the
run's terminal, Ctrl-C or SIGHUP never reach it, and it stays up after the
run so the dashboard URL that was printed keeps showing the finished run. It
exits by itself once idle (no stream, no request) for ``idle_exit`` seconds
(`loop serve --idle-exit`, 600 by default). Where it is goes to a small state
file (``sidecar.json`` beside the story logs' directory): the next
`loop run` that finds nothing at its LOOP_SERVER reuses it.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from loopstream.client.defaults import DEFAULT_PORT
from loopstream.client.http import healthy
from loopstream.client.ports import bind_error, free_port

DEFAULT_IDLE_EXIT = 600.0
EXCEPTION_LINE = re.compile(r"([\w.]*(Error|Exception)|Error|loop): ")   # a traceback's last line, Click's Error:
ERROR_LINE = re.compile(r"(Error|Exception|error|Errno|refus|[Ii]nvalid)")


class SidecarStartError(Exception):
    """No sidecar could be started: ``cause`` is one line for the user, ``log`` where the rest is."""

    def __init__(self, cause: str, log: str):
        super().__init__(f"{cause} (log: {log})")
        self.cause, self.log = cause, log


def first_error(log_path: Path, offset: int = 0) -> str | None:
    """The first line that names an error in what the sidecar wrote to its log after ``offset``:
    a traceback's last line (``ModuleNotFoundError: ...``) or loop's own ``Error: ...``."""
    try:
        with open(log_path, "rb") as f:
            f.seek(offset)
            text = f.read(256 * 1024).decode("utf-8", "replace")
    except OSError:
        return None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for pattern in (EXCEPTION_LINE.match, ERROR_LINE.search):
        for line in lines:
            if pattern(line):
                return line[:300]
    return lines[-1][:300] if lines else None


def state_dir() -> Path:
    """$XDG_STATE_HOME/loop (~/.local/state/loop): the sidecar's record and log."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "loop"


def record_path() -> Path:
    return state_dir() / "sidecar.json"


@dataclass
class EmbeddedSidecar:
    url: str
    pid: int
    log_path: str
    reused: bool = False

    @classmethod
    def find_or_start(cls, wanted_url: str, idle_exit: float | None = None,
                      timeout: float = 15.0) -> EmbeddedSidecar:
        """The sidecar a previous `loop run` left running for ``wanted_url``, else a new one.
        Raises SidecarStartError (the cause and the log) when none could be started."""
        return cls.recorded(wanted_url) or cls.start(wanted_url, idle_exit, timeout)

    @classmethod
    def recorded(cls, wanted_url: str) -> EmbeddedSidecar | None:
        try:
            rec = json.loads(record_path().read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(rec, dict) or rec.get("wanted") != wanted_url or not isinstance(rec.get("url"), str):
            return None
        if not healthy(rec["url"], timeout=0.5):
            return None
        return cls(rec["url"], int(rec.get("pid") or 0), str(rec.get("log") or ""), reused=True)

    @classmethod
    def start(cls, wanted_url: str, idle_exit: float | None = None,
              timeout: float = 15.0) -> EmbeddedSidecar:
        """`loop serve` on the wanted port if it is a free loopback one, else on any free port, detached."""
        parts = urlsplit(wanted_url)
        host = "127.0.0.1"
        port = parts.port or DEFAULT_PORT
        if parts.hostname not in ("127.0.0.1", "localhost") or bind_error(host, port) is not None:
            port = free_port(host)
        if idle_exit is None:
            idle_exit = float(os.environ.get("LOOP_SIDECAR_IDLE_EXIT") or DEFAULT_IDLE_EXIT)
        log_path = state_dir() / f"sidecar-{port}.log"
        try:
            state_dir().mkdir(parents=True, exist_ok=True)
            log = open(log_path, "ab")
        except OSError as e:
            raise SidecarStartError(f"cannot write its log: {e.strerror or e}", str(log_path)) from e
        with log:
            offset = log.tell()
            proc = subprocess.Popen(
                [sys.executable, "-m", "loopstream", "serve", "--host", host, "--port", str(port),
                 "--idle-exit", f"{idle_exit:g}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, close_fds=True,
                start_new_session=True,   # its own session: the run's terminal and signals never reach it
                env={k: v for k, v in os.environ.items() if k not in ("LOOP_HOST", "LOOP_PORT")})
        url = f"http://{host}:{port}"
        failure = cls._wait_up(proc, url, timeout)
        if failure:
            raise SidecarStartError(first_error(log_path, offset) or failure, str(log_path))
        sidecar = cls(url, proc.pid, str(log_path))
        sidecar._record(wanted_url)
        return sidecar

    @staticmethod
    def _wait_up(proc: subprocess.Popen, url: str, timeout: float) -> str | None:
        """None once it answers; else why not (and it is killed if it still runs)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return f"it exited with code {proc.returncode}"
            if healthy(url, timeout=0.3):
                return None
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)   # the whole group: gunicorn's worker with its master
        proc.wait()
        return f"it did not answer at {url} within {timeout:g} s"

    def _record(self, wanted_url: str) -> None:
        """Write where it is (atomically) for the next run and for whoever wants to stop it."""
        path = record_path()
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps({"wanted": wanted_url, "url": self.url, "pid": self.pid, "log": self.log_path,
                                       "started": time.time()}))
            os.replace(tmp, path)
        except OSError:
            pass
