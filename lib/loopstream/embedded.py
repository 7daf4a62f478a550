"""A sidecar started for the length of one `loop run`, when none answers."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from urllib.parse import urlsplit

from .client import healthy


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds: TIME_WAIT is no obstacle
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class EmbeddedSidecar:
    def __init__(self, proc: subprocess.Popen, url: str, log_path: str):
        self.proc, self.url, self.log_path = proc, url, log_path

    @classmethod
    def start(cls, wanted_url: str, timeout: float = 15.0) -> "EmbeddedSidecar | None":
        """`loop serve` on the wanted port if it is a free loopback one, else on any free port."""
        parts = urlsplit(wanted_url)
        host = "127.0.0.1"
        port = parts.port or 8765
        if parts.hostname not in ("127.0.0.1", "localhost") or not _port_free(host, port):
            port = _free_port(host)
        log = tempfile.NamedTemporaryFile(prefix="loop-sidecar-", suffix=".log", delete=False)
        proc = subprocess.Popen([sys.executable, "-m", "loopstream", "serve", "--host", host, "--port", str(port)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True,   # Ctrl-C reaches the runner, not the sidecar
                                env={k: v for k, v in os.environ.items() if k not in ("LOOP_HOST", "LOOP_PORT")})
        log.close()
        url = f"http://{host}:{port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return None
            if healthy(url, timeout=0.3):
                return cls(proc, url, log.name)
            time.sleep(0.05)
        proc.kill()
        proc.wait()
        return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        try:
            os.unlink(self.log_path)
        except OSError:
            pass
