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


# Ports are handed out in turn from a block of their own for each pytest-xdist worker, below the kernel's
# ephemeral range (32768+), where a client's outgoing connection could take a port between its pick and
# the bind: two workers never pick the same port, nor one worker the same port twice in a row.
PORT_BLOCK = 2500
_worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
_block = 10_000 + (int(_worker[2:]) if _worker[2:].isdigit() else 0) % 8 * PORT_BLOCK
_next_port = _block + os.getpid() % PORT_BLOCK


def free_port() -> int:
    """A port nothing on 127.0.0.1 listens on, from this worker's block, never the last one given."""
    global _next_port
    for _ in range(PORT_BLOCK):
        port, _next_port = _next_port, _block + (_next_port - _block + 1) % PORT_BLOCK
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError(f"no free port in {_block}-{_block + PORT_BLOCK - 1}")


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


@pytest.fixture(scope="session", autouse=True)
def own_state_dirs(tmp_path_factory):
    """Every `loop` the tests start keeps its logs, spool, detached-sidecar record, history and config
    under this session's (this pytest-xdist worker's) temp dir: never the user's ~/.local, and never a
    spool or record another worker's tests use. A test that needs its own sets XDG_* itself."""
    base = tmp_path_factory.mktemp("xdg")
    with pytest.MonkeyPatch.context() as mp:
        for name in ("XDG_STATE_HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME"):
            mp.setenv(name, str(base / name.split("_")[1].lower()))
        yield base


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
# A test whose outcome depends on the broker (what is stored, streamed, resumed, rate-limited, reaped) runs on
# both; one that the request never gets past the HTTP layer for, or that only drives the sidecar as a client
# does (the dashboard, the runner), runs once, on the memory backend: the contract behind it is tested on both.
on_both_backends = pytest.mark.parametrize("backend", BACKENDS, indirect=True)


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

    def discard(self) -> None:
        """The end of a test: the server goes at once (SIGKILL to its process group). A graceful stop
        costs a second (gunicorn's worker looks at its quit flag once a second); tests of stopping call stop()."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:   # the whole group is gone already
            pass
        self.proc.wait()
        self._logf.close()
        self.proc = None

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
        s.discard()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory) -> Server:
    """One sidecar (memory backend, rate limit off) for the tests of a module that only read from it or are
    refused by it: a test using it names runs of its own and compares what is stored before and after."""
    s = Server(tmp_path_factory.mktemp("shared-sidecar"), args=["--rate", "0", "--heartbeat", "1"])
    try:
        yield s.start()
    finally:
        s.discard()


@pytest.fixture
def server(make_server) -> Server:
    """A sidecar with the rate limit off and a short heartbeat."""
    return make_server("--rate", "0", "--heartbeat", "1")


@pytest.fixture
def spool(tmp_path):
    """A spool directory of the test's own (LOOP_SPOOL_DIR for the shell hooks); the shippers it caused
    are killed afterwards."""
    d = tmp_path / "spool"
    yield d
    for pidfile in d.glob("*.pid"):
        try:
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
        except (ValueError, ProcessLookupError):
            pass


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
