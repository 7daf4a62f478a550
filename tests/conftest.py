"""Real-server fixtures: `loop serve` (gunicorn + gevent) as a subprocess on a free port."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02, message: str = "condition"):
    """Poll until predicate() is truthy; return its value. No fixed sleeps."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


class RedisServer:
    """A real redis-server (Debian's package) on a free port, persisting every write (appendfsync
    always), so it can be killed and started again with its data, like a production one."""

    def __init__(self, tmp: Path):
        self.port = free_port()
        self.dir = tmp
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        exe = shutil.which("redis-server")
        if exe is None:
            raise AssertionError("redis-server is not installed: run bin/test, which installs it")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--loglevel", "warning"],
            stdout=open(self.dir / "redis.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self.ping, 10, message="redis-server to answer PING")
        return self

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def command(self, *words: str | bytes) -> bytes:
        raw = [w if isinstance(w, bytes) else w.encode() for w in words]
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(b"*%d\r\n" % len(raw) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in raw))
            return s.recv(65536)

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    r = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield r
    r.stop()


@pytest.fixture
def backend(request):
    """The broker a test's sidecars use: "memory" unless the test is parametrised over BACKENDS.
    With "redis" it is the URL of a real redis-server, emptied for the test."""
    name = getattr(request, "param", "memory")
    if name == "memory":
        return None
    r = request.getfixturevalue("redis_server")
    if r.proc.poll() is not None:
        r.start()
    r.command("FLUSHALL")
    return r.url


BACKENDS = ["memory", "redis"]


class Server:
    """A `loop serve` subprocess."""

    def __init__(self, tmp: Path, port: int | None = None, db: Path | None = None, args=(), env=None,
                 backend: str | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db = db if db is not None else tmp / "history.json"
        self.args = list(args) + (["--backend", backend] if backend else [])
        self.backend = backend
        self.log = tmp / f"server-{self.port}.log"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 15.0) -> Server:
        cmd = [sys.executable, "-m", "loopstream", "serve", "--port", str(self.port), *self.args]
        if not self.backend:
            cmd += ["--db", str(self.db)]
        self._logf = open(self.log, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._logf, stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True)

        def up():
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                return requests.get(self.url + "/healthz", timeout=1).ok
            except (requests.ConnectionError, requests.Timeout):   # a busy machine: ask again
                return False

        wait_for(up, timeout, message="the sidecar to answer /healthz")
        return self

    def stop(self, sig=signal.SIGTERM, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._logf.close()
        code, self.proc = self.proc.returncode, None
        return code

    def kill9(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._logf.close()
        self.proc = None

    def post(self, events, **kw):
        headers = {"Content-Type": "application/json", **kw.pop("headers", {})}
        return requests.post(self.url + "/api/events", data=json.dumps(events), timeout=5, headers=headers, **kw)

    def get(self, path, **kw):
        return requests.get(self.url + path, timeout=5, **kw)


@pytest.fixture
def make_server(tmp_path, backend):
    servers: list[Server] = []

    def make(*args, **kw) -> Server:
        kw.setdefault("backend", backend)
        s = Server(tmp_path, args=args, **kw)
        servers.append(s)          # before start(): a server that starts too slowly is still stopped
        return s.start()

    yield make
    for s in servers:
        s.stop()


@pytest.fixture
def server(make_server) -> Server:
    """A sidecar with the rate limit off and a short heartbeat."""
    return make_server("--rate", "0", "--heartbeat", "1")


def fixture_files():
    return sorted(FIXTURES.glob("*.json"))


def load_fixture(path: Path) -> dict:
    return json.loads(path.read_text())


class Subscriber:
    """An SSE subscriber: sseclient-py over a streaming requests response."""

    def __init__(self, url: str, params=None, headers=None, read_timeout: float = 10.0):
        import sseclient

        self.response = requests.get(url + "/stream/progress", params=params, headers=headers or {},
                                     stream=True, timeout=(3, read_timeout))
        self.response.raise_for_status()
        self._events = sseclient.SSEClient(self.response).events()

    def next(self):
        e = next(self._events)
        return e.id, e.event, json.loads(e.data)

    def take(self, n: int, skip=("heartbeat",)):
        """The next n events, leaving out heartbeats."""
        out = []
        while len(out) < n:
            eid, name, data = self.next()
            if name not in skip:
                out.append((eid, name, data))
        return out

    def until(self, predicate, skip=("heartbeat",)):
        out = []
        while True:
            item = self.next()
            if item[1] in skip:
                continue
            out.append(item)
            if predicate(item):
                return out

    def close(self):
        self.response.close()


@pytest.fixture
def subscribe():
    subs: list[Subscriber] = []

    def make(server, **kw) -> Subscriber:
        s = Subscriber(server.url, **kw)
        subs.append(s)
        return s

    yield make
    for s in subs:
        s.close()
