"""Arize Phoenix, the trace backend the OTLP export is tested against: `phoenix serve` as a subprocess on
free loopback ports, its working directory (SQLite) in a temporary folder, its telemetry off; spans read
back through its REST API. Started once per test session (it takes 10-30 s to come up); a test may stop
and start it again on the same ports and data."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from conftest import free_port, wait_for


class Phoenix:
    def __init__(self, workdir: Path):
        self.dir = workdir
        self.port, self.grpc_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180.0) -> Phoenix:
        exe = shutil.which("phoenix", path=os.path.dirname(sys.executable)) or shutil.which("phoenix")
        if exe is None:
            raise AssertionError("phoenix is not installed: pip install -e '.[test]' (bin/test does) brings arize-phoenix")
        env = {**os.environ, "PHOENIX_WORKING_DIR": str(self.dir), "PHOENIX_PORT": str(self.port),
               "PHOENIX_HOST": "127.0.0.1", "PHOENIX_GRPC_PORT": str(self.grpc_port),
               "PHOENIX_TELEMETRY_ENABLED": "false", "DO_NOT_TRACK": "1"}
        for key in [k for k in env if k.startswith("OTEL_")]:
            del env[key]
        self.proc = subprocess.Popen([exe, "serve"], cwd=self.dir, env=env, stdout=open(self.dir / "phoenix.log", "ab"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self.up, timeout, interval=0.25, message="phoenix to answer /healthz")
        return self

    def up(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"phoenix exited with {self.proc.returncode}:\n"
                                 f"{(self.dir / 'phoenix.log').read_text()[-3000:]}")
        try:
            return requests.get(self.url + "/healthz", timeout=2).ok
        except requests.RequestException:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def spans(self, project: str) -> list[dict]:
        """Every span of a project (none while it has none), through the REST API's pages."""
        out: list[dict] = []
        cursor = None
        while True:
            params = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
            r = requests.get(f"{self.url}/v1/projects/{project}/spans", params=params, timeout=10)
            if r.status_code == 404:
                return []
            r.raise_for_status()
            body = r.json()
            out += body["data"]
            cursor = body.get("next_cursor")
            if not cursor:
                return out


@pytest.fixture(scope="session")
def phoenix(tmp_path_factory):
    p = Phoenix(tmp_path_factory.mktemp("phoenix")).start()
    yield p
    p.stop()
